"""Where the in-memory uint8 array lives: on the GPU once (resident), in pinned host memory, or on the CPU.

The resident path runs on the CPU too when forced, so its gather (chunked copy, indexing, channel conversion,
targets) is checked here against the plain host path; the GPU-marked tests check the CUDA placements.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgcls.data.loader import ArraySamples, BatchLoader
from imgcls.data.transforms import AugmentConfig, build_batch_transform


def _arrays(tmp_path, kind: str, channels: int = 3, n: int = 9000):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, channels, 8, 8), dtype=np.uint8)
    if kind == "non-contiguous":
        images = np.ascontiguousarray(images.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, F-order rows
    elif kind == "memmap":
        mm = np.lib.format.open_memmap(tmp_path / "cache.npy", mode="w+", dtype=np.uint8, shape=images.shape)
        mm[:] = images
        mm.flush()
        images = np.load(tmp_path / "cache.npy", mmap_mode="r")
    return images, rng.integers(0, 10, n)


@pytest.mark.parametrize("kind", ["contiguous", "non-contiguous", "memmap"])
@pytest.mark.parametrize(("channels", "in_chans"), [(3, 3), (3, 1), (1, 3)])
def test_resident_gather_equals_the_host_gather(tmp_path, kind, channels, in_chans):
    images, targets = _arrays(tmp_path, kind, channels)
    host = ArraySamples(images, targets, in_chans)
    resident = ArraySamples(images, targets, in_chans)
    assert host.place(torch.device("cpu")) == "host"
    assert resident.place(torch.device("cpu"), resident=True) == "device"  # 9,000 images: three 4,096 chunks
    index = np.array([8999, 0, 4096, 4095, 17, 8192])
    (xh, yh), (xr, yr) = host.gather(index), resident.gather(index)
    assert xr.shape == (6, in_chans, 8, 8) and torch.equal(xr, xh)
    assert torch.equal(yr, yh) and yr.tolist() == targets[index].tolist()


def test_resident_targets_keep_their_rows():
    images = np.zeros((4, 3, 2, 2), dtype=np.uint8)
    multi_hot = np.eye(4, dtype=np.float32)[[3, 2, 1, 0]]
    samples = ArraySamples(images, multi_hot, 3)
    samples.place(torch.device("cpu"), resident=True)
    assert samples.gather(np.array([1, 3]))[1].tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]


def test_a_cpu_loader_keeps_the_array_on_the_host():
    images, targets = _arrays(None, "contiguous", n=64)
    samples = ArraySamples(images, targets, 3)
    transform = build_batch_transform(AugmentConfig(), False, 8, [0.5] * 3, [0.25] * 3)
    BatchLoader(samples, batch_size=16, train=False, seed=0, transform=transform, device="cpu")
    assert samples.placement == "host"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("resident", [None, False])
def test_cuda_batches_equal_the_cpu_batches(resident):
    images, targets = _arrays(None, "contiguous", n=512)
    aug = AugmentConfig(crop_padding=2, hflip=0.5)
    batches = {}
    for device in ("cpu", "cuda"):
        samples = ArraySamples(images, targets, 3)
        transform = build_batch_transform(aug, True, 8, [0.5] * 3, [0.25] * 3)
        loader = BatchLoader(samples, batch_size=64, train=True, seed=3, transform=transform, device=device)
        if device == "cuda":
            assert samples.placement == "device"  # 98 KB: far under a quarter of the free GPU memory
            if resident is False:
                assert samples.place(torch.device("cuda"), resident=False) == "pinned"
                assert samples.gather(np.arange(4))[0].is_pinned()
        batches[device] = list(loader.iterate())
    assert len(batches["cpu"]) == len(batches["cuda"]) == 8
    for (xc, yc), (xg, yg) in zip(batches["cpu"], batches["cuda"]):
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)  # same crops and flips, same normalisation
        assert torch.equal(yg.cpu(), yc)
