"""Against peers: imgcls next to what a user would pick instead, same machine, same threads, alternating runs.

Four parts, each a set of whole processes started alternately (A, B, C, A, B, C, ...) with medians compared, so
that load from other processes on a shared machine falls on every side alike:

1. **predict** — `imgcls predict` (the whole command: start-up, engine choice remembered from a first run,
   threaded decode, network) against a plain PIL + ONNX Runtime script (`peer_scripts/plain_ort.py`) on the fp32
   export and on the int8 export (QDQ, u8 activations), ResNet-50 at 224 (seeded random weights), photo-like
   JPEGs of 320-640 px, batch 32. Also `imgcls predict --precision int8` and each side's start-up on one image,
   and batch-1 latency in-process (median of single-image calls, decode included).
2. **train** — `imgcls train` against timm's `train.py` way (`peer_scripts/timm_train.py`, from timm's API) and a
   torchvision ImageFolder/DataLoader/transforms.v2 loop (`peer_scripts/tv_train.py`), the same network, epochs,
   batch, optimiser (SGD, momentum 0.9, cosine), workers and threads, evaluated once at the end: 3 epochs of the
   CIFAR-stem ResNet-18 on a 5k CIFAR-10 PNG subset (500 per class; full test split), and ResNet-18 at 224 on the
   ants/bees photos. bf16 autocast on every side only where the CPU has bf16 units (imgcls's ``auto`` rule).
3. **data** — the data pipeline alone: imgcls's loader against torchvision v2 + DataLoader with the same workers on
   JPEG photos with RandomResizedCrop 224; every batch timed from the first, so a slow start (worker start-up, an
   allocator cliff) shows in the "first 3 batches" column.

The peers live in their own venv, made by ``bash benchmarks/peers_setup.sh`` (``$IMGCLS_PEERS_VENV``, default
``~/.cache/imgcls-bench/peers``). Data: ``../shared/datasets/cifar10-png.tar.gz`` and ``hymenoptera.tar.gz``
(``$IMGCLS_CIFAR10_PNG``, ``$IMGCLS_HYMENOPTERA``: an archive or an unpacked folder).

Command: ``bash benchmarks/peers_setup.sh && .venv/bin/python -m benchmarks.run peers``; ``IMGCLS_BENCH_QUICK=1``
runs every part on a few images for one round, to check that it works (its figures mean nothing);
``IMGCLS_BENCH_PEERS_ROUNDS`` sets the alternating rounds (3), ``IMGCLS_BENCH_PEERS_PARTS`` the parts.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "peer_scripts"
SHARED = REPO.parent / "shared" / "datasets"
PEERS_VENV = Path(os.environ.get("IMGCLS_PEERS_VENV", Path.home() / ".cache" / "imgcls-bench" / "peers"))
QUICK = os.environ.get("IMGCLS_BENCH_QUICK") == "1"
THREADS = int(os.environ.get("IMGCLS_BENCH_THREADS", str(min(2, os.cpu_count() or 1))))
WORKERS = THREADS
ROUNDS = 1 if QUICK else int(os.environ.get("IMGCLS_BENCH_PEERS_ROUNDS", "3"))
COMMAND = "bash benchmarks/peers_setup.sh && .venv/bin/python -m benchmarks.run peers"


# --- plumbing: processes, alternation, environment ------------------------------------------------------------------


def peers_python() -> Path:
    python = PEERS_VENV / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"peers venv not found at {PEERS_VENV}: run `bash benchmarks/peers_setup.sh` first")
    return python


def env(**extra: str) -> dict[str, str]:
    """The same threads everywhere: OpenMP (torch) and every script's own setting take THREADS."""
    e = dict(os.environ, OMP_NUM_THREADS=str(THREADS), OMP_WAIT_POLICY="PASSIVE", **extra)
    e.pop("MALLOC_MMAP_THRESHOLD_", None)  # every side with the allocator's defaults
    return e


