"""Download the built-in datasets once into the user cache, verified, resumable, and parse them to arrays.

* Cache: ``$IMGCLS_DATA`` or ``~/.cache/imgcls/data`` (`imgcls.data.config.data_home`), one folder per set.
* Integrity: every file is checked against its published SHA-256 and byte count. The figures are those of
  TensorFlow Datasets' ``url_checksums`` (its files ``cifar10.txt``, ``cifar100.txt``, ``mnist.txt``,
  ``fashion_mnist.txt``), which hold SHA-256 for exactly these archives. The original pages publish only MD5
  (CIFAR, Fashion-MNIST) or nothing (MNIST); SHA-256 is what we verify.
* CIFAR is fetched in its *binary* version (fixed-size records) rather than the Python pickles: unpickling a
  downloaded file can run arbitrary code, reading fixed records cannot.
* Transfers go through `imgcls._files.download`: resumed with an HTTP ``Range`` request from the ``.part`` file
  (a server that ignores ``Range`` gets a clean restart); a checksum mismatch deletes the partial file and is a
  `UserError`.
* Mirrors: ``DataConfig.mirror`` or ``$IMGCLS_DATA_MIRROR`` replaces the base URL (the file names stay).
* After verification each set is parsed once to ``.npy`` arrays, memory-mapped on every later run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls._files import FileLock, atomic_open, atomic_write_text, download
from imgcls.data.config import data_home
from imgcls.errors import UserError

log = logging.getLogger("imgcls.data")

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RemoteFile:
    """One published file: name under the base URL, SHA-256 and size in bytes."""

    name: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class RemoteDataset:
    """Where a built-in set lives and which files make it."""

    base_url: str
    files: tuple[RemoteFile, ...]


# SHA-256 and sizes from TensorFlow Datasets' url_checksums (see module docstring).
REMOTE: dict[str, RemoteDataset] = {
    "cifar10": RemoteDataset(
        "https://www.cs.toronto.edu/~kriz/",
        (
            RemoteFile(
                "cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170052171
            ),
        ),
    ),
    "cifar100": RemoteDataset(
        "https://www.cs.toronto.edu/~kriz/",
        (
            RemoteFile(
                "cifar-100-binary.tar.gz", "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec", 168513733
            ),
        ),
    ),
    "mnist": RemoteDataset(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        (
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                9912422,
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542
            ),
        ),
    ),
    "fashion-mnist": RemoteDataset(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        (
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                26421880,
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148
            ),
        ),
    ),
}

MNIST_CLASSES = [str(i) for i in range(10)]
# Xiao et al. 2017, Fashion-MNIST, Table 1 (label descriptions).
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class BuiltinArrays:
    """A parsed built-in set: uint8 ``(N, C, H, W)`` images (memory-mapped) and int64 targets."""

    classes: list[str]
    train_images: np.ndarray
    train_targets: np.ndarray
    test_images: np.ndarray
    test_targets: np.ndarray


def fetch(name: str, root: Path, remote: RemoteDataset, mirror: str | None = None) -> dict[str, Path]:
    """Download every file of `remote` into `root` and return ``{file name: path}``."""
    base = mirror or os.environ.get("IMGCLS_DATA_MIRROR") or remote.base_url
    paths = {}
    for rf in remote.files:
        url = base.rstrip("/") + "/" + rf.name
        log.info("%s: fetching %s", name, url)
        paths[rf.name] = download(url, root / rf.name, rf.sha256, rf.size)
    return paths


def _read_member(tar: tarfile.TarFile, suffix: str) -> bytes:
    for member in tar.getmembers():
        if member.isfile() and member.name.endswith(suffix):
            f = tar.extractfile(member)
            assert f is not None
            return f.read()
    raise UserError(f"{tar.name}: archive has no member ending in {suffix} (not the CIFAR binary version?)")


def _records(raw: bytes, label_bytes: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    # Each record: label byte(s) then 3072 bytes (1024 R, 1024 G, 1024 B, row-major): Krizhevsky's format.
    width = label_bytes + 3 * 32 * 32
    if len(raw) % width:
        raise UserError(f"{where}: size {len(raw)} is not a whole number of {width}-byte CIFAR records")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)
    return rec[:, label_bytes:].reshape(-1, 3, 32, 32), rec[:, :label_bytes].astype(np.int64)


def _names(raw: bytes) -> list[str]:
    return [line.strip() for line in raw.decode().splitlines() if line.strip()]


def parse_cifar10(archive: Path) -> dict[str, np.ndarray | list[str]]:
    with tarfile.open(archive) as tar:
        train = [_records(_read_member(tar, f"data_batch_{i}.bin"), 1, str(archive)) for i in range(1, 6)]
        test = _records(_read_member(tar, "test_batch.bin"), 1, str(archive))
        classes = _names(_read_member(tar, "batches.meta.txt"))
    return {
        "train_images": np.concatenate([x for x, _ in train]),
        "train_labels": np.concatenate([y[:, 0] for _, y in train]),
        "test_images": test[0],
        "test_labels": test[1][:, 0],
        "classes": classes,
    }


def parse_cifar100(archive: Path) -> dict[str, np.ndarray | list[str]]:
    with tarfile.open(archive) as tar:
        train = _records(_read_member(tar, "train.bin"), 2, str(archive))
        test = _records(_read_member(tar, "test.bin"), 2, str(archive))
        fine = _names(_read_member(tar, "fine_label_names.txt"))
        coarse = _names(_read_member(tar, "coarse_label_names.txt"))
    # Label bytes are (coarse, fine): CIFAR-100 binary format.
    return {
        "train_images": train[0],
        "train_labels": train[1][:, 1],
        "train_coarse": train[1][:, 0],
        "test_images": test[0],
        "test_labels": test[1][:, 1],
        "test_coarse": test[1][:, 0],
        "classes": fine,
        "coarse_classes": coarse,
    }


def _idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (LeCun et al.'s MNIST format): big-endian magic, dimensions, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    header = np.frombuffer(raw[:4], dtype=">i4")[0]
    if header != magic:
        raise UserError(f"{path}: not an IDX file of the expected kind (magic {header}, expected {magic})")
    ndim = magic & 0xFF
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">i4").astype(np.int64)
    data = np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: holds {data.size} bytes of data, header says {tuple(dims)}")
    return data.reshape(tuple(dims))


def parse_mnist(files: dict[str, Path], classes: list[str]) -> dict[str, np.ndarray | list[str]]:
    return {
        "train_images": _idx(files["train-images-idx3-ubyte.gz"], 2051)[:, None],
        "train_labels": _idx(files["train-labels-idx1-ubyte.gz"], 2049).astype(np.int64),
        "test_images": _idx(files["t10k-images-idx3-ubyte.gz"], 2051)[:, None],
        "test_labels": _idx(files["t10k-labels-idx1-ubyte.gz"], 2049).astype(np.int64),
        "classes": classes,
    }


def _parse(name: str, files: dict[str, Path]) -> dict:
    if name == "cifar10":
        return parse_cifar10(next(iter(files.values())))
    if name == "cifar100":
        return parse_cifar100(next(iter(files.values())))
    return parse_mnist(files, MNIST_CLASSES if name == "mnist" else FASHION_CLASSES)


def _read_meta(path: Path) -> dict:
    """The arrays' record, or ``{}`` when missing or unreadable (then the arrays are prepared again)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def load_builtin(
    name: str, *, mirror: str | None = None, root: Path | None = None, remote: RemoteDataset | None = None
) -> BuiltinArrays:
    """Download (first use), verify, parse and memory-map a built-in set.

    Args:
        name: ``cifar10``, ``cifar100``, ``cifar100:coarse``, ``mnist`` or ``fashion-mnist``.
        mirror: base URL replacing the official one.
        root: data cache (default `data_home`).
        remote: file table replacing `REMOTE` (tests serve small archives with their own checksums).

    Returns:
        The arrays; the official test split is returned as ``test_*``.
    """
    base_name, _, variant = name.partition(":")
    if base_name not in REMOTE or (variant and (base_name, variant) != ("cifar100", "coarse")):
        raise UserError(f"--data {name}: unknown built-in set (known: {', '.join(REMOTE)}, cifar100:coarse)")
    remote = remote or REMOTE[base_name]
    folder = Path(root or data_home()) / base_name
    ready = folder / "arrays.json"
    digest = hashlib.sha256("".join(f.sha256 for f in remote.files).encode()).hexdigest()
    with FileLock(folder / "arrays.lock", f"preparing the {base_name} arrays"):
        meta = _read_meta(ready)
        if meta.get("version") != FORMAT_VERSION or meta.get("sources") != digest:
            files = fetch(base_name, folder / "downloads", remote, mirror)
            parsed = _parse(base_name, files)
            for key, value in parsed.items():
                if isinstance(value, np.ndarray):
                    with atomic_open(folder / f"{key}.npy", "wb") as f:
                        np.save(f, np.ascontiguousarray(value))
            meta = {k: v for k, v in parsed.items() if isinstance(v, list)}
            meta.update(version=FORMAT_VERSION, sources=digest)
            atomic_write_text(ready, json.dumps(meta))
            shutil.rmtree(folder / "downloads", ignore_errors=True)  # the parsed arrays are all we read again

    def arr(key: str) -> np.ndarray:
        return np.load(folder / f"{key}.npy", mmap_mode="r")

    coarse = variant == "coarse"
    return BuiltinArrays(
        classes=meta["coarse_classes" if coarse else "classes"],
        train_images=arr("train_images"),
        train_targets=np.asarray(arr("train_coarse" if coarse else "train_labels"), dtype=np.int64),
        test_images=arr("test_images"),
        test_targets=np.asarray(arr("test_coarse" if coarse else "test_labels"), dtype=np.int64),
    )


__all__ = ["REMOTE", "BuiltinArrays", "RemoteDataset", "RemoteFile", "download", "fetch", "load_builtin"]
