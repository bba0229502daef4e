"""Inference speed on a CPU: `imgcls predict` against a plain PIL + NumPy + ONNX Runtime fp32 pipeline.

Everything runs on the same ResNet-50 weights (randomly initialised, seeded: no network access is assumed) and
the same folder of JPEG photos in one process, side by side:

- model only, batch 32 at 224: fp32 NCHW, fp32 channels-last, bf16 autocast + channels-last, ONNX Runtime fp32;
- end to end on the folder: ``Predictor`` (decode on threads with JPEG draft mode, torch default precision)
  against the plain pipeline (PIL decode + resize + crop, NumPy normalisation, ONNX Runtime fp32, batch 32),
  and top-1 agreement between them;
- batch-1 latency (median of repeated single-image calls);
- the HTTP service under a burst of concurrent requests (requests/s, p50, p99).

Command: ``.venv/bin/python -m benchmarks.run inference`` (``IMGCLS_BENCH_IMAGES`` sets the folder size).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGES = int(os.environ.get("IMGCLS_BENCH_IMAGES", "256"))
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


def _plain_pipeline(onnx_file: Path, paths: list[Path]) -> np.ndarray:
    """The baseline: PIL decode, resize shorter side to 256, center crop 224, NumPy normalise, ORT fp32."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_file), sess_options=opts, providers=["CPUExecutionProvider"])
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


def _rate(fn, items: int, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return items / best, out


def _model_only(model, onnx_file: Path) -> list[tuple[str, float]]:
    import onnxruntime as ort

    x = torch.randn(BATCH, 3, 224, 224)
    rows = []
    with torch.inference_mode():
        for label, cl, bf16 in (
            ("torch fp32, NCHW", False, False),
            ("torch fp32, channels-last", True, False),
            ("torch bf16 autocast, channels-last", True, True),
        ):
            m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            xx = x.contiguous(memory_format=torch.channels_last) if cl else x

            def run(m=m, xx=xx, bf16=bf16):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return m(xx)

            run()  # warm-up: oneDNN builds its kernels on the first call
            rows.append((label, _rate(run, BATCH, repeat=2)[0]))
    model.to(memory_format=torch.contiguous_format)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    session.run(None, {"input": x.numpy()})
    rows.append(("ONNX Runtime fp32", _rate(lambda: session.run(None, {"input": x.numpy()}), BATCH, repeat=2)[0]))
    return rows


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


def run() -> str:
    from imgcls.engine.bundle import ModelMeta, save_bundle
    from imgcls.inference import Predictor, export_onnx
    from imgcls.inference.predictor import resolve_precision
    from imgcls.models import create_model

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        tmp = Path(tmp)
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

        model_rows = _model_only(model, tmp / "model.onnx")

        baseline_rate, baseline_top1 = _rate(lambda: _plain_pipeline(tmp / "model.onnx", paths), IMAGES)
        ours = Predictor.from_run(tmp / "run", batch_size=BATCH)
        ours.predict(paths[:BATCH], topk=1)  # warm-up
        ours_rate, results = _rate(lambda: ours.predict(paths, topk=1), IMAGES)
        ours_top1 = np.array([r.predictions[0].index for r in results])
        agreement = float((ours_top1 == baseline_top1).mean() * 100)

        fp32 = Predictor.from_run(tmp / "run", batch_size=BATCH, precision="fp32")
        fp32_top1 = np.array([r.predictions[0].index for r in fp32.predict(paths, topk=1)])
        fp32_agreement = float((fp32_top1 == baseline_top1).mean() * 100)

        latency_rows = []
        for label, p in (
            (f"Predictor, torch {ours.precision}", ours),
            ("Predictor, ONNX Runtime fp32", Predictor.from_run(tmp / "run", backend="onnx", batch_size=1)),
        ):
            p.predict(paths[:1])
            times = []
            for path in paths[:12]:
                t0 = time.perf_counter()
                p.predict([path], topk=5)
                times.append(time.perf_counter() - t0)
            latency_rows.append((label, statistics.median(times) * 1000))

        burst_n = 64
        rps, p50, p99 = _burst(ours, paths, burst_n)

    lines = [
        "## Inference (`imgcls predict`, `imgcls serve`)",
        "",
        f"ResNet-50 at 224 (seeded random weights, 1000 classes), {IMAGES} photo-like JPEGs of 320-640 px, "
        f"{torch.get_num_threads()} threads. Default torch precision here: `{resolve_precision('auto')}`.",
        f"Command: `.venv/bin/python -m benchmarks.run inference` (`IMGCLS_BENCH_IMAGES={IMAGES}`).",
        "",
        "Model only, batch 32:",
        "",
        "| engine | images/s | vs fp32 NCHW |",
        "|---|---:|---:|",
    ]
    base = model_rows[0][1]
    lines += [f"| {label} | {rate:.1f} | {rate / base:.2f}x |" for label, rate in model_rows]
    lines += [
        "",
        "End to end on the folder (decode, resize, crop, normalise, network, top-k):",
        "",
        "| pipeline | images/s | speed-up | top-1 agreement with the fp32 baseline |",
        "|---|---:|---:|---:|",
        f"| plain PIL + NumPy + ONNX Runtime fp32 | {baseline_rate:.1f} | 1.00x | (reference) |",
        f"| `Predictor` torch {ours.precision} (what `imgcls predict` runs) | {ours_rate:.1f} | "
        f"{ours_rate / baseline_rate:.2f}x | {agreement:.1f}% |",
        f"| `Predictor` torch fp32 | - | - | {fp32_agreement:.1f}% |",
        "",
        "Top-1 agreement is measured on random weights, whose 1000 logits are nearly tied: a harsher test than a",
        "trained network with confident answers. The fp32 row shows what the JPEG draft-mode decode alone changes.",
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