def run_process(argv: Sequence[str], cwd: Path | None = None, extra_env: dict | None = None) -> tuple[float, str]:
    """Run a command to completion; its wall seconds and stdout (an error names the command and its stderr)."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env(**(extra_env or {})), capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(map(str, argv[:4]))} ... exited {done.returncode}:\n{tail}")
    return seconds, done.stdout


def last_json(text: str):
    """The output's JSON: the whole of it (``imgcls predict --json`` indents its list over many lines), else its
    last line that is JSON (scripts that log before their one-line answer)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError("no JSON line in the output")


def alternate(sides: dict[str, Callable[[], object]], rounds: int = ROUNDS) -> tuple[dict, dict]:
    """Call every side once per round, in turn (A, B, C, A, B, C, ...): ``({side: [seconds]}, {side: [results]})``."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    results: dict[str, list] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            results[name].append(fn())
            times[name].append(time.perf_counter() - t0)
    return times, results


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average: {load_average()}"


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16") if f in flags.split()]
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, flags: {' '.join(isa)}"


def versions(python: Path | str) -> dict:
    code = (
        "import json, importlib\n"
        "out = {}\n"
        "for m in ('torch', 'torchvision', 'timm', 'onnxruntime', 'PIL', 'numpy'):\n"
        "    try: out[m] = importlib.import_module(m).__version__\n"
        "    except Exception: pass\n"
        "import torch; out['cpu_capability'] = torch.backends.cpu.get_cpu_capability()\n"
        "print(json.dumps(out))"
    )
    _, text = run_process([python, "-c", code])
    return last_json(text)


def environment_lines() -> list[str]:
    ours, peers = versions(sys.executable), versions(peers_python())
    fmt = lambda v: ", ".join(f"{k} {x}" for k, x in v.items() if k != "cpu_capability")  # noqa: E731
    return [
        f"CPU: {lscpu_model()}; torch CPU capability: {ours.get('cpu_capability')} (peers' torch: "
        f"{peers.get('cpu_capability')}). Threads: {THREADS} intra-op on every side, {WORKERS} loader workers.",
        f"imgcls venv: {fmt(ours)}. Peers venv ({PEERS_VENV}): {fmt(peers)}.",
    ]


# --- data ---------------------------------------------------------------------------------------------------------


def _source(env_name: str, archive: str) -> Path:
    value = os.environ.get(env_name)
    path = Path(value) if value else SHARED / archive
    if not path.exists():
        raise SystemExit(f"{path} not found (set {env_name} to the archive or an unpacked folder)")
    return path


def cifar_subset(dest: Path, per_class: int, test_per_class: int) -> Path:
    """``dest/train`` with ``per_class`` PNGs per class (the first by name) and ``dest/test`` with the first
    ``test_per_class`` (all 1,000 by default), copied from the exact CIFAR-10 PNG archive or folder."""
    src = _source("IMGCLS_CIFAR10_PNG", "cifar10-png.tar.gz")
    limits = {"train": per_class, "test": test_per_class}
    if src.is_dir():
        for split, n in limits.items():
            for cls in sorted(p.name for p in (src / split).iterdir()):
                (dest / split / cls).mkdir(parents=True, exist_ok=True)
                for f in sorted((src / split / cls).iterdir())[:n]:
                    shutil.copy(f, dest / split / cls / f.name)
        return dest
    chosen: dict[tuple[str, str], list[tarfile.TarInfo]] = {}
    with tarfile.open(src) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".png")]
        for m in sorted(members, key=lambda m: m.name):
            split, cls = Path(m.name).parts[-3:-1]
            if split in limits and len(chosen.setdefault((split, cls), [])) < limits[split]:
                chosen[(split, cls)].append(m)
        wanted = [m for group in chosen.values() for m in group]
        tar.extractall(dest, members=wanted, filter="data")
    return dest


def hymenoptera(dest: Path) -> Path:
    src = _source("IMGCLS_HYMENOPTERA", "hymenoptera.tar.gz")
    if src.is_dir():
        return src
    with tarfile.open(src) as tar:
        tar.extractall(dest, filter="data")
    return dest / "hymenoptera_data"


def photos(folder: Path, count: int, classes: int = 2, seed: int = 0, size=(320, 641, 240, 481)) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields plus sensor noise), quality 90, in ``classes`` class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = int(rng.integers(size[0], size[1])), int(rng.integers(size[2], size[3]))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        a = np.asarray(coarse, dtype=np.int16) + rng.integers(-10, 11, (h, w, 3), dtype=np.int16)
        path = folder / f"c{i % classes}" / f"photo_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


# --- 1. predict ---------------------------------------------------------------------------------------------------


def predict_part(tmp: Path) -> list[str]:
    import torch

    from imgcls.engine.bundle import ModelMeta, save_bundle
    from imgcls.inference.export import export_onnx
    from imgcls.inference.int8 import export_onnx_int8
    from imgcls.models import create_model

    count = 24 if QUICK else 384
    folder = tmp / "photos"
    paths = photos(folder / "val", count) + photos(folder / "train", 64 if QUICK else 256, seed=1)
    val = folder / "val"
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=1000).eval()
    meta = ModelMeta(
        name="resnet50",
        num_classes=1000,
        classes=[f"c{i}" for i in range(1000)],
        input_size=[3, 224, 224],
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        resize=256,
    )
    run = tmp / "run"
    save_bundle(run, model, meta)
    # The run's data spec, so that int8 calibrates on its validation photos (the generated folder's val/).
    (run / "config.json").write_text(json.dumps({"data": {"spec": str(folder)}, "train": {"seed": 0}}))
    fp32_onnx, int8_onnx = tmp / "model.onnx", tmp / "model.int8.onnx"
    export_onnx(model, meta, fp32_onnx)
    cache = {"IMGCLS_INFERENCE_CACHE": str(tmp / "engine-cache")}
    # Random weights: top-1 on random labels is chance either way, so no drop threshold (agreement is reported).
    check = export_onnx_int8(run, int8_onnx, max_drop=100.0)
    imgcls = [sys.executable, "-m", "imgcls", "predict", "--run", run, "--batch-size", 32, "--json"]
    plain = [sys.executable, SCRIPTS / "plain_ort.py", "--threads", THREADS, "--batch-size", 32]
    # First runs: measure and remember the engine choice (and build the int8 model), outside the timing.
    first_fp32, out = run_process([*imgcls, val], extra_env=cache)
    chosen = _engine_line(run, cache)
    first_int8, _ = run_process([*imgcls, "--precision", "int8", "--max-int8-drop", 100, val], extra_env=cache)
    chosen8 = _engine_line(run, cache, "int8")
    sides = {
        "imgcls predict": lambda: run_process([*imgcls, val], extra_env=cache),
        "imgcls predict --precision int8": lambda: run_process(
            [*imgcls, "--precision", "int8", "--max-int8-drop", 100, val], extra_env=cache
        ),
        "PIL + ORT fp32 script": lambda: run_process([*plain, "--onnx", fp32_onnx, val]),
        "PIL + ORT int8 (u8) script": lambda: run_process([*plain, "--onnx", int8_onnx, val]),
    }
    times, results = alternate(sides)
    ref = {os.path.realpath(r["path"]): r["index"] for r in last_json(results["PIL + ORT fp32 script"][-1][1])}
    if len(ref) != count:
        raise RuntimeError(f"the plain ORT script answered for {len(ref)} of the {count} photos")

    def agreement(side: str) -> float:
        answers = {os.path.realpath(r["path"]): r["predictions"][0]["index"] for r in last_json(results[side][-1][1])}
        if answers.keys() != ref.keys():
            raise RuntimeError(f"{side} answered for {len(answers)} photos, not the same {len(ref)}")
        return 100.0 * np.mean([answers[p] == ref[p] for p in ref])

    agree, agree8 = agreement("imgcls predict"), agreement("imgcls predict --precision int8")
    one = [paths[0]]
    # An ONNX Runtime engine answers without importing PyTorch (imgcls.inference.fastpath): where it was measured
    # fastest, or where it is estimated to answer these few inputs sooner than the PyTorch engine measured fastest
    # (which pays PyTorch's import first). Each row says which engine answered.
    run_process([*imgcls, "--precision", "fp32", *one], extra_env=cache)  # records fp32's own choice, untimed
    int8_args = ["--precision", "int8", "--max-int8-drop", 100]
    start_commands = {
        "imgcls predict": [*imgcls, *one],
        "imgcls predict --precision fp32": [*imgcls, "--precision", "fp32", *one],
        "imgcls predict --precision int8": [*imgcls, *int8_args, *one],
    }
    start_sides = {
        **{name: (lambda argv=argv: run_process(argv, extra_env=cache)) for name, argv in start_commands.items()},
        "PIL + ORT fp32 script": lambda: run_process([*plain, "--onnx", fp32_onnx, *one]),
        "python -c 'import torch'": lambda: run_process([sys.executable, "-c", "import torch"]),
    }
    start_times, _ = alternate(start_sides)
    start_engines = {name: said_engine(argv, cache) for name, argv in start_commands.items()}  # one more, untimed
    latency = batch1_latency(run, fp32_onnx, paths[:12], cache)

    base = median(times["PIL + ORT fp32 script"])
    base8 = median(times["PIL + ORT int8 (u8) script"])
    lines = [
        "### predict: the whole command on a folder",
        "",
        f"ResNet-50 at 224 (seeded random weights), {count} photo-like JPEGs of 320-640 px, batch 32. "
        f"imgcls's engine choice (precision auto, measured by its first run, {first_fp32:.1f} s): {chosen}. "
        "The ORT int8 script's file (`export --format onnx-int8`): "
        f"{check.summary()} (random weights: near-tied logits make this a harsh agreement test).",
        "",
        "| command | seconds (median) | images/s | vs PIL + ORT fp32 | vs ORT int8 | top-1 agreement with ORT fp32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in times.items():
        m = median(t)
        agreement = {"imgcls predict": f"{agree:.1f}%", "imgcls predict --precision int8": f"{agree8:.1f}%"}
        lines.append(
            f"| {name} | {m:.2f} | {count / m:.1f} | {base / m:.2f}x | {base8 / m:.2f}x | {agreement.get(name, '')} |"
        )
    lines += [
        "",
        f"First `imgcls predict --precision int8` (calibrates, checks, caches the int8 model): {first_int8:.1f} s; "
        f"its engine: {chosen8}.",
        "",
        "Start-up: the whole command on one image (median wall seconds; the engine as the command said it):",
        "",
        "| command | seconds | engine |",
        "|---|---:|---|",
        *[f"| {name} | {median(t):.2f} | {start_engines.get(name, '')} |" for name, t in start_times.items()],
        "",
        "Batch-1 latency in one process (decode included, median of 12 single-image calls, each after an untimed "
        "call of the same side, the order alternating):",
        "",
        "| engine | ms |",
        "|---|---:|",
        *[f"| {name} | {ms:.1f} |" for name, ms in latency.items()],
        "",
    ]
    del out
    return lines


def said_engine(argv: Sequence, cache: dict) -> str:
    """The engine an ``imgcls predict`` command says it ran (its ``imgcls: engine ...`` line on stderr)."""
    done = subprocess.run([str(a) for a in argv], env=env(**cache), capture_output=True, text=True, check=False)
    said = [line for line in done.stderr.splitlines() if line.startswith("imgcls: engine ")]
    return said[-1].removeprefix("imgcls: ").replace("|", "/") if said else "?"


def _engine_line(run: Path, cache: dict, precision: str = "auto") -> str:
    """What the Predictor runs for ``precision`` (its remembered or measured choice), in its own words."""
    code = (
        "import logging, sys; from imgcls.inference import Predictor\n"
        f"p = Predictor.from_run({str(run)!r}, batch_size=32, precision={precision!r}, max_int8_drop=100.0)\n"
        "print(p.selection.describe() if getattr(p, 'selection', None) else p.backend + ' ' + p.precision)"
    )
    _, text = run_process([sys.executable, "-c", code], extra_env=cache)
    return text.strip().splitlines()[-1] if text.strip() else "?"


def batch1_latency(run: Path, fp32_onnx: Path, paths: list[Path], cache: dict) -> dict[str, float]:
    """Single-image calls, alternating: imgcls's Predictor (its chosen engine) against PIL + ORT fp32."""
    import onnxruntime as ort
    from PIL import Image

    from imgcls.inference import Predictor

    os.environ.update(cache)
    ours = Predictor.from_run(run, batch_size=1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(fp32_onnx), sess_options=opts, providers=["CPUExecutionProvider"])
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)

    def plain(path: Path) -> int:
        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - 224) // 2, (h - 224) // 2
        x = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32)[None].transpose(0, 3, 1, 2)
        return int(session.run(None, {"input": ((x / 255.0 - mean) / std).astype(np.float32)})[0].argmax())

    ours.predict(paths[:1])
    plain(paths[0])
    sides = {"imgcls Predictor": lambda p: ours.predict([p]), "PIL + ORT fp32": plain}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for i, path in enumerate(paths):
        # Each side goes first on every other image, and each timed call follows an untimed call of the same side:
        # the call right after the other ORT session's run would otherwise compete with that session's
        # spin-waiting threads (seen here: ~30 % slower for whichever side came second).
        for name in list(sides)[i % 2 :] + list(sides)[: i % 2]:
            sides[name](path)
            t0 = time.perf_counter()
            sides[name](path)
            times[name].append(time.perf_counter() - t0)
    return {name: median(t) * 1000 for name, t in times.items()}


