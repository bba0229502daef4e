"""Shared fixtures. Tests that need the CIFAR-10 JPEG folders skip cleanly when the archive is absent."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

# OpenMP threads that spin while waiting turn small ops into a crawl when the cores are shared (measured: a LeNet
# training epoch 20x slower with two spinning threads on a loaded 2-core machine). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The Predictor keeps exported files and its measured engine choices in a cache: one per test session, never the
# user's (subprocess CLI runs inherit it).
os.environ.setdefault("IMGCLS_INFERENCE_CACHE", tempfile.mkdtemp(prefix="imgcls-test-inference-"))

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The CIFAR-10 JPEG archive described in DESIGN.md ("Data for benchmarks and tests").
CIFAR_TAR = Path(os.environ.get("IMGCLS_CIFAR10_JPG", REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"))


def pytest_configure(config):
    # Two cores: keep intra-op threads at the machine's size, and never oversubscribe.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cifar10_folder(tmp_path_factory) -> Path:
    """CIFAR-10 as `train/<class>/*.jpg` and `test/<class>/*.jpg`, unpacked once per session."""
    if not CIFAR_TAR.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {CIFAR_TAR} (set IMGCLS_CIFAR10_JPG)")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(CIFAR_TAR) as tar:
        tar.extractall(root, filter="data")
    entries = [p for p in root.iterdir() if p.is_dir()]
    return entries[0] if len(entries) == 1 and not (root / "train").is_dir() else root
