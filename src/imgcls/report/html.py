"""The report page: one self-contained HTML file beside its PNGs (no scripts, no external assets)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.92rem; }
th, td { text-align: left; padding: 0.25rem 0.9rem 0.25rem 0; border-bottom: 1px solid #eee; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.headline { display: flex; gap: 2.5rem; margin: 1rem 0; flex-wrap: wrap; }
.headline div { font-size: 0.85rem; color: #666; }
.headline b { display: block; font-size: 1.6rem; color: #0072B2; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
.half { flex: 1 1 360px; max-width: 580px; }
.full { flex: 1 1 100%; }
code { background: #f5f5f5; padding: 0 0.25rem; }
.note { background: #fff6e0; border-left: 4px solid #E69F00; padding: 0.5rem 0.8rem; max-width: 60rem; }
"""


@dataclass(frozen=True)
class FigureRef:
    """One PNG of the report: file name (relative to the page), title and caption."""

    file: str
    title: str
    caption: str = ""
    wide: bool = False


@dataclass(frozen=True)
class Section:
    """A titled part of the page after the figures: paragraphs, a table (first row: the header) and figures."""

    title: str
    paragraphs: tuple[str, ...] = ()
    table: tuple[tuple[str, ...], ...] = ()
    figures: tuple[FigureRef, ...] = ()


def _figure_grid(figures: Sequence[FigureRef]) -> list[str]:
    parts = ['<div class="grid">']
    for f in figures:
        cls = "full" if f.wide else "half"
        caption = f"<figcaption><b>{escape(f.title)}.</b> {escape(f.caption)}</figcaption>"
        parts.append(
            f'<figure class="{cls}"><a href="{escape(f.file)}"><img src="{escape(f.file)}" '
            f'alt="{escape(f.title)}" loading="lazy"></a>{caption}</figure>'
        )
    parts.append("</div>")
    return parts


def _section(section: Section) -> list[str]:
    parts = [f"<h2>{escape(section.title)}</h2>"]
    parts += [f"<p>{escape(p)}</p>" for p in section.paragraphs]
    if section.table:
        head, *rows = section.table
        parts.append("<table>")
        parts.append("<tr>" + "".join(f"<th>{escape(c)}</th>" for c in head) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    if section.figures:
        parts += _figure_grid(section.figures)
    return parts


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "\n".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>\n{body}\n</table>"


def _per_class_table(per_class: dict, classes: Sequence[str]) -> str:
    columns = [c for c in ("ap", "precision", "recall", "f1") if c in per_class]
    head = "".join(f'<th class="num">{escape(c.upper() if c == "ap" else c)}</th>' for c in columns)
    lines = [f'<table>\n<tr><th>class</th>{head}<th class="num">support</th></tr>']
    for i, name in enumerate(classes):
        cells = []
        for c in columns:
            v = per_class[c][i] if i < len(per_class[c]) else None
            cells.append(f'<td class="num">{"–" if v is None else f"{100 * v:.1f}"}</td>')
        support = per_class.get("support", [])
        count = support[i] if i < len(support) else ""
        lines.append(f'<tr><td>{escape(str(name))}</td>{"".join(cells)}<td class="num">{count}</td></tr>')
    lines.append("</table>")
    return "\n".join(lines)


def render_report(
    *,
    title: str,
    subtitle: str,
    headline: Sequence[tuple[str, str]],
    summary: Sequence[tuple[str, str]],
    figures: Sequence[FigureRef],
    notes: Sequence[str] = (),
    per_class: dict | None = None,
    classes: Sequence[str] = (),
    sections: Sequence[Section] = (),
) -> str:
    """The report page as an HTML string.

    Args:
        title: page heading (the run's model and data).
        subtitle: one line under the heading (the run folder).
        headline: the few numbers shown large (top-1, top-5...), as ``(label, value)``.
        summary: the run's facts, as ``(label, value)`` rows.
        notes: sentences shown under the facts, in a box (e.g. that a figure is optimistic).
        figures: the PNGs to show, in order.
        per_class: ``eval.json``'s ``per_class`` (shown as a folded table) or ``None``.
        classes: class names for that table.
        sections: further parts after the figures (calibration, model anatomy, error gallery...).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(subtitle)}</p>',
    ]
    if headline:
        cells = "".join(f"<div><b>{escape(v)}</b>{escape(k)}</div>" for k, v in headline)
        parts.append(f'<div class="headline">{cells}</div>')
    parts += ["<h2>Run</h2>", _table(summary)]
    parts += [f'<p class="note">{escape(n)}</p>' for n in notes]
    if figures:
        parts += ["<h2>Figures</h2>", *_figure_grid(figures)]
    for section in sections:
        parts += _section(section)
    if per_class and classes:
        parts += [
            "<h2>Per-class metrics</h2>",
            f"<details><summary>{len(classes)} classes (percent)</summary>",
            _per_class_table(per_class, classes),
            "</details>",
        ]
    parts += [
        '<p class="sub" style="margin-top:2rem">Written by imgcls from the files of the run folder '
        "(<code>metrics.csv</code>, <code>eval.json</code>, <code>samples.npz</code>, <code>model.json</code>, "
        "<code>config.json</code>).</p>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


__all__ = ["FigureRef", "Section", "render_report"]