# --- 2. train -----------------------------------------------------------------------------------------------------


def native_bf16() -> bool:
    from imgcls.inference.engines import native_bf16 as probe

    return probe()


def train_part(tmp: Path) -> list[str]:
    per_class = 20 if QUICK else 500
    cifar = cifar_subset(tmp / "cifar5k", per_class, 20 if QUICK else 1000)
    ants = hymenoptera(tmp / "hym")
    bf16 = native_bf16()
    lines = [
        "### train: the same network, epochs, batch, optimiser, workers and threads",
        "",
        f"bf16 autocast on every side: {'yes' if bf16 else 'no (this CPU has no bf16 units: fp32 everywhere)'}; "
        f"channels_last on every side. Seconds: the whole process (start-up, data, training, one final "
        f"evaluation), median of {ROUNDS} alternating rounds; `train` = the training epochs alone (no evaluation) "
        "on every side.",
        "",
    ]
    setups = [
        (
            "CIFAR-10 PNG, 5k subset, resnet18 (CIFAR stem), 32 px",
            cifar / "train",
            cifar / "test",
            cifar,
            "resnet18_cifar",
            32,
            1 if QUICK else 3,
            128,
            0.1,
            0 if QUICK else 1,
        ),
        (
            "ants/bees photos, resnet18 at 224",
            ants / "train",
            ants / "val",
            ants,
            "resnet18",
            224,
            1 if QUICK else 5,
            32,
            0.05,
            0 if QUICK else 1,
        ),
    ]
    for title, train, val, root, model, size, epochs, batch, lr, warmup in setups:
        lines += train_rows(tmp, title, train, val, root, model, size, epochs, batch, lr, warmup, bf16)
    return lines


