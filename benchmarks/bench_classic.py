"""The classic pipelines (issue 18) next to CNNs: test accuracy and training time on three datasets.

Every row is one real ``imgcls train`` process (a fresh run folder), timed from start to end of the command; the
accuracy is the run's own final evaluation on the held-out split (``eval.json``). Datasets:

- ``digits``: scikit-learn's bundled 8×8 digits, the seeded 90/10 split of the data layer (1,618 / 179).
- CIFAR-10 from a PNG (or JPEG) folder with ``train/`` and ``test/`` (``IMGCLS_BENCH_CIFAR10``): the first
  ``IMGCLS_BENCH_CLASSIC_PER_CLASS`` (default 1,000) training images of each class by file name — 10,000 — and
  the full 10,000 test images. The subset is a folder of symbolic links made for the run.
- ants/bees (``IMGCLS_BENCH_HYMENOPTERA``, a folder with ``train/`` and ``val/``): 244 / 153 photos.

The CNN rows: LeNet-5 with the ``digits`` recipe (the demo), airbench94 with the ``speedrun`` recipe on the same
CIFAR-10 subset at batch 500, and from scratch (no published weights) on ants/bees ResNet-18 at 128 px with
random resized crops and flips, and the ``small`` recipe (ResNet-10-T at 160 px). ``IMGCLS_BENCH_CLASSIC_MODELS``
(comma-separated) and ``IMGCLS_BENCH_CLASSIC_SETS`` (``digits,cifar10,hymenoptera``; ``none`` measures nothing
and only redraws the tables) narrow the run. Results land in ``benchmarks/results/classic_<dataset>.json`` row by
row, so a stopped run keeps what it measured and runs on different datasets may go side by side;
``IMGCLS_BENCH_CLASSIC_KEEP=DIR`` keeps the run folders in ``DIR``. Several hours on 2 busy cores; accuracy does
not depend on the load, times do.

Command: ``IMGCLS_BENCH_CIFAR10=… IMGCLS_BENCH_HYMENOPTERA=… .venv/bin/python -m benchmarks.run classic``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"  # classic_<dataset>.json: the rows measured so far
COMMAND = "IMGCLS_BENCH_CIFAR10=FOLDER IMGCLS_BENCH_HYMENOPTERA=FOLDER .venv/bin/python -m benchmarks.run classic"
CLASSIC = ["hog_svm", "lbp_svm", "sift_bovw_svm", "sift_vlad_svm", "sift_fisher_svm"]

# (dataset, model, extra train arguments); CNN baselines last in each dataset.
RUNS = {
    "digits": [*((m, []) for m in CLASSIC), ("lenet5", ["--recipe", "digits"])],
    # The speedrun recipe at batch 500 (its SGD lr scaled with the batch, 0.67 x 500), as in its slow test: at
    # batch 2000, 10,000 images give 5 steps an epoch.
    "cifar10": [
        *((m, []) for m in CLASSIC),
        ("airbench94", ["--recipe", "speedrun", "--batch-size", "500", "--set", "optim.sgd_lr=335"]),
    ],
    "hymenoptera": [
        *((m, ["--image-size", "128"]) for m in CLASSIC),
        (
            "resnet18",
            [
                "--image-size", "128", "--epochs", "30", "--batch-size", "32", "--lr", "0.05",
                "--set", "augment.random_resized_crop=true", "--set", "augment.hflip=0.5",
                "--set", "schedule.warmup_epochs=1",
            ],
        ),
        ("resnet10t", ["--recipe", "small"]),
    ],
}  # fmt: skip

# Published figures for reference (not measured here).
LITERATURE = [
    "Coates, Lee & Ng 2011 (AISTATS), single-layer k-means features (6×6 patches, stride 1, 4,000 features) + "
    "linear SVM on all 50,000 CIFAR-10 training images: 79.6 % test accuracy (77.9 % with 1,600 features).",
    "Lazebnik et al. 2006 (CVPR), dense SIFT + 200-word spatial pyramid (L = 2): 81.4 % on Scene-15 and 64.6 % "
    "on Caltech-101 (30 training images per class); no CIFAR-10 figure.",
    "Perronnin, Sánchez & Mensink 2010 (ECCV), improved Fisher vectors with a spatial pyramid: 58.3 % mAP on "
    "PASCAL VOC 2007; no CIFAR-10 figure.",
    "HOG + SVM on CIFAR-10: no peer-reviewed figure was found; a blog report gives 62 % with HOG, PCA and an "
    "RBF-kernel SVM on all 50,000 training images.",
]


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def _cifar_subset(source: Path, per_class: int, into: Path) -> Path:
    """``into/train/<class>/`` with links to the first ``per_class`` files of each class; ``test`` linked whole."""
    for folder in sorted(p for p in (source / "train").iterdir() if p.is_dir()):
        target = into / "train" / folder.name
        target.mkdir(parents=True)
        for f in sorted(folder.iterdir())[:per_class]:
            (target / f.name).symlink_to(f.resolve())
    (into / "test").symlink_to((source / "test").resolve(), target_is_directory=True)
    return into


def _train(data: str, model: str, extra: list[str], out: Path) -> dict:
    argv = [sys.executable, "-m", "imgcls", "train", "--model", model, "--data", data, "--out", str(out), *extra]
    argv += ["--set", "train.progress=lines"]
    if model not in CLASSIC:
        # The last epoch of a fixed schedule, evaluated once: no epoch chosen (or stop made) on the split scored,
        # which the classic pipelines never see either.
        argv += ["--set", "train.save=last", "--set", "train.early_stopping=0"]
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    row = {"model": model, "args": extra, "wall_s": round(wall, 1), "load": os.getloadavg()}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {**row, "error": tail[0][:300]}
    evaluation = json.loads((out / "eval.json").read_text())
    test = evaluation.get("test") if isinstance(evaluation.get("test"), dict) else evaluation
    return {**row, "top1": test.get("top1"), "top5": test.get("top5"), "num_samples": test.get("num_samples")}


def _load(name: str) -> dict | None:
    path = RESULTS / f"classic_{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _measure(sets: list[str], models: set[str] | None) -> dict:
    results = {name: block for name in RUNS if (block := _load(name)) is not None}
    sources = {
        "digits": "digits",
        "cifar10": _env_path("IMGCLS_BENCH_CIFAR10"),
        "hymenoptera": _env_path("IMGCLS_BENCH_HYMENOPTERA"),
    }
    per_class = int(os.environ.get("IMGCLS_BENCH_CLASSIC_PER_CLASS", "1000"))
    keep = _env_path("IMGCLS_BENCH_CLASSIC_KEEP")  # a folder to keep the run folders in (int8 checks use them)
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-classic-") as tmp:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix="classic-", dir=keep)
        for name in sets:
            source = sources[name]
            if source is None or (not isinstance(source, str) and not source.is_dir()):
                results[name] = {"skipped": f"set IMGCLS_BENCH_{name.upper()} to the dataset folder"}
                continue
            data = str(source)
            if name == "cifar10":
                data = str(_cifar_subset(Path(source), per_class, Path(tmp) / "cifar10"))
            rows = [r for r in results.get(name, {}).get("rows", []) if models is None or r["model"] not in models]
            for model, extra in RUNS[name]:
                if models is not None and model not in models:
                    continue
                print(f"bench classic: {name} {model}", flush=True)
                rows = [r for r in rows if r["model"] != model]
                rows.append(_train(data, model, extra, Path(tmp) / f"{name}-{model}"))
                results[name] = {"rows": rows, "per_class": per_class if name == "cifar10" else None}
                (RESULTS / f"classic_{name}.json").write_text(json.dumps(results[name], indent=1) + "\n")
    return results


def _table(name: str, block: dict) -> list[str]:
    if "skipped" in block:
        return [f"*{name}: not measured ({block['skipped']}).*", ""]
    order = {m: i for i, (m, _) in enumerate(RUNS[name])}
    lines = [
        "| model | kind | test top-1 % | top-5 % | wall s (train + final eval) | load (1 min) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    measured = {r["model"] for r in block["rows"]}
    for model, _ in RUNS[name]:
        if model not in measured:
            kind = "classic" if model in CLASSIC else "CNN"
            lines.append(f"| `{model}` | {kind} | not measured yet | | | |")
    notes = []
    for r in sorted(block["rows"], key=lambda r: order.get(r["model"], 99)):
        kind = "classic" if r["model"] in CLASSIC else "CNN"
        if r.get("note"):  # how a figure was read, where it is not the run's own final evaluation
            notes.append(f"{'*' * (len(notes) + 1)} `{r['model']}`: {r['note']}.")
        args = f" `{' '.join(r['args'])}`" if r["args"] else ""
        if "error" in r:
            lines.append(f"| `{r['model']}`{args} | {kind} | failed: {r['error']} | | {r['wall_s']} | |")
            continue
        top5 = "—" if r.get("top5") is None else f"{r['top5']:.2f}"
        mark = "*" * len(notes) if r.get("note") else ""
        lines.append(
            f"| `{r['model']}`{args} | {kind} | {r['top1']:.2f}{mark} | {top5} | {r['wall_s']:.0f} "
            f"| {r['load'][0]:.1f} |"
        )
    return [*lines, "", *(f"{n}  " for n in notes), *([""] if notes else [])]


def run() -> str:
    sets = [s for s in os.environ.get("IMGCLS_BENCH_CLASSIC_SETS", "digits,cifar10,hymenoptera").split(",") if s]
    sets = [] if sets == ["none"] else sets
    wanted = [m for m in os.environ.get("IMGCLS_BENCH_CLASSIC_MODELS", "").split(",") if m]
    results = _measure(sets, set(wanted) if wanted else None)
    titles = {
        "digits": "digits (1,618 train / 179 validation, 8×8 upsampled)",
        "cifar10": f"CIFAR-10, {10 * (results.get('cifar10', {}).get('per_class') or 1000):,} training images "
        "(the first per class by file name) / the full 10,000 test images",
        "hymenoptera": "ants/bees photos (244 train / 153 validation)",
    }
    out = [
        "## Classic pipelines next to CNNs (issue 18)",
        "",
        "Hand-made features + SVM (`imgcls.classic`, `imgcls models svm`) and a CNN on the same data, each one "
        "`imgcls train` process with the models' defaults; top-1/top-5 from the run's final evaluation of the "
        "held-out split. Wall time covers the whole command (start-up, decoding, fit or training, final evaluation, "
        "report). The classic rows fit in one pass (features, vocabulary, SVM, softmax temperature on a 20 % "
        "hold-out); their top-k is the SVM's ranking of decision values. The CNN rows ship their last epoch "
        "(`train.save=last`, no early stopping), so no row chooses anything on the split it is scored on.",
        "",
    ]
    for name in ("digits", "cifar10", "hymenoptera"):
        out += [f"### {titles[name]}", "", *_table(name, results.get(name, {"rows": []}))]
    out += ["Published figures for reference (other protocols, not measured here):", ""]
    out += [f"- {line}" for line in LITERATURE]
    out += ["", f"Command: `{COMMAND}` (results kept row by row in `benchmarks/results/classic_<dataset>.json`)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(run())
