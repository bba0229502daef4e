"""Data pipeline throughput: our loaders against a plain per-sample PIL + torch pipeline doing the same work.

(a) CIFAR-10 training batches from the uint8 cache: crop 32 with 4-pixel padding, horizontal flip, Cutout 16,
    normalisation. Baseline: per sample, PIL pad + crop + flip, to float tensor, normalise, Cutout, then stack.
(b) ImageNet-style batches from JPEG files (500×375, the typical ImageNet photo): decode, RandomResizedCrop 224,
    horizontal flip, colour jitter (brightness, contrast, saturation 0.4), normalisation. Both pipelines use
    the same number of DataLoader worker processes. Baseline: per sample, PIL decode + crop + resize + flip,
    to float tensor, jitter, normalise; batched by the default collate.

Data: the CIFAR-10 JPEG folders (``$IMGCLS_CIFAR10_JPG`` or ``../shared/datasets/cifar10-jpg.tar.gz``, as the
tests find them); the (b) photos are generated. Run: ``.venv/bin/python -m benchmarks.run data``.
"""

from __future__ import annotations

import os
import platform
import random
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = Path(os.environ.get("IMGCLS_CIFAR10_JPG", REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"))
COMMAND = ".venv/bin/python -m benchmarks.run data"
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _rate(fn, images: int, repeat: int = 3) -> float:
    fn()  # warm-up
    best = min(_timed(fn) for _ in range(repeat))
    return images / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _plain_cifar(images: np.ndarray, seed: int) -> torch.Tensor:
    from PIL import ImageOps

    rng = random.Random(seed)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    out = []
    for a in images:
        im = ImageOps.expand(Image.fromarray(a.transpose(1, 2, 0)), border=4, fill=0)
        top, left = rng.randint(0, 8), rng.randint(0, 8)
        im = im.crop((left, top, left + 32, top + 32))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div_(255)
        x = (x - mean) / std
        cy, cx = rng.randint(0, 31), rng.randint(0, 31)
        x[:, max(0, cy - 8) : cy + 8, max(0, cx - 8) : cx + 8] = 0
        out.append(x)
    return torch.stack(out)


def bench_cifar(root: Path, cache_dir: Path) -> tuple[float, float, int]:
    from imgcls.data import DataConfig, build_data
    from imgcls.data.transforms import AugmentConfig

    aug = AugmentConfig(crop_padding=4, hflip=0.5, cutout=16)
    data = build_data(
        root,
        DataConfig(batch_size=256, cache_dir=str(cache_dir)),
        aug,
        image_size=32,
        in_chans=3,
        seed=0,
        mean=list(MEAN),
        std=list(STD),
    )
    batches = 40
    ours = _rate(lambda: [x for _, (x, _) in zip(range(batches), data.train)], batches * 256)
    sample = np.asarray(data.train.samples.images[:2048])
    plain = _rate(lambda: _plain_cifar(sample, 0), len(sample))
    return ours, plain, data.train.num_samples


class _PlainImageNet(torch.utils.data.Dataset):
    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        import math

        rng = random.Random(i)
        im = Image.open(self.paths[i]).convert("RGB")
        w, h = im.size
        for _ in range(10):  # Szegedy et al. 2015 RandomResizedCrop, as torchvision samples it
            area = w * h * rng.uniform(0.08, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw, ch = min(w, h), min(w, h)
        top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
        im = im.resize((224, 224), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div_(255)
        b, c, s = (rng.uniform(0.6, 1.4) for _ in range(3))
        x = (x * b).clamp_(0, 1)
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
        x = ((x - gray) * c + gray).clamp_(0, 1)
        g = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = ((x - g) * s + g).clamp_(0, 1)
        mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
        return (x - mean) / std


def _photos(folder: Path, per_class: int = 64) -> list[str]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    paths = []
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fx, fy = rng.uniform(0.005, 0.05, 2)
            base = np.stack([np.sin(xx * fx + i), np.cos(yy * fy), np.sin((xx + yy) * fx * fy * 50)], -1)
            a = ((base + 1) * 100 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
            p = folder / c / f"{i:03d}.jpg"
            Image.fromarray(a).save(p, quality=90)
            paths.append(str(p))
    return paths


def bench_imagenet(folder: Path, workers: int) -> tuple[float, float, int]:
    from imgcls.data import DataConfig, build_data
    from imgcls.data.transforms import AugmentConfig

    paths = _photos(folder)
    aug = AugmentConfig(random_resized_crop=True, hflip=0.5, color_jitter=(0.4, 0.4, 0.4, 0.0))
    cfg = DataConfig(batch_size=32, cache="never", workers=workers, val_fraction=0.0)
    data = build_data(folder, cfg, aug, image_size=224, in_chans=3, seed=0)
    n = data.train.num_samples
    ours = _rate(lambda: [x for x, _ in data.train], len(data.train) * 32, repeat=2)
    plain_loader = torch.utils.data.DataLoader(
        _PlainImageNet(paths), batch_size=32, num_workers=workers, drop_last=True
    )
    plain = _rate(lambda: [x for x in plain_loader], len(plain_loader) * 32, repeat=2)
    return ours, plain, n


def run() -> str:
    # One intra-op thread: the plain pipelines are single-threaded per process, and on a shared 2-core machine
    # OpenMP spin-waiting under contention makes 2-thread timings swing by 10x or more.
    torch.set_num_threads(1)
    workers = max(1, min(2, os.cpu_count() or 1))
    lines = [
        "## Data pipeline",
        "",
        f"Command: `{COMMAND}` ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads).",
        "",
    ]
    lines += [
        "| pipeline | ours (images/s) | plain per-sample PIL + torch (images/s) | ratio | aim |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if CIFAR_TAR.is_file():
            with tarfile.open(CIFAR_TAR) as tar:
                tar.extractall(tmp / "cifar", filter="data")
            entries = [p for p in (tmp / "cifar").iterdir() if p.is_dir()]
            root = entries[0] if len(entries) == 1 and not (tmp / "cifar" / "train").is_dir() else tmp / "cifar"
            ours, plain, n = bench_cifar(root, tmp / "cache")
            lines.append(
                f"| (a) CIFAR-10 from cache ({n} images): pad-4 crop, flip, Cutout 16, batch 256 | {ours:,.0f} "
                f"| {plain:,.0f} | {ours / plain:.1f}× | ≥ 20× |"
            )
        else:
            lines.append(f"| (a) CIFAR-10 from cache | skipped: {CIFAR_TAR.name} not found | | | ≥ 20× |")
        ours, plain, n = bench_imagenet(tmp / "photos", workers)
        lines.append(
            f"| (b) {n} JPEG 500×375 → RandomResizedCrop 224, flip, jitter, batch 32, {workers} workers "
            f"| {ours:,.0f} | {plain:,.0f} | {ours / plain:.2f}× | ≥ 1.5× |"
        )
    lines += [
        "",
        "Best of 3 (a) or 2 (b) timed passes after a warm-up; both sides of a row run in the same process "
        "on the same images. The cache build itself (once per dataset) is not timed.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