def train_rows(tmp, title, train, val, root, model, size, epochs, batch, lr, warmup, bf16) -> list[str]:
    """One table: every side once per round; round ``r`` trains with seed ``r`` on every side, so the accuracy
    column is a median over seeds (a single seed of a 3-epoch run is a lottery) and the times stay like for like."""
    peer_args = [
        "--train",
        train,
        "--val",
        val,
        "--model",
        model,
        "--size",
        size,
        "--epochs",
        epochs,
        "--batch-size",
        batch,
        "--lr",
        lr,
        "--warmup-epochs",
        warmup,
        "--workers",
        WORKERS,
        "--threads",
        THREADS,
        *(["--bf16"] if bf16 else []),
    ]
    runs = iter(range(1000))
    data_cache = {"IMGCLS_DATA": str(tmp / f"imgcls-data-{model}")}

    seeds = {}

    def next_seed(side: str) -> int:
        seeds[side] = seeds.get(side, -1) + 1
        return seeds[side]

    def imgcls_train():
        out = tmp / f"run-{model}-{next(runs)}"
        argv = [
            sys.executable,
            "-m",
            "imgcls",
            "train",
            "--data",
            root,
            "--model",
            model,
            "--image-size",
            size,
            "--epochs",
            epochs,
            "--batch-size",
            batch,
            "--lr",
            lr,
            "--workers",
            WORKERS,
            "--out",
            out,
            "--seed",
            next_seed("imgcls"),
            "--set",
            "train.val_every=0",
            "--set",
            "optim.momentum=0.9",
            "--set",
            "optim.nesterov=true",
            "--set",
            "optim.weight_decay=5e-4",
            "--set",
            "schedule.name=cosine",
            "--set",
            f"schedule.warmup_epochs={warmup}",
            "--set",
            "schedule.warmup_start=0.1",
            "--set",
            "augment.hflip=0.5",
        ]
        if size <= 64:
            argv += ["--set", "augment.crop_padding=4"]
        else:
            argv += ["--set", "augment.random_resized_crop=true", "--set", "augment.rrc_scale=[0.35,1.0]"]
        run_process(argv, extra_env=data_cache)
        rows = (out / "metrics.csv").read_text().strip().splitlines()
        header, last = rows[0].split(","), rows[-1].split(",")
        epoch_s = sum(float(r.split(",")[header.index("seconds")]) for r in rows[1:])
        top1 = float(last[header.index("val_top1")])
        return {"top1": top1, "train_seconds": epoch_s}

    def peer(script: str):
        def go():
            _, text = run_process([peers_python(), SCRIPTS / script, *peer_args, "--seed", next_seed(script)])
            found = last_json(text)
            # The training epochs alone, as imgcls's metrics.csv counts them (the script's own train_seconds
            # also holds its final evaluation).
            return {**found, "train_seconds": sum(found["epoch_seconds"])}

        return go

    sides = {
        "imgcls train": imgcls_train,
        "timm (train.py's API)": peer("timm_train.py"),
        "torchvision loop": peer("tv_train.py"),
    }
    times, results = alternate(sides)
    base = {name: median(t) for name, t in times.items()}
    lines = [
        f"{title}: {epochs} epochs, batch {batch}, lr {lr} (linear warm-up from lr/10 over {warmup} epoch(s), then "
        f"cosine to 0, per step); "
        + (f"seeds 0-{ROUNDS - 1}, one per round," if ROUNDS > 1 else "seed 0")
        + " on every side.",
        "",
        "| side | seconds (median) | train seconds | test top-1 (median) | min-max over seeds | imgcls speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in sides:
        r = results[name]
        train_s = median([x["train_seconds"] for x in r])
        top1s = [x["top1"] for x in r]
        lines.append(
            f"| {name} | {base[name]:.1f} | {train_s:.1f} | {median(top1s):.2f}% | {min(top1s):.2f}-{max(top1s):.2f}% "
            f"| {base[name] / base['imgcls train']:.2f}x |"
        )
    return [*lines, ""]


# --- 3. data ------------------------------------------------------------------------------------------------------


def data_part(tmp: Path) -> list[str]:
    count = 128 if QUICK else 1024
    folder = tmp / "rrc"
    photos(folder / "train", count, size=(480, 521, 340, 400))
    passes = 1 if QUICK else 3
    common = ["--workers", WORKERS, "--threads", THREADS, "--batch-size", 64, "--passes", passes]

    def ours(cache: str) -> Callable[[], object]:
        argv = [sys.executable, SCRIPTS / "imgcls_data.py", "--folder", folder, "--cache", cache, *common]
        return lambda: last_json(run_process(argv, extra_env={"IMGCLS_DATA": str(tmp / "rrc-cache")})[1])

    sides = {
        "imgcls loader": ours("auto"),
        "imgcls loader, streamed (data.cache=never)": ours("never"),
        "torchvision v2 + DataLoader": lambda: last_json(
            run_process([peers_python(), SCRIPTS / "tv_data.py", "--folder", folder / "train", *common])[1]
        ),
    }
    _, results = alternate(sides)
    lines = [
        "### data: the pipeline alone, JPEG photos with RandomResizedCrop 224",
        "",
        f"{count} photo-like JPEGs of about 500×375, batch 64, {WORKERS} workers, {passes} passes, flip + normalise "
        f"on every side. Median over {ROUNDS} alternating rounds of images/s; the first 3 batches (worker start, "
        "allocator warm-up) apart from the rest. imgcls's default (`data.cache=auto`) decodes each file once into a "
        "uint8 cache of shorter-side-256 centre squares (built in the first round, reused by the later ones, as by "
        "a second run on the same folder) and crops from those squares: the crop never reaches the strips a 4:3 "
        "photo loses to its centre square. The streamed row (`data.cache=never`) decodes every file in every epoch "
        "and crops the full image, as torchvision does.",
        "",
        "| pipeline | first 3 batches, images/s | steady, images/s | whole run, images/s | vs torchvision |",
        "|---|---:|---:|---:|---:|",
    ]
    rows, rates = [], {}
    for name, rs in results.items():
        first = median([len(r["batch_seconds"][:3]) * r["batch_size"] / sum(r["batch_seconds"][:3]) for r in rs])
        steady = median(
            [r["batch_size"] * len(r["batch_seconds"][3:]) / max(1e-9, sum(r["batch_seconds"][3:])) for r in rs]
        )
        rates[name] = median([r["batch_size"] * len(r["batch_seconds"]) / r["seconds"] for r in rs])
        rows.append((name, first, steady))
    base = rates["torchvision v2 + DataLoader"]
    lines += [f"| {n} | {f:.0f} | {st:.0f} | {rates[n]:.0f} | {rates[n] / base:.2f}x |" for n, f, st in rows]
    return [*lines, ""]


# --- the section --------------------------------------------------------------------------------------------------


def run(parts: Sequence[str] | None = None) -> str:
    parts = parts or os.environ.get("IMGCLS_BENCH_PEERS_PARTS", "predict,data,train").split(",")
    start = uptime()
    lines = [
        "## Against peers",
        "",
        f"Command: `{COMMAND}`" + (" (IMGCLS_BENCH_QUICK=1: a functional check, not figures)" if QUICK else "") + ".",
        *environment_lines(),
        f"At the start: `{start}`.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="imgcls-peers-") as tmp:
        tmp = Path(tmp)
        makers = {"predict": predict_part, "train": train_part, "data": data_part}
        for part in parts:
            (tmp / part).mkdir()
            lines += makers[part](tmp / part)
    lines += [f"At the end: `{uptime()}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(sys.argv[1:] or None))
