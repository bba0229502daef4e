"""Your own photos: the ants/bees folder (398 real photos) trained from scratch with `--recipe small`, on this CPU.

The protocol keeps the 153 validation photos a hidden test set: the run sees only ``train/`` (245 photos, one of
them a GIF placeholder, as real folders have), which the recipe splits 80/20 by its seeded ``data.val_fraction``
into the 196 photos it trains on and 49 it selects the epoch on (early stopping, the shipped weights). ``val/`` is
scored once, at the end, by ``imgcls eval --run RUN --data FOLDER`` (the full folder: its ``val/`` split).

Each seed runs the whole command in a fresh process, as a user types it; the wall time counts everything
(start-up, decoding the photos into the cache, training, validation, the final evaluation and report). CPU
seconds (user + system of the child, from ``getrusage``) are given beside it: on a shared machine the wall time
grows with the load, the CPU time much less.

Optionally, with ``IMGCLS_BENCH_PHOTOS_WEIGHTS=FILE`` (a published torchvision ResNet-18 state dict, e.g.
``resnet18-f37072fd.pth``), the same folder is fine-tuned with ``--recipe finetune --model resnet18 --weights
FILE`` under the same protocol.

Data: ``$IMGCLS_HYMENOPTERA_FOLDER`` (the folder holding ``train/`` and ``val/``), else the archive
``$IMGCLS_HYMENOPTERA`` or ``../shared/datasets/hymenoptera.tar.gz`` unpacked to a temporary folder.
Seeds: ``IMGCLS_BENCH_PHOTOS_SEEDS`` (default 1). Command: ``.venv/bin/python -m benchmarks.run photos``.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = Path(os.environ.get("IMGCLS_HYMENOPTERA", REPO.parent / "shared" / "datasets" / "hymenoptera.tar.gz"))
COMMAND = "IMGCLS_BENCH_PHOTOS_SEEDS=3 .venv/bin/python -m benchmarks.run photos"
TRAIN = "imgcls train --recipe small --data PHOTOS/train --out RUN --seed SEED"
EVAL = "imgcls eval --run RUN --data PHOTOS --json"


def _photo_folder(tmp: Path) -> Path:
    given = os.environ.get("IMGCLS_HYMENOPTERA_FOLDER")
    if given:
        return Path(given)
    if not ARCHIVE.is_file():
        raise SystemExit(f"bench photos: no ants/bees archive at {ARCHIVE} (set IMGCLS_HYMENOPTERA)")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp / "photos", filter="data")
    return next(p.parent for p in (tmp / "photos").rglob("train") if (p.parent / "val").is_dir())


def _load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def _timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run ``cmd``; its wall seconds and the CPU seconds (user + system) it and its children used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _one_run(photos: Path, out: Path, seed: int, cache: Path, recipe: list[str]) -> dict:
    env = dict(os.environ, IMGCLS_DATA=str(cache))
    cmd = [sys.executable, "-m", "imgcls", "train", *recipe, "--data", str(photos / "train")]
    cmd += ["--out", str(out), "--seed", str(seed)]
    load_before = _load_average()
    wall, cpu = _timed(cmd, env)
    load_after = _load_average()
    scored = subprocess.run(
        [sys.executable, "-m", "imgcls", "eval", "--run", str(out), "--data", str(photos), "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    test = json.loads(scored.stdout)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    selection = json.loads((out / "config.json").read_text())["run"]["selection"]
    return {
        "seed": seed,
        "wall": wall,
        "cpu": cpu,
        "epochs": len(rows),
        "planned": selection.get("planned_epochs", len(rows)),
        "epoch_seconds": statistics.median(float(r["seconds"]) for r in rows),
        "held_out": float(selection["best_value"]) if selection.get("best_value") is not None else float("nan"),
        "best_epoch": selection.get("best_epoch"),
        "test_top1": float(test["top1"]),
        "test_images": int(test["num_samples"]),
        "load": f"{load_before} → {load_after}",
    }


def _table(title: str, command: str, results: list[dict]) -> list[str]:
    lines = [
        f"**{title}** — `{command}`",
        "",
        "| seed | val/ top-1 % (153 photos, once) | held-out top-1 % (49, selection) | epochs run (best) | "
        "median s / epoch | wall s | CPU s | load 1/5/15 min, before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['seed']} | {r['test_top1']:.2f} | {r['held_out']:.2f} | {r['epochs']} of {r['planned']} "
            f"({r['best_epoch']}) | {r['epoch_seconds']:.1f} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['load']} |"
        )
    tops = [r["test_top1"] for r in results]
    walls = [r["wall"] for r in results]
    lines += [
        "",
        f"- val/ top-1: median {statistics.median(tops):.2f} % (range {min(tops):.2f}–{max(tops):.2f}); runs "
        f"≥ 85 %: {sum(t >= 85.0 for t in tops)}/{len(tops)}; wall median {statistics.median(walls):.0f} s "
        f"({'within' if statistics.median(walls) <= 900 else 'over'} 15 min).",
        "",
    ]
    return lines


def run() -> str:
    import torch

    seeds = int(os.environ.get("IMGCLS_BENCH_PHOTOS_SEEDS", "1"))
    weights = os.environ.get("IMGCLS_BENCH_PHOTOS_WEIGHTS")
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as tmp_name:
        tmp = Path(tmp_name)
        photos = _photo_folder(tmp)
        scratch = [
            _one_run(photos, tmp / f"small{seed}", seed, tmp / f"cache{seed}", ["--recipe", "small"])
            for seed in range(seeds)
        ]
        tuned = []
        if weights:
            recipe = ["--recipe", "finetune", "--model", "resnet18", "--weights", weights]
            tuned = [
                _one_run(photos, tmp / f"finetune{seed}", seed, tmp / f"cache-ft{seed}", recipe)
                for seed in range(seeds)
            ]
    threads = torch.get_num_threads()
    lines = [
        "## Your own photos (ants/bees, issue 14)",
        "",
        "The ants/bees folder of the PyTorch transfer-learning tutorial (398 photos, 2 classes) as a new user's "
        "folder. The run sees only `train/` and holds 20 % of it out to choose the epoch; `val/` (153 photos) is "
        "scored once at the end. Every seed is a fresh process with an empty decode cache (decoding included in "
        f"the wall time); {threads} thread{'s' if threads != 1 else ''}. CPU s is user + system time of the command.",
        "",
    ]
    lines += _table("From scratch, `--recipe small`", f"{TRAIN}; {EVAL}", scratch)
    if tuned:
        lines += _table(
            "Fine-tuned from a local torchvision file",
            "imgcls train --recipe finetune --model resnet18 --weights resnet18-f37072fd.pth ...",
            tuned,
        )
    else:
        lines += [
            "Fine-tuning from published weights was not run (no `IMGCLS_BENCH_PHOTOS_WEIGHTS` file on this machine; "
            "nothing is downloaded).",
            "",
        ]
    lines += [f"Command: `{COMMAND}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
