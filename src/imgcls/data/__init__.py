"""The data layer: sources (folder, CSV, built-in sets), decoding and validation, the uint8 cache, loaders.

The engine asks for loaders with `build_data` (training, validation, test) and `build_eval_data` (the one split
an evaluation reads); predict and serve read images with `load_for_eval` so that a run predicts exactly as it
evaluated. Augmentation lives in `imgcls.data.augment`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgcls._lazy import lazy_attributes

if TYPE_CHECKING:
    from imgcls.data.config import DataConfig
    from imgcls.data.loader import BatchLoader, Data, EvalData, build_data, build_eval_data
    from imgcls.data.reader import ImageError, load_for_eval, read_image

# Imported on first use (PEP 562): predict and serve read images through `imgcls.data.reader` alone, and the
# loaders' augmentation stack (kornia) costs ~0.4 s of every command's start-up otherwise.
_HOME = {
    "DataConfig": "config",
    "BatchLoader": "loader",
    "Data": "loader",
    "EvalData": "loader",
    "build_data": "loader",
    "build_eval_data": "loader",
    "ImageError": "reader",
    "load_for_eval": "reader",
    "read_image": "reader",
}


__getattr__ = lazy_attributes(__name__, _HOME)


__all__ = [
    "BatchLoader",
    "Data",
    "DataConfig",
    "EvalData",
    "ImageError",
    "build_data",
    "build_eval_data",
    "load_for_eval",
    "read_image",
]
