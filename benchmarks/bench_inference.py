"""Inference speed on a CPU: `imgcls predict` against a plain PIL + NumPy + ONNX Runtime fp32 pipeline.

Everything runs on the same ResNet-50 weights (randomly initialised, seeded: no network access is assumed) and
the same folder of JPEG photos in one process, side by side:

- model only, batch 32 at 224: fp32 NCHW, fp32 channels-last, bf16 autocast + channels-last, the frozen bf16
  graph that `Predictor` runs, ONNX Runtime fp32;
- end to end on the folder: ``Predictor`` (decode on threads with JPEG draft mode, torch default precision)
  against the plain pipeline (PIL decode + resize + crop, NumPy normalisation, ONNX Runtime fp32, batch 32),
  and top-1 agreement between them;
- batch-1 latency (median of repeated single-image calls);

Competing engines are timed alternately (A, B, A, B, ...) and their medians compared, so that load from other
processes on a shared machine falls on both alike.
- the HTTP service under a burst of concurrent requests (requests/s, p50, p99).

Command: ``.venv/bin/python -m benchmarks.run inference`` (``IMGCLS_BENCH_IMAGES`` sets the folder size).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGES = int(os.environ.get("IMGCLS_BENCH_IMAGES", "192"))
ROUNDS = 3
BATCH = 32
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


def _photos(folder: Path, count: int) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields, edges, sensor noise) of 320-640 px, quality 90."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        a = np.asarray(coarse, dtype=np.int16) + rng.integers(-10, 11, (h, w, 3), dtype=np.int16)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _plain_session(onnx_file: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(onnx_file), sess_options=opts, providers=["CPUExecutionProvider"])


def _plain_pipeline(session, paths: list[Path]) -> np.ndarray:
    """The baseline: PIL decode, resize shorter side to 256, center crop 224, NumPy normalise, ORT fp32."""
    top1 = []
    for i in range(0, len(paths), BATCH):
        batch = []
        for p in paths[i : i + BATCH]:
            im = Image.open(p).convert("RGB")
            w, h = im.size
            s = 256 / min(w, h)
            im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - 224) // 2, (h - 224) // 2
            batch.append(np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32))
        x = (np.stack(batch).transpose(0, 3, 1, 2) / 255.0 - MEAN) / STD
        (logits,) = session.run(None, {"input": x.astype(np.float32)})
        top1.extend(logits.argmax(1).tolist())
    return np.array(top1)


def _interleaved(sides: dict[str, object], rounds: int = ROUNDS) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per call of each ``{name: fn}``, the calls alternating; and each side's last result."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    results: dict[str, object] = {}
    for _ in range(rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, results


def _model_only(model, onnx_file: Path, graph) -> list[tuple[str, float]]:
    import onnxruntime as ort

    x = torch.randn(BATCH, 3, 224, 224)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    eager = {"torch fp32, NCHW": (model, x, False)}
    model_cl = deepcopy(model).to(memory_format=torch.channels_last)
    eager["torch fp32, channels-last"] = (model_cl, x_cl, False)
    eager["torch bf16 autocast, channels-last (eager)"] = (model_cl, x_cl, True)
    sides = {}
    for label, (m, xx, bf16) in eager.items():

        def run(m=m, xx=xx, bf16=bf16):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return m(xx)

        sides[label] = run
    x_bf16 = x_cl.to(torch.bfloat16)

    def frozen():
        with torch.inference_mode():
            return graph(x_bf16)

    if graph is not None:
        sides["torch bf16 frozen graph, channels-last (`Predictor`)"] = frozen
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_file), sess_options=opts, providers=["CPUExecutionProvider"])
    sides["ONNX Runtime fp32"] = lambda: session.run(None, {"input": x.numpy()})
    for fn in sides.values():
        fn()  # warm-up: oneDNN builds its kernels on the first call
    seconds, _ = _interleaved(sides)
    return [(label, BATCH / t) for label, t in seconds.items()]


def _burst(predictor, paths: list[Path], n: int) -> tuple[float, float, float]:
    import httpx
    import uvicorn

    from imgcls.serve import ServeLimits, create_app

    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(predictor, ServeLimits()), port=port, log_level="warning"))
    import threading

    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    bodies = [p.read_bytes() for p in paths[:16]]

    async def one(client, i):
        t0 = time.perf_counter()
        r = await client.post("/predict", content=bodies[i % len(bodies)])
        assert r.status_code == 200, r.text
        return time.perf_counter() - t0

    async def burst():
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as c:
            await one(c, 0)  # warm-up
            t0 = time.perf_counter()
            latencies = await asyncio.gather(*(one(c, i) for i in range(n)))
            return time.perf_counter() - t0, sorted(latencies)

    try:
        wall, lat = asyncio.run(burst())
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return n / wall, lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.99 * len(lat)))]


def _engine_name(predictor) -> str:
    selection = getattr(predictor, "selection", None)
    return selection.engine.name if selection is not None else f"torch {predictor.precision}"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"


def run() -> str:
    from imgcls.engine.bundle import ModelMeta, save_bundle
    from imgcls.inference import Predictor, export_onnx
    from imgcls.inference.predictor import resolve_precision
    from imgcls.models import create_model

    torch.manual_seed(0)
    load_start = _load()
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        tmp = Path(tmp)
        # A fresh engine cache: the Predictor measures its engines here instead of reusing a remembered choice.
        os.environ["IMGCLS_INFERENCE_CACHE"] = str(tmp / "engine-cache")
        paths = _photos(tmp / "photos", IMAGES)
        model = create_model("resnet50", num_classes=1000).eval()
        meta = ModelMeta(
            name="resnet50",
            num_classes=1000,
            classes=[f"c{i}" for i in range(1000)],
            input_size=[3, 224, 224],
            mean=MEAN.ravel().tolist(),
            std=STD.ravel().tolist(),
            resize=256,
        )
        save_bundle(tmp / "run", model, meta)
        export_onnx(model, meta, tmp / "model.onnx")

        t0 = time.perf_counter()
        ours = Predictor.from_run(tmp / "run", batch_size=BATCH)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        Predictor.from_run(tmp / "run", batch_size=BATCH)  # the choice remembered: only the chosen engine is built
        warm_s = time.perf_counter() - t0
        graph = getattr(ours.runner, "graph", None)
        model_rows = _model_only(model, tmp / "model.onnx", graph)

        session = _plain_session(tmp / "model.onnx")  # built once, outside the timing, as the Predictor is
        ours.predict(paths[:BATCH], topk=1)  # warm-up
        _plain_pipeline(session, paths[:BATCH])
        seconds, results = _interleaved(
            {
                "plain": lambda: _plain_pipeline(session, paths),
                "ours": lambda: ours.predict(paths, topk=1),
            }
        )
        baseline_rate, ours_rate = IMAGES / seconds["plain"], IMAGES / seconds["ours"]
        baseline_top1 = results["plain"]
        ours_top1 = np.array([r.predictions[0].index for r in results["ours"]])
        agreement = float((ours_top1 == baseline_top1).mean() * 100)

        fp32 = Predictor.from_run(tmp / "run", batch_size=BATCH, engine="eager")  # PyTorch fp32 whatever was chosen
        fp32_top1 = np.array([r.predictions[0].index for r in fp32.predict(paths, topk=1)])
        fp32_agreement = float((fp32_top1 == baseline_top1).mean() * 100)

        single = {
            f"Predictor, torch {ours.precision}": Predictor.from_run(tmp / "run", batch_size=1),
            "Predictor, ONNX Runtime fp32": Predictor.from_run(tmp / "run", backend="onnx", batch_size=1),
        }
        for p in single.values():
            p.predict(paths[:1])
        times: dict[str, list[float]] = {label: [] for label in single}
        for path in paths[:12]:
            for label, p in single.items():
                t0 = time.perf_counter()
                p.predict([path], topk=5)
                times[label].append(time.perf_counter() - t0)
        latency_rows = [(label, statistics.median(t) * 1000) for label, t in times.items()]

        burst_n = 64
        rps, p50, p99 = _burst(ours, paths, burst_n)

    lines = [
        "## Inference (`imgcls predict`, `imgcls serve`)",
        "",
        f"ResNet-50 at 224 (seeded random weights, 1000 classes), {IMAGES} photo-like JPEGs of 320-640 px, "
        f"{torch.get_num_threads()} threads. Default torch precision here: `{resolve_precision('auto')}`; "
        f"building the `Predictor` (loading, and measuring its engines) took {build_s:.1f} s, a later load (the "
        f"choice remembered) {warm_s:.2f} s; it chose "
        f"{ours.selection.describe() if ours.selection is not None else 'its fixed runner'}.",
        f"Command: `.venv/bin/python -m benchmarks.run inference` (`IMGCLS_BENCH_IMAGES={IMAGES}`). "
        f"Load average at the start: {load_start}, at the end: {_load()}. Medians of {ROUNDS} alternating passes.",
        "",
        "Model only, batch 32:",
        "",
        "| engine | images/s | vs fp32 NCHW |",
        "|---|---:|---:|",
    ]
    base = model_rows[0][1]
    rates = dict(model_rows)
    frozen = next((r for label, r in model_rows if "frozen" in label), rates["torch fp32, NCHW"])
    frozen_vs_ort = frozen / rates["ONNX Runtime fp32"]
    lines += [f"| {label} | {rate:.1f} | {rate / base:.2f}x |" for label, rate in model_rows]
    lines += [
        "",
        "End to end on the folder (decode, resize, crop, normalise, network, top-k):",
        "",
        "| pipeline | images/s | speed-up | top-1 agreement with the fp32 baseline |",
        "|---|---:|---:|---:|",
        f"| plain PIL + NumPy + ONNX Runtime fp32 | {baseline_rate:.1f} | 1.00x | (reference) |",
        f"| `Predictor`, engine {_engine_name(ours)} (what `imgcls predict` runs) | {ours_rate:.1f} | "
        f"{ours_rate / baseline_rate:.2f}x | {agreement:.1f}% |",
        f"| `Predictor`, engine eager (PyTorch fp32; answers only, not timed) | | | {fp32_agreement:.1f}% |",
        "",
        "Top-1 agreement is measured on random weights, whose 1000 logits are nearly tied: a harsher test than a",
        "trained network with confident answers. The eager row checks the decode path with another network engine",
        "(JPEG draft mode engages only for photos whose shorter side exceeds twice the resize, 512 px, so not on",
        "this folder).",
        "",
        "`Predictor` decodes the next batch on threads while the network works on this one, where the plain "
        "pipeline decodes and then runs the network"
        + (f"; the frozen graph alone runs at {frozen_vs_ort:.2f}x ONNX Runtime fp32." if graph is not None else "."),
        "",
        "Batch-1 latency (median of 12 single-image calls, decode included):",
        "",
        "| engine | ms |",
        "|---|---:|",
        *[f"| {label} | {ms:.0f} |" for label, ms in latency_rows],
        "",
        f"Service: {burst_n} concurrent `POST /predict` requests on 127.0.0.1 (micro-batched, up to 32 per pass):",
        "",
        "| requests/s | p50 latency | p99 latency |",
        "|---:|---:|---:|",
        f"| {rps:.1f} | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
