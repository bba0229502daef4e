"""`imgcls weights list|path|verify`: the published weights files each model can use, where they are looked for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imgcls.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `weights` with its three verbs to the `imgcls` parser."""
    p = sub.add_parser(
        "weights",
        help="published weights files: list them, where they go, check them",
        description="The published (torchvision, timm) weights files imgcls can load, their SHA-256 and where they "
        "are looked for. Offline, copy a file to the path `imgcls weights path NAME` prints.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    q = verbs.add_parser("list", help="every listed file, its SHA-256 and the copy on disk")
    q.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="fnmatch pattern or a substring")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=run_list)

    q = verbs.add_parser("path", help="where a model's file is read from, or where to put it")
    q.add_argument("name", metavar="NAME", help="a model with published weights (see `imgcls weights list`)")
    q.add_argument("--source", help="torchvision, torchvision:v1 or timm (default: the model's first listed)")
    q.add_argument("--all", action="store_true", help="every place looked in, in order, and the download address")
    q.set_defaults(func=run_path)

    q = verbs.add_parser("verify", help="check files on disk against the published SHA-256; exit 1 on any failure")
    q.add_argument("items", nargs="*", metavar="NAME|FILE", help="models or files (default: every copy on disk)")
    q.set_defaults(func=run_verify)


def _pattern(text: str) -> str:
    return text if any(c in text for c in "*?[") else f"*{text}*"


def run_list(args: argparse.Namespace) -> int:
    from imgcls.models.published import WEIGHTS_DIR_ENV, published_files, search_paths, weights_dir

    rows = published_files(_pattern(args.pattern))
    if not rows:
        raise UserError(f"no model with published weights matches {args.pattern!r} (run `imgcls weights list`)")
    looked = {(m, s): search_paths(m, s) for m, s, _ in rows}
    found = {key: next((p for p in paths if p.is_file()), None) for key, paths in looked.items()}
    if args.json:
        out = [
            {
                "model": m,
                "source": s,
                "file": f.file_name,
                "sha256": f.sha256,
                "crop_pct": round(f.crop_pct, 4),
                "found": str(found[m, s]) if found[m, s] else None,
                "looked_for": [str(p) for p in looked[m, s]],
            }
            for m, s, f in rows
        ]
        print(json.dumps(out, indent=2))
        return 0
    table = [("model", "source", "file", "SHA-256", "on disk")]
    table += [(m, s, f.file_name, f.sha256 or "(recorded on download)", str(found[m, s] or "-")) for m, s, f in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    print(f"looked for in {weights_dir()} (${WEIGHTS_DIR_ENV}), then torchvision's and Hugging Face's own caches")
    return 0


def _default_source(name: str) -> str:
    from imgcls.models.published import published_file, published_files

    sources = [s for m, s, _ in published_files(name) if m == name]
    if not sources:
        published_file(name, "torchvision")  # raises the message that says what to do instead
    return sources[0]


def run_path(args: argparse.Namespace) -> int:
    from imgcls.models.published import download_url, search_paths

    source = args.source or _default_source(args.name)
    paths = search_paths(args.name, source)
    found = next((p for p in paths if p.is_file()), None)
    if not args.all:
        print(found or paths[0])
        return 0
    for p in paths:
        print(f"{'found' if p == found else '-':<6} {p}")
    print(f"{'url':<6} {download_url(args.name, source)}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from imgcls.models.published import check_copies, identify, published_file, search_paths

    failed = 0
    checks = []
    for item in args.items:
        if not Path(item).is_file():
            rows = check_copies(item)
            if not rows:
                published_file(item, "torchvision")  # unknown model, or none published: its UserError
            checks += rows
            continue
        try:
            match = identify(item)
        except UserError as exc:
            print(f"mismatch  {exc}")
            failed += 1
            continue
        if match is None:
            print(f"unknown   {item}: its SHA-256 matches no published file imgcls lists")
            failed += 1
        else:
            print(f"ok        {item} is the {match[1]} file of {match[0]} ({match[2].file_name})")
    if not args.items:
        checks = check_copies(found_only=True)
        if not checks:
            print("no published weights file is on disk (`imgcls weights list` shows where they are looked for)")
    for c in checks:
        if c.status == "missing":
            print(f"missing   {c.model} {c.source}: put {c.file.file_name} at {search_paths(c.model, c.source)[0]}")
        elif c.status == "mismatch":
            print(f"mismatch  {c.detail}")
        else:
            note = (
                " (no published SHA-256: compared with the one recorded on download)" if c.status == "unpinned" else ""
            )
            print(f"ok        {c.model} {c.source} {c.path} sha256 {c.detail}{note}")
        failed += c.status in ("missing", "mismatch")
    return 1 if failed else 0
