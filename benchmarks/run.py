"""`make bench`: run the benchmark modules and assemble BENCHMARKS.md.

Each `benchmarks/bench_<name>.py` defines ``run() -> str`` returning a Markdown section (with the exact
command that reproduces it). Its result is kept in ``benchmarks/results/<name>.md`` so one benchmark can be
re-run alone (``python -m benchmarks.run data``) without losing the others' figures; ``--collect`` only
reassembles BENCHMARKS.md from the kept results.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "BENCHMARKS.md"

HEADER = """# Benchmarks

Measured on 2-core AMD EPYC hosts with 24 GB RAM and no GPU. The host changes between sessions (Zen 4/5 with
AVX-512 BF16; Zen 3 with AVX2 only, where `--precision auto` is fp32), so compare figures only within a section;
a section measured on another host than the rest says so. Every figure is a ratio or rate measured side by side
in one run, with the load average; each section gives the command that produced it.
Regenerate everything with `make bench`, or one section with `.venv/bin/python -m benchmarks.run NAME`.
"""


def available() -> list[str]:
    return sorted(m.name[len("bench_") :] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def main(argv: list[str]) -> int:
    collect_only = "--collect" in argv  # reassemble BENCHMARKS.md from the kept results, running nothing
    names = [] if collect_only else [a for a in argv if not a.startswith("-")] or available()
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"== bench {name}", flush=True)
        section = module.run()
        (RESULTS / f"{name}.md").write_text(section.rstrip() + "\n")
    sections = [(RESULTS / f"{n}.md").read_text() for n in available() if (RESULTS / f"{n}.md").is_file()]
    OUT.write_text(HEADER + "\n" + "\n".join(sections))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
