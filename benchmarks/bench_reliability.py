"""Reliability: the figures of the fault-injection suite (``tests/faults``), long scenarios included.

Runs ``pytest -m faults tests/faults`` in a subprocess with ``IMGCLS_FAULT_FIGURES`` pointing at a JSON file;
each scenario test records its figure there (see ``tests/faults/conftest.py``), and this module turns the file
into the "Reliability" section of BENCHMARKS.md. A scenario that failed or skipped shows as such, never as a
number. About 10-15 minutes on 2 CPU cores.

Command: ``.venv/bin/python -m benchmarks.run reliability``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python -m benchmarks.run reliability"
PYTEST = [sys.executable, "-m", "pytest", "-q", "-m", "faults", "tests/faults", "-p", "no:cacheprovider", "-rfEs"]


def _missing(key: str) -> str:
    return f"not measured (the test recording `{key}` failed or was skipped: see the summary below)"


def _rows(f: dict) -> list[tuple[str, str]]:
    rows = []
    c = f.get("checkpoint_kill")
    rows.append(
        (
            "1. kill -9 during a checkpoint write (32 MiB state, seeded random moments)",
            f"checkpoints loadable after **{c['loadable']}/{c['kills']}** kills ({c['mid_write']} landed mid-write, "
            f"temporaries left: at most 1)"
            if c
            else _missing("checkpoint_kill"),
        )
    )
    r = f.get("resume_kills")
    rows.append(
        (
            "2. kill -9 at 10 random steps, then `--resume` (LeNet-5, digits; 2 trials streaming with 0↔2 workers)",
            f"final weights bit-identical: **{r['identical']}/{r['trials']}** ({r['mid_epoch']} mid-epoch kills)"
            if r
            else _missing("resume_kills"),
        )
    )
    s = f.get("sigterm")
    rows.append(
        (
            "3. SIGTERM during training",
            f"safe checkpoint on disk after **{s['checkpoint_s']:.2f} s**, process exited after "
            f"**{s['exit_s']:.2f} s** (exit status 130)"
            if s
            else _missing("sigterm"),
        )
    )
    parts = []
    for key, what in (("nonfinite_batch_loss", "NaN batch / Inf loss"), ("nonfinite_gradient", "NaN gradient")):
        if f.get(key):
            parts.append(f"{what}: {f[key]['skipped']}/{f[key]['injected']} steps skipped")
    if f.get("nonfinite_persistent"):
        p = f["nonfinite_persistent"]
        parts.append(
            f"persistent NaN: stops after max_bad_steps={p['max_bad_steps']} (exit {p['exit_status']}), last good "
            f"checkpoint (step {p['checkpoint_step']}) intact"
        )
    if f.get("nonfinite_two_ranks"):
        parts.append("2 ranks: same steps skipped, both ranks stop with the same error")
    rows.append(
        (
            "4. NaN/Inf injected into a batch, a loss, a gradient (1 and 2 ranks)",
            "; ".join(parts) if parts else _missing("nonfinite_*"),
        )
    )
    t = f.get("torchrun_restart")
    rows.append(
        (
            "5. torchrun, 2 CPU ranks, one killed, `--max-restarts 1`",
            f"completes, weights identical: **yes**; restart latency **{t['resume_announced_s']:.1f} s** to the "
            f"resume, {t['first_new_checkpoint_s']:.1f} s to its first new checkpoint"
            if t and t.get("first_new_checkpoint_s") is not None
            else _missing("torchrun_restart"),
        )
    )
    rows.append(
        (
            "6. pickle payload in a checkpoint / weights file; SHA-256 differing from model.json",
            "refused on `train --resume`, `train --weights`, `predict --weights` (payload never ran); "
            "`eval`/`predict`/`export`/`serve` refuse tampered weights with one line"
            if all(f.get(k) for k in ("untrusted_checkpoint", "untrusted_weights", "untrusted_sha"))
            else _missing("untrusted_*"),
        )
    )
    b = [f.get("broken_files_always"), f.get("broken_files_never")]
    rows.append(
        (
            "7. image folder with broken files (empty, 10 truncations, bit flips, text/HTML, bombs) + odd formats",
            " · ".join(
                f"{name}: skipped **{x['skipped']}** = injected {x['injected']}"
                for name, x in zip(("cached", "streaming"), b)
                if x
            )
            + "; 16-bit, CMYK, palette+alpha, EXIF 1–8 decoded to the expected pixels"
            if any(b)
            else _missing("broken_files_*"),
        )
    )
    z = f.get("fuzz")
    rows.append(
        (
            "8. fuzzing the reader (mutated JPEG/PNG/WebP/GIF, hypothesis)",
            f"**{z['examples']:,}** files: {z['decoded']:,} decoded, {z['clean_errors']:,} clean `ImageError`s, "
            f"0 crashes, 0 hangs (slowest file {1000 * z['slowest_s']:.0f} ms; limit 10 s)"
            if z
            else _missing("fuzz"),
        )
    )
    h, tr = f.get("soak"), f.get("traversal")
    rows.append(
        (
            "9. HTTP: 10,000 requests at 32 concurrent (90% images, 10% hostile), traversal, floods, slowloris",
            f"5xx: **{sum(v for k, v in h['statuses'].items() if k.startswith('5'))}**, "
            f"traversal successes: **{tr['successes'] if tr else '?'}**/{tr['attempts'] if tr else '?'}, "
            f"p50 **{h['p50_ms']:.0f} ms**, p99 **{h['p99_ms']:.0f} ms**, RSS {h['rss_before_mib']:.0f} → "
            f"{h['rss_half_mib']:.0f} → {h['rss_after_mib']:.0f} MiB (growth **{h['rss_growth_mib']:.1f} MiB**, "
            f"bound {h['bound_mib']} MiB)"
            if h
            else _missing("soak"),
        )
    )
    d = f.get("disk_full")
    rows.append(
        (
            "10. disk full while writing the run folder (4 MiB tmpfs)",
            f"exit 2 with one line (`{d['message'][:110]}…`), previous checkpoint intact"
            if d
            else _missing("disk_full"),
        )
    )
    return rows + _data_rows(f)


def _data_rows(f: dict) -> list[tuple[str, str]]:
    """Issue 19's classes (tests/faults/test_data_faults.py, test_serve_linger.py, test_run_guards.py,
    test_run_outputs.py)."""
    rows = []
    k = f.get("cache_build_kill")
    rows.append(
        (
            "19.1 kill -9 during the decode-cache build (800 PNGs, 2 workers), then the same build again",
            f"decoding workers left alive: **{k['workers_left']}**; the second run completes in "
            f"{k['second_run_seconds']:.0f} s, no partial file left"
            if k
            else _missing("cache_build_kill"),
        )
    )
    t = f.get("thin_image")
    rows.append(
        (
            "19.2 a 1×1,000,000 PNG in predict/serve, training (cached and streamed) and evaluation",
            f"refused from its header everywhere ({t['file_bytes']:,} B file): peak traced memory "
            f"**{t['peak_mib']} MiB**, the four paths together {t['seconds']:.1f} s"
            if t
            else _missing("thin_image"),
        )
    )
    served = f.get("serve_413_under_load_declared")
    rows.append(
        (
            "19.2 serve: 200 concurrent 1 MiB uploads over a 256 KiB cap (client still sending)",
            f"answers: **{served['answers'].get('413', 0)} × 413** of {served['connections']} (no TCP reset)"
            if served
            else _missing("serve_413_under_load_declared"),
        )
    )
    g = f.get("run_guards_settings")
    rows.append(
        (
            "19.3 `--lr nan`, `--lr inf`, a negative `clip_grad_norm`, `--image-size 0`, a NaN weight decay",
            f"refused with one line before any file: **{g['refused']}/{g['cases']}**, run folders left: "
            f"{g['folders_left']}"
            if g
            else _missing("run_guards_settings"),
        )
    )
    lock = f.get("run_guards_folders")
    rows.append(
        (
            "19.5 a second `train --overwrite` on a folder another train is writing; `--out` on a folder of the user's",
            f"`{lock['second_message']}`; the first run's record whole; the user's files kept "
            f"({lock['foreign_files_kept']}/2): `{lock['foreign_message'][:90]}…`"
            if lock
            else _missing("run_guards_folders"),
        )
    )
    leak = f.get("data_leakage")
    rows.append(
        (
            "19.4 a link loop and a link to the data root in class folders; every CSV row listed twice",
            f"{leak['files']} files stay {leak['images_after_loop']} images, train and validation disjoint, "
            f"**{leak['duplicates_dropped']}** duplicates dropped and listed"
            if leak
            else _missing("data_leakage"),
        )
    )
    msgs = [f.get(key, {}).get("message") for key in ("cache_folder_refused", "no_validation_5", "no_validation_1")]
    rows.append(
        (
            "19.6 read-only or full cache folder; no validation split (`val_fraction=0`, one image per class)",
            "; ".join(f"`{m[:90]}…`" if len(m) > 90 else f"`{m}`" for m in msgs if m)
            if all(msgs)
            else _missing("cache_folder_refused"),
        )
    )
    full = f.get("report_disk_full")
    rows.append(
        (
            "19.6 the report written on a full disk (3 MiB tmpfs)",
            f"`{full['message'][:100]}…`, earlier files intact, no temporary left"
            if full
            else _missing("report_disk_full"),
        )
    )
    s = f.get("streaming_breaks")
    rows.append(
        (
            "19.7 a streamed file breaks after start-up (3 epochs); then every file breaks",
            f"warned **{s['warnings_in_3_epochs']}** time, listed in data_issues.csv; 16 failures in a row: a "
            f"{s['error_lines']}-line error"
            if s
            else _missing("streaming_breaks"),
        )
    )
    small = f.get("small_things")
    rows.append(
        (
            "19.8 the small things: weights file mode, a class folder `...`, AVIF/JPEG 2000 in folders, "
            "`export --tolerance nan`, a newline in a file name, `HEAD /`",
            f"**{small['passed']}/{small['of']}** as a user expects ({'; '.join(small['checks'])})"
            if small
            else _missing("small_things"),
        )
    )
    return sorted(rows, key=lambda row: row[0].split()[0])  # by class number; a class's rows keep their order


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="imgcls-faults-") as tmp:
        figures_file = Path(tmp) / "figures.json"
        env = {**os.environ, "IMGCLS_FAULT_FIGURES": str(figures_file)}
        t0 = time.perf_counter()
        done = subprocess.run(PYTEST, cwd=REPO, env=env, capture_output=True, text=True)
        minutes = (time.perf_counter() - t0) / 60
        figures = json.loads(figures_file.read_text()) if figures_file.is_file() else {}
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else f"pytest exited with {done.returncode}"
    skips = [ln for ln in lines if ln.startswith("SKIPPED")]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]  # -rfE lists them
    table = ["| scenario | figure |", "|---|---|"] + [f"| {a} | {b} |" for a, b in _rows(figures)]
    out = [
        "## Reliability",
        "",
        "Fault injection and hostile input (issues 7 and 19): every figure below is produced by a test in "
        "`tests/faults` that fails when the property breaks (`make faults` runs them all; the quick ones run in "
        "`make test`).",
        "",
        *table,
        "",
        f"Suite: `{re.sub(r'=+', '', summary).strip()}` in {minutes:.1f} min.",
    ]
    out += [f"- {ln}" for ln in failed + skips]
    out += ["", f"Command: `{COMMAND}` (runs `pytest -m faults tests/faults` with `IMGCLS_FAULT_FIGURES` set)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(run())
