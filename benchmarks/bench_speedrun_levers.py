"""Where the speedrun's time goes, run by run: one seed of `imgcls train --recipe speedrun` per lever switched off,
against a reference run of the same seed, with each command's wall time split into its phases.

The 5-seed table (``bench_speedrun``) says how fast and how accurate the recipe is; this one says why. It runs,
each in a fresh process exactly as a user types it, all against one decode cache:

1. the curve run: seed 0 validated after every epoch (``train.val_every=1``, no TTA until the end), which also
   builds the decode cache (so its wall time is cold and includes 7 extra validations: it is not compared);
   ``IMGCLS_BENCH_LEVERS_CURVE=0`` replaces it by an untimed one-epoch run that only builds the cache;
2. the reference: seed 0 as shipped, warm cache;
3. one run per lever in ``IMGCLS_BENCH_LEVERS`` (default ``tta,allocator,bf16``; names from
   ``bench_speedrun.ABLATIONS``), seed 0, warm cache: Δ time and Δ top-1 against the reference of the same run.

Each command's wall time is split by what the run folder records: the epochs' training seconds
(``metrics.csv``), the rest of the trainer's own clock (``config.json`` ``run.selection.seconds``: set-up with
the decode cache and the whitening layer, validation, final TTA evaluation, report) and what lies outside the
trainer (interpreter start-up, imports, argument and config handling). The FLOP bound is the one
``bench_speedrun`` states (the recipe's arithmetic over the measured peak of the run's precision).

Environment: as ``bench_speedrun`` (``IMGCLS_CIFAR10_FOLDER`` or the archive); ``IMGCLS_BENCH_LEVERS``.
Command: ``.venv/bin/python -m benchmarks.run speedrun_levers``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.bench_speedrun import (
    ABLATIONS,
    _cifar_folder,
    _cpu_name,
    _one_run,
    count_train_images,
    curve_cells,
    images_trained,
    peak_flops,
    recipe_flops,
)

COMMAND = ".venv/bin/python -m benchmarks.run speedrun_levers"
RECIPE = "speedrun"
DEFAULT_LEVERS = "tta,allocator,bf16"


def run() -> str:
    import torch

    from imgcls.models import create_model, profile

    levers = [n.strip() for n in os.environ.get("IMGCLS_BENCH_LEVERS", DEFAULT_LEVERS).split(",") if n.strip()]
    unknown = [n for n in levers if n not in ABLATIONS]
    if unknown:
        choices = ", ".join(ABLATIONS)
        raise SystemExit(f"bench speedrun_levers: unknown lever {', '.join(unknown)} (choose from {choices})")
    macs = profile(create_model("airbench94", num_classes=10), (3, 32, 32)).macs
    peaks = {p: peak_flops(p) for p in ("bf16", "fp32")}
    with tempfile.TemporaryDirectory(prefix="bench-speedrun-levers-") as tmp_name:
        tmp = Path(tmp_name)
        data = _cifar_folder(tmp)
        cache = tmp / "cache"
        train_images = count_train_images(data)
        curve = None
        if os.environ.get("IMGCLS_BENCH_LEVERS_CURVE", "1") != "0":
            curve = _one_run(data, tmp / "curve", RECIPE, 0, cache, ["--set", "train.val_every=1"])
        else:  # untimed: decode both splits into the cache, so the reference below runs warm
            warm_up = ["--set", "train.epochs=1", "--set", "train.final_tta=none"]
            _one_run(data, tmp / "warm-up", RECIPE, 0, cache, warm_up)
        reference = _one_run(data, tmp / "reference", RECIPE, 0, cache)
        ablated = {}
        for name in levers:
            _, args, env = ABLATIONS[name]
            ablated[name] = _one_run(data, tmp / f"lever-{name}", RECIPE, 0, cache, args, env)

    def bound(r: dict) -> float:
        return recipe_flops(macs, images_trained(train_images, r)) / peaks.get(r["precision"], peaks["fp32"])

    per_epoch = reference["epoch_s"] / reference["epochs"]
    builder = "the curve run" if curve is not None else "an untimed one-epoch warm-up"
    lines = [
        "## Speedrun levers: where the time goes, run by run (issue 13)",
        "",
        f"`imgcls train --recipe {RECIPE} --data CIFAR10_PNG_FOLDER --out RUN --seed 0` in a fresh process per "
        f"run on {_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}); measured peaks: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, "
        f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s (best of a 4096² matmul and 256-channel 3×3 convs). All runs "
        f"share one decode cache, built by the first ({builder}). Wall time is the whole command, split into "
        "the epochs' training seconds (metrics.csv), the trainer's other work (set-up with the decode cache and "
        "the whitening layer, validation, the final TTA evaluation, the report) and what lies outside the "
        "trainer (interpreter start-up, imports, configuration).",
        "",
        "| run | wall s | epochs s | trainer other s | outside s | top-1 % (TTA) | top-1 % (no TTA) | × bound "
        "| Δ time s | Δ top-1 | load before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def row(label: str, r: dict, delta: bool) -> str:
        dt = f"{r['wall'] - reference['wall']:+.0f}" if delta else "—"
        da = f"{r['top1'] - reference['top1']:+.2f}" if delta else "—"
        return (
            f"| {label} | {r['wall']:.0f} | {r['epoch_s']:.0f} | {r['trainer_other_s']:.0f} | {r['outside_s']:.1f} | "
            f"{r['top1']:.2f} | {r['last_val_top1']:.2f} | {r['wall'] / bound(r):.2f} | {dt} | {da} | {r['load']} |"
        )

    if curve is not None:
        lines.append(row("curve: validated every epoch, builds the decode cache (cold)", curve, False))
    lines.append(row("reference: the recipe as shipped (warm)", reference, False))
    for name, r in ablated.items():
        lines.append(row(f"off: {ABLATIONS[name][0]}", r, True))
    lines.append("")
    if curve is not None:
        lines.append(f"- Per-epoch validation top-1 without TTA (curve run): {curve_cells(curve)}")
    lines.append(
        f"- The reference's epochs averaged {per_epoch:.0f} s; its FLOP bound is {bound(reference):.0f} s "
        f"({reference['precision']})."
    )
    settings = f"IMGCLS_BENCH_LEVERS={','.join(levers)}"
    settings += " IMGCLS_BENCH_LEVERS_CURVE=0" if curve is None else ""
    lines += ["", f"Command: `{settings} {COMMAND}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
