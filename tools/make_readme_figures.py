"""The figures of the README's "See inside the model" section, drawn from a trained run folder.

    python tools/make_readme_figures.py --run RUN --out docs/images IMAGE [IMAGE...]

Writes into ``--out``:

- ``explain.png`` — what ``imgcls explain`` draws for the first IMAGE (Grad-CAM, occlusion, the strongest
  channels of the Grad-CAM layer, the top five);
- ``reliability.png`` — the run's reliability diagram before and after temperature scaling (``eval.json``).

Both are drawn by the library's own functions (`imgcls.report.anatomy.explain_figure`,
`imgcls.report.calibration.reliability_figure`), at a resolution that keeps each file well under 200 KB. The run
and images the committed figures came from are named in the README next to them.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

DPI = 80  # the README shows them at page width; 80 dpi keeps each PNG small and its text legible
LIMIT = 200 * 1024


def _save(fig, path: Path) -> int:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    data = buf.getvalue()
    path.write_bytes(data)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    parser.add_argument("--window", type=int, help="occlusion window in pixels (default: explain's)")
    parser.add_argument("images", nargs="+", help="the image to explain (the first one is drawn)")
    args = parser.parse_args(argv)

    from imgcls.inference import Predictor
    from imgcls.inference.explain import ExplainOptions, explain, explanation_figure
    from imgcls.report.calibration import reliability_figure
    from imgcls.run_folder import RunFolder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_run(args.run, precision="fp32")
    (e,) = explain(predictor, args.images[:1], ExplainOptions(window=args.window, channels=8))
    if not e.ok:
        print(f"{e.path}: {e.error}", file=sys.stderr)
        return 1
    top = e.predictions[0]
    fig = explanation_figure(e, f"{Path(e.path).name}: {top.label} ({top.probability:.3f})")
    sizes = {"explain.png": _save(fig, out / "explain.png")}
    calibration = (RunFolder(args.run).read_eval() or {}).get("calibration")
    if calibration:
        sizes["reliability.png"] = _save(reliability_figure(calibration), out / "reliability.png")
    for name, size in sizes.items():
        print(f"{out / name}: {size / 1024:.0f} KB")
    return 0 if all(size < LIMIT for size in sizes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
