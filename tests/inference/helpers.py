"""Helpers shared by the inference, serve and CLI tests: real run folders (tiny models, real weights) and real
image files. Test folders load this file by path (see `load_helpers` in their conftest) and expose it as fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgcls.engine.bundle import ModelMeta, save_bundle
from imgcls.models import create_model, list_models, model_entry

# 32x32 and ~60k parameters: fast enough for every test. (resnet18_cifar until lenet5 registers.)
TINY = "lenet5" if "lenet5" in list_models() else "resnet18_cifar"


def write_run(
    folder: Path,
    name: str = TINY,
    num_classes: int = 5,
    in_chans: int = 3,
    size: int | None = None,
    resize: int | None = None,
    task: str = "multiclass",
    seed: int = 0,
) -> Path:
    """A run folder as the engine writes it, for a freshly initialised model with spread-out logits."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans).eval()
    with torch.no_grad():
        # Random heads give nearly uniform probabilities; a larger scale gives distinct, image-dependent top-k.
        model.get_classifier().weight.mul_(8.0)
    entry = model_entry(name)
    size = size or entry.input_size[1]
    meta = ModelMeta(
        name=name,
        num_classes=num_classes,
        classes=[f"class_{i}" for i in range(num_classes)],
        input_size=[in_chans, size, size],
        mean=[0.5, 0.45, 0.4][:in_chans],
        std=[0.25, 0.24, 0.26][:in_chans],
        task=task,
        resize=resize or size,
        in_chans=in_chans,
    )
    save_bundle(folder, model, meta)
    return folder


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth, photo-like RGB image: random 4x4 colours upscaled bicubically, plus a little noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = smooth + rng.integers(-12, 13, smooth.shape, dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_images(folder: Path, count: int, seed: int = 0, suffix: str = ".jpg") -> list[Path]:
    """`count` photo-like files of assorted sizes and aspect ratios."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = int(rng.integers(24, 120)), int(rng.integers(24, 120))
        path = folder / f"img_{i:03d}{suffix}"
        photo(rng, w, h).save(path)
        paths.append(path)
    return paths
