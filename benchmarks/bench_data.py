"""Data pipeline throughput: our loaders against a plain per-sample PIL + torch pipeline doing the same work.

(a) CIFAR-10 training batches from the uint8 cache: crop 32 with 4-pixel padding, horizontal flip, Cutout 16,
    normalisation, at the CIFAR recipe's batch of 128. Baseline: per sample, PIL pad + crop + flip, to float tensor,
    normalise, Cutout, then stack. Ours with one and with two intra-op threads (the baseline is single-threaded
    Python per sample either way).
(b) ImageNet-style batches from JPEG files (500×375, the typical ImageNet photo): decode, RandomResizedCrop 224,
    horizontal flip, colour jitter (brightness, contrast, saturation 0.4), normalisation. Both pipelines use
    the same number of DataLoader worker processes. Baseline: per sample, PIL decode + crop + resize + flip,
    to float tensor, jitter, normalise; batched by the default collate.

Both sides of a row are timed alternately (ours, plain, ours, plain, ...) in one process and the medians compared,
so that load from other processes on a shared machine falls on both alike. A breakdown measured the same way in
one process says where the time goes.

Data: the CIFAR-10 JPEG folders (``$IMGCLS_CIFAR10_JPG`` or ``../shared/datasets/cifar10-jpg.tar.gz``, as the
tests find them); the (b) photos are generated. Run: ``.venv/bin/python -m benchmarks.run data``.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
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


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _interleaved(sides: dict[str, tuple], rounds: int) -> dict[str, float]:
    """Images/s of each side, ``{name: (fn, images)}``: one warm-up each, then ``rounds`` alternating timed passes;
    the median pass of each side."""
    for fn, _ in sides.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, (fn, _) in sides.items():
            times[name].append(_timed(fn))
    return {name: sides[name][1] / statistics.median(t) for name, t in times.items()}


def _drain(batches) -> None:
    """Consume batches as a training loop does, each dropped before the next is made, so their memory is reused.

    Keeping every batch in a list instead times the kernel handing out fresh pages (one fault per 4 KiB, about
    2 µs each on a virtual machine): 3 of the 4 µs per CIFAR image of ours in a list, a few percent of the plain
    side."""
    for _ in batches:
        pass


def _settle_allocator() -> None:
    """Free one block larger than a batch first, as a training process has (activations) before its second batch.

    glibc raises its trim threshold to twice the largest mapped block it has freed; until then it hands freed batch
    memory back to the kernel after every batch and faults it in again (about 2 µs per 4 KiB on a virtual
    machine). Measured here without it: our CIFAR transform 40-60 % slower (about one fault per image), the plain
    side unchanged.
    """
    block = torch.empty(16 << 20, dtype=torch.uint8)  # under glibc's 32 MiB cap on the threshold
    del block


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"


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


def bench_cifar(root: Path, cache_dir: Path, batch_size: int = 128) -> tuple[list[str], int]:
    """Table rows for (a) and the number of training images."""
    from imgcls.data import DataConfig, build_data
    from imgcls.data.augment import AugmentConfig
    from imgcls.data.loader import generator

    aug = AugmentConfig(crop_padding=4, hflip=0.5, cutout=16)
    data = build_data(
        root,
        DataConfig(batch_size=batch_size, cache_dir=str(cache_dir)),
        aug,
        image_size=32,
        in_chans=3,
        seed=0,
        mean=list(MEAN),
        std=list(STD),
        require_val=False,
    )
    batches = 40
    sample = np.asarray(data.train.samples.images[:1024])
    order = data.train.order()
    index = [order[b * batch_size : (b + 1) * batch_size] for b in range(batches)]
    first = data.train.samples.gather(index[0])[0]
    starts = range(0, len(sample), batch_size)  # the plain side in batches too, as a DataLoader would collate them
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates = _interleaved(
            {
                "ours": (lambda: _drain(x for _, (x, _) in zip(range(batches), data.train)), batches * batch_size),
                "plain": (lambda: _drain(_plain_cifar(sample[i : i + batch_size], i) for i in starts), len(sample)),
                "gather": (lambda: _drain(data.train.samples.gather(i) for i in index), batches * batch_size),
                "transform": (
                    lambda: _drain(data.train.transform(first, generator(0, 0, b, 0, 1)) for b in range(batches)),
                    batches * batch_size,
                ),
            },
            rounds=7,
        )
        rows.append(
            f"| (a) CIFAR-10 from cache: pad-4 crop, flip, Cutout 16, batch {batch_size}, {threads} thread"
            f"{'s' if threads > 1 else ''} | {rates['ours']:,.0f} | {rates['plain']:,.0f} "
            f"| {rates['ours'] / rates['plain']:.1f}× | ≥ 20× |"
        )
        rows.append(
            f"|   of which: gather from the memory-mapped cache {1e6 / rates['gather']:.1f} µs/image, batch "
            f"transform {1e6 / rates['transform']:.1f} µs/image; plain {1e6 / rates['plain']:.0f} µs/image | | | | |"
        )
    torch.set_num_threads(1)
    return rows, data.train.num_samples


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


def _photos(folder: Path, per_class: int = 128) -> list[str]:
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


def bench_imagenet(folder: Path, workers: int) -> tuple[list[str], int]:
    """Table rows for (b) and the number of photos."""
    from imgcls.data import DataConfig, build_data
    from imgcls.data.augment import AugmentConfig
    from imgcls.data.loader import generator

    # 1,024 photos: each timed pass starts its DataLoader workers anew (both sides alike), and with a few hundred
    # images that start-up weighs far more than in a real epoch of thousands of batches.
    paths = _photos(folder, per_class=512)
    aug = AugmentConfig(random_resized_crop=True, hflip=0.5, color_jitter=(0.4, 0.4, 0.4, 0.0))
    cfg = DataConfig(batch_size=32, cache="never", workers=workers, val_fraction=0.0)
    data = build_data(folder, cfg, aug, image_size=224, in_chans=3, seed=0, require_val=False)
    n = data.train.num_samples
    plain_loader = torch.utils.data.DataLoader(
        _PlainImageNet(paths), batch_size=32, num_workers=workers, drop_last=True
    )
    rates = _interleaved(
        {
            "ours": (lambda: _drain(x for x, _ in data.train), len(data.train) * 32),
            "plain": (lambda: _drain(plain_loader), len(plain_loader) * 32),
        },
        rounds=3,
    )
    rows = [
        f"| (b) {n} JPEG 500×375 → RandomResizedCrop 224, flip, jitter, batch 32, {workers} workers "
        f"| {rates['ours']:,.0f} | {rates['plain']:,.0f} | {rates['ours'] / rates['plain']:.2f}× | ≥ 1.5× |"
    ]
    # Where the time goes, per image in this process: our per-file decode + crop (the loader's worker code), our
    # batch transform (flip, jitter, normalisation), and the plain per-sample function with its decode + resize.
    samples, plain = data.train.samples, _PlainImageNet(paths)
    batch = torch.stack([samples.load(i, i) for i in range(32)])
    transform = data.train.transform

    def plain_decode() -> None:
        for p in paths[:32]:
            with Image.open(p) as im:
                im.convert("RGB").resize((224, 224), Image.BILINEAR, box=(50, 40, 350, 340))

    parts = _interleaved(
        {
            "load": (lambda: _drain(samples.load(i, i) for i in range(32)), 32),
            "transform": (lambda: transform(batch, generator(0, 0, 0, 0, 1)), 32),
            "plain": (lambda: _drain(plain[i] for i in range(32)), 32),
            "plain_decode": (plain_decode, 32),
        },
        rounds=5,
    )
    rows.append(
        f"|   of which, per image in one process: our decode + crop {1e3 / parts['load']:.2f} ms, batch transform "
        f"{1e3 / parts['transform']:.2f} ms; plain {1e3 / parts['plain']:.2f} ms, of which decode + resize of a "
        f"300-px box {1e3 / parts['plain_decode']:.2f} ms | | | | |"
    )
    return rows, n


def run() -> str:
    # One intra-op thread unless a row says otherwise: the plain pipelines are single-threaded per process, and on
    # a shared 2-core machine OpenMP spin-waiting under contention makes 2-thread timings swing widely.
    torch.set_num_threads(1)
    _settle_allocator()
    workers = max(1, min(2, os.cpu_count() or 1))
    lines = [
        "## Data pipeline",
        "",
        f"Command: `{COMMAND}` ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}). Load average at the start: {_load()}.",
        "",
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
            rows, _ = bench_cifar(root, tmp / "cache")
            lines += rows
        else:
            lines.append(f"| (a) CIFAR-10 from cache | skipped: {CIFAR_TAR.name} not found | | | ≥ 20× |")
        rows, _ = bench_imagenet(tmp / "photos", workers)
        lines += rows
    lines += [
        "",
        f"Medians of 7 (a) or 3 (b) alternating timed passes after a warm-up; both sides of a row run in the same "
        f"process on the same images, each batch dropped before the next as in training, after one 16 MiB block "
        f"was freed (glibc then keeps freed batches for reuse, as in a training process). The cache build itself "
        f"(once per dataset) is not timed. Load average at the end: {_load()}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
