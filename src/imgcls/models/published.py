"""Published weights files: which ones each model can load, where they are looked for, fetching and checking them.

``create_model(name, weights="torchvision")`` (or ``"timm"``, or ``"torchvision:v1"`` for an older file) reads the
file listed in :data:`PUBLISHED` for `name`. It is looked for, in this order (:func:`search_paths`):

1. ``$IMGCLS_WEIGHTS_DIR/<file>``, default ``~/.cache/imgcls/weights/<file>`` (``$IMGCLS_CACHE``, the older name
   of the variable, is still read) -- where downloads go, and where to put a file copied from another machine;
2. torchvision's own download cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (default
   ``~/.cache/torch/hub/checkpoints``), for torchvision files;
3. the Hugging Face hub cache, ``$HF_HUB_CACHE`` or ``$HF_HOME/hub`` (default ``~/.cache/huggingface/hub``), for
   timm files (``models--timm--<id>/snapshots/*/model.safetensors``).

``<file>`` is the name the file is published under: torchvision's (``resnet50-11ad3fa6.pth``), or for timm the hub
id with ``.safetensors`` (``inception_v4.tf_in1k.safetensors``; the hub calls every file ``model.safetensors``).
A file found is checked against the SHA-256 listed here before use; one that does not match is refused, never
replaced silently. When no copy is found, the file is downloaded into the first folder (``imgcls._files.download``:
resumable, verified before it is renamed into place); offline, the error says which file to put where.

SHA-256: torchvision publishes the first 8 hex digits in each file name (what torchvision itself checks); for the
timm files whose full digest is listed on the hub page it is pinned here. Where none is listed (``""``), the digest
is recorded beside the file on its first download (``<file>.sha256``) and checked from then on.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from imgcls._files import atomic_write_text, digest_matches, download, sha256_file
from imgcls.errors import UserError

log = logging.getLogger("imgcls")

TORCHVISION_URL = "https://download.pytorch.org/models/"
TIMM_URL = "https://huggingface.co/timm/"
WEIGHTS_DIR_ENV = "IMGCLS_WEIGHTS_DIR"
OLD_WEIGHTS_DIR_ENV = "IMGCLS_CACHE"  # the variable's name before IMGCLS_WEIGHTS_DIR; still honoured
URL_ENV = "IMGCLS_WEIGHTS_URL"  # replaces the base URL of every source (a mirror, or a local server in tests)
SOURCES = ("torchvision", "timm")


@dataclass(frozen=True)
class PublishedFile:
    """One published weights file.

    Attributes:
        path: location relative to its source's base URL.
        file_name: the name of the local copy (see the module docstring).
        sha256: the full published SHA-256, or its first hex digits (torchvision's file names carry 8), or ``""``
            when none is published (recorded on first download).
        crop_pct: the share of the resized image its publisher's evaluation center crop keeps (224 of 232 for
            torchvision's "V2" recipes, 224 of 256 for the older ones).
    """

    path: str
    file_name: str
    sha256: str
    crop_pct: float = 0.875


def _tv(file: str, crop_pct: float = 0.875) -> PublishedFile:
    # torchvision names its files <arch>-<first 8 hex digits of the SHA-256>.pth
    prefix = re.search(r"-([0-9a-f]{8,})\.", file)
    return PublishedFile(file, file, prefix.group(1) if prefix else "", crop_pct)


def _timm(hub_id: str, sha256: str = "", crop_pct: float = 0.875) -> PublishedFile:
    return PublishedFile(f"{hub_id}/resolve/main/model.safetensors", f"{hub_id}.safetensors", sha256, crop_pct)


_V2 = 224 / 232  # torchvision's IMAGENET1K_V2 recipes evaluate a 224 crop of a 232 resize

# torchvision's DEFAULT weights per architecture ("v1": its IMAGENET1K_V1 where a newer recipe replaced them), with
# the evaluation crop of each file's documentation; timm's default pretrained tag and its `crop_pct`.
PUBLISHED: dict[str, dict[str, PublishedFile]] = {
    "torchvision": {
        "vgg11": _tv("vgg11-8a719046.pth"),
        "vgg11_bn": _tv("vgg11_bn-6002323d.pth"),
        "vgg13": _tv("vgg13-19584684.pth"),
        "vgg13_bn": _tv("vgg13_bn-abd245e5.pth"),
        "vgg16": _tv("vgg16-397923af.pth"),
        "vgg16_bn": _tv("vgg16_bn-6c64b313.pth"),
        "vgg19": _tv("vgg19-dcbb9e9d.pth"),
        "vgg19_bn": _tv("vgg19_bn-c79401a0.pth"),
        "resnet18": _tv("resnet18-f37072fd.pth"),
        "resnet34": _tv("resnet34-b627a593.pth"),
        "resnet50": _tv("resnet50-11ad3fa6.pth", _V2),
        "resnet50:v1": _tv("resnet50-0676ba61.pth"),
        "resnet101": _tv("resnet101-cd907fc2.pth", _V2),
        "resnet101:v1": _tv("resnet101-63fe2227.pth"),
        "resnet152": _tv("resnet152-f82ba261.pth", _V2),
        "resnet152:v1": _tv("resnet152-394f9c45.pth"),
        "resnext50_32x4d": _tv("resnext50_32x4d-1a0047aa.pth", _V2),
        "resnext50_32x4d:v1": _tv("resnext50_32x4d-7cdf4587.pth"),
        "resnext101_32x8d": _tv("resnext101_32x8d-110c445d.pth", _V2),
        "resnext101_32x8d:v1": _tv("resnext101_32x8d-8ba56ff5.pth"),
        "densenet121": _tv("densenet121-a639ec97.pth"),
        "densenet169": _tv("densenet169-b2777c0a.pth"),
        "densenet201": _tv("densenet201-c1103571.pth"),
        # Google's weights expect inputs scaled to [-1, 1] (mean = std = 0.5); evaluated as a 299 crop of 342.
        "inception_v3": _tv("inception_v3_google-0cc3c7bd.pth", 299 / 342),
        "mobilenet_v2": _tv("mobilenet_v2-7ebf99e0.pth", _V2),
        "mobilenet_v2:v1": _tv("mobilenet_v2-b0353104.pth"),
        "mobilenet_v3_large": _tv("mobilenet_v3_large-5c1a4163.pth", _V2),
        "mobilenet_v3_large:v1": _tv("mobilenet_v3_large-8738ca79.pth"),
        "mobilenet_v3_small": _tv("mobilenet_v3_small-047dcff4.pth"),
        # Ross Wightman's port of the paper's weights; evaluated with bicubic resizing (224 of 256).
        "efficientnet_b0": _tv("efficientnet_b0_rwightman-7f5810bc.pth"),
        "regnet_x_400mf": _tv("regnet_x_400mf-62229a5f.pth", _V2),
        "regnet_x_400mf:v1": _tv("regnet_x_400mf-adf1edd5.pth"),
        "regnet_x_800mf": _tv("regnet_x_800mf-94a99ebd.pth", _V2),
        "regnet_x_800mf:v1": _tv("regnet_x_800mf-ad17e45c.pth"),
        "regnet_y_400mf": _tv("regnet_y_400mf-e6988f5f.pth", _V2),
        "regnet_y_400mf:v1": _tv("regnet_y_400mf-c65dace8.pth"),
        "regnet_y_800mf": _tv("regnet_y_800mf-58fc7688.pth", _V2),
        "regnet_y_800mf:v1": _tv("regnet_y_800mf-1b27b58c.pth"),
    },
    "timm": {
        "inception_v4": _timm(
            "inception_v4.tf_in1k", "a756a086851c8d5a8de135ec15c76b90ea56cb5aef450e3299107e659e725bb1"
        ),
        "inception_resnet_v2": _timm(
            "inception_resnet_v2.tf_in1k", "dbea26b13a5fc8351919fed6a94222c0577ce324b2765fd081a798f837ca9d72", 0.8975
        ),
        "dpn92": _timm("dpn92.mx_in1k"),
        # Trained at 176 px (timm's `input_size`), evaluated there with a 0.875 crop.
        "resnet10t": _timm("resnet10t.c3_in1k"),
    },
}
_BASE_URLS = {"torchvision": TORCHVISION_URL, "timm": TIMM_URL}

# Names under which a user may expect a published file that does not fit: why not, in one clause.
UNFIT = {
    "alexnet": "torchvision's alexnet file is its one-tower variant (64-192-384-256-256 filters, no LRN), not "
    "the paper's two-group network",
    "googlenet": "torchvision's googlenet file is its batch-norm variant without LRN, not the 2014 network",
}


def weights_dir() -> Path:
    """Where downloads go and copies are looked for first: ``$IMGCLS_WEIGHTS_DIR``, else ``~/.cache/imgcls/weights``."""
    env = os.environ.get(WEIGHTS_DIR_ENV) or os.environ.get(OLD_WEIGHTS_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imgcls" / "weights"


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def _torch_hub_checkpoints() -> Path:
    return Path(os.environ.get("TORCH_HOME") or _cache_home() / "torch") / "hub" / "checkpoints"


def _hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or _cache_home() / "huggingface") / "hub"


def _split(source: str) -> tuple[str, str]:
    library, _, tag = source.partition(":")
    if library not in PUBLISHED:
        raise UserError(f"unknown weights source: {source} (use a file path, torchvision or timm)")
    return library, tag


def published_file(name: str, source: str) -> PublishedFile:
    """The published file of model `name` from `source` (``"torchvision"``, ``"torchvision:v1"``, ``"timm"``).

    Raises:
        UserError: unknown source, or no such file for `name`; the message says what imgcls can load instead.
    """
    library, tag = _split(source)
    key = f"{name}:{tag}" if tag else name
    if key in PUBLISHED[library]:
        return PUBLISHED[library][key]
    others = [f"{src} ({f.file_name})" for m, src, f in published_files() if m == name]
    if others:
        raise UserError(
            f"imgcls lists no {source} weights for {name}; it can load {', '.join(others)}, a file of yours "
            "(--weights FILE) or none (--weights none)"
        )
    why = f" ({UNFIT[name]})" if name in UNFIT else ""
    raise UserError(
        f"imgcls lists no published weights for {name}{why}; give a file of this architecture (--weights FILE) or "
        "train from scratch (--weights none); `imgcls weights list` shows the files it knows"
    )


def published_files(pattern: str = "*") -> list[tuple[str, str, PublishedFile]]:
    """Every listed file of the models matching `pattern`: ``(model, source, file)``, by model, then torchvision
    before timm and a library's default file before its tagged ones."""
    rows = []
    for library, table in PUBLISHED.items():
        for key, entry in table.items():
            model, _, tag = key.partition(":")
            if fnmatch.fnmatch(model, pattern):
                rows.append((model, f"{library}:{tag}" if tag else library, entry))
    order = list(PUBLISHED)  # torchvision first; a library's default file before its tagged ones
    return sorted(rows, key=lambda r: (r[0], order.index(r[1].partition(":")[0]), ":" in r[1], r[1]))


def default_crop_pct(name: str) -> float | None:
    """The eval crop of the first listed file of `name` (the one ``imgcls weights path NAME`` means), else None."""
    rows = [entry for model, _, entry in published_files(name) if model == name]
    return rows[0].crop_pct if rows else None


def search_paths(name: str, source: str) -> list[Path]:
    """Where the published file of `name` from `source` is looked for, in order (module docstring)."""
    library, _ = _split(source)
    entry = published_file(name, source)
    paths = [weights_dir() / entry.file_name]
    if library == "torchvision":
        paths.append(_torch_hub_checkpoints() / entry.file_name)
    else:
        hub_id = entry.file_name.removesuffix(".safetensors")
        paths.extend(sorted((_hf_hub_cache() / f"models--timm--{hub_id}" / "snapshots").glob("*/model.safetensors")))
    return paths


def expected_sha256(path: Path, entry: PublishedFile) -> str:
    """The digest `path` must have: the listed one, else the one recorded beside it on download ("" if none)."""
    if entry.sha256:
        return entry.sha256
    record = path.with_name(path.name + ".sha256")
    return record.read_text().strip() if record.is_file() else ""


def check_file(path: Path, entry: PublishedFile) -> str:
    """SHA-256 of `path`, after checking it against `entry`; a mismatch is a UserError that names the file."""
    digest = sha256_file(path)
    expected = expected_sha256(path, entry)
    if expected and not digest_matches(digest, expected):
        raise UserError(
            f"{path}: SHA-256 {digest} does not match the published {expected}; file refused (delete it, or put "
            f"the real {entry.file_name} there)"
        )
    return digest


def find_local(name: str, source: str) -> Path | None:
    """The first copy of the published file found in :func:`search_paths`, checked; None when there is none."""
    entry = published_file(name, source)
    for path in search_paths(name, source):
        if path.is_file():
            check_file(path, entry)
            return path
    return None


def fetch_published(
    name: str, source: str, base_url: str | None = None, cache: str | os.PathLike | None = None, timeout: float = 60.0
) -> Path:
    """The local path of the published weights of `name`: a checked copy found on disk, else downloaded once.

    Args:
        name: model name, e.g. ``"resnet50"``.
        source: ``"torchvision"``, ``"torchvision:v1"`` or ``"timm"``.
        base_url: replaces the source's base URL (else ``$IMGCLS_WEIGHTS_URL``, else the library's own).
        cache: the folder to look in first and download into (else :func:`weights_dir`).
        timeout: seconds without data before a transfer attempt is abandoned.
    """
    entry = published_file(name, source)
    folder = Path(cache) if cache is not None else weights_dir()
    found = find_local(name, source) if cache is None else None
    target = folder / entry.file_name
    if found is None and target.is_file():
        check_file(target, entry)
        found = target
    if found is not None:
        return found
    url = download_url(name, source, base_url)
    try:
        download(url, target, sha256=entry.sha256 or None, timeout=timeout)
    except UserError as exc:
        raise UserError(
            f"{exc}; to work offline, put {entry.file_name} into {folder} (or set ${WEIGHTS_DIR_ENV}), or give a "
            "file with --weights FILE, or train from scratch with --weights none"
        ) from None
    if not entry.sha256:
        atomic_write_text(target.with_name(target.name + ".sha256"), sha256_file(target) + "\n")
    log.info("downloaded %s to %s", url, target)
    return target


def download_url(name: str, source: str, base_url: str | None = None) -> str:
    """Where the published file of `name` is downloaded from (`base_url`, else ``$IMGCLS_WEIGHTS_URL``, else the
    library's own address)."""
    base = base_url or os.environ.get(URL_ENV) or _BASE_URLS[_split(source)[0]]
    return base.rstrip("/") + "/" + published_file(name, source).path


def identify(path: str | os.PathLike) -> tuple[str, str, PublishedFile] | None:
    """Which listed file the file at `path` is, by its name and then by its SHA-256: ``(model, source, file)``,
    or None when it is none of them.

    Raises:
        UserError: the name is that of a listed file but the content is not (the digests are in the message).
    """
    path = Path(path)
    rows = published_files()
    by_name = [r for r in rows if r[2].file_name == path.name]
    if by_name:
        check_file(path, by_name[0][2])
        return by_name[0]
    digest = sha256_file(path)
    return next((r for r in rows if r[2].sha256 and digest_matches(digest, r[2].sha256)), None)


@dataclass(frozen=True)
class CopyCheck:
    """The state of one listed file on this machine (see :func:`check_copies`)."""

    model: str
    source: str
    file: PublishedFile
    path: Path | None  # the copy found, else None
    status: str  # "ok", "unpinned" (no digest to compare with), "missing" or "mismatch"
    detail: str  # the digest, or for a mismatch the one-line reason


def check_copies(pattern: str = "*", *, found_only: bool = False) -> list[CopyCheck]:
    """Check the copies on disk of the listed files of the models matching `pattern` against their SHA-256.

    Args:
        pattern: fnmatch pattern over model names.
        found_only: leave out the files that have no copy on disk.
    """
    out = []
    for model, source, entry in published_files(pattern):
        path = next((p for p in search_paths(model, source) if p.is_file()), None)
        if path is None:
            if not found_only:
                out.append(CopyCheck(model, source, entry, None, "missing", ""))
            continue
        try:
            digest = check_file(path, entry)
        except UserError as exc:
            out.append(CopyCheck(model, source, entry, path, "mismatch", str(exc)))
            continue
        out.append(CopyCheck(model, source, entry, path, "ok" if expected_sha256(path, entry) else "unpinned", digest))
    return out


__all__ = [
    "PUBLISHED",
    "SOURCES",
    "URL_ENV",
    "WEIGHTS_DIR_ENV",
    "CopyCheck",
    "PublishedFile",
    "check_copies",
    "check_file",
    "default_crop_pct",
    "download_url",
    "expected_sha256",
    "fetch_published",
    "find_local",
    "identify",
    "published_file",
    "published_files",
    "search_paths",
    "weights_dir",
]
