"""The data layer: sources (folder, CSV, built-in sets), decoding and validation, the uint8 cache, loaders.

The engine asks for loaders with `build_data` (training, validation, test) and `build_eval_data` (the one split
an evaluation reads); predict and serve read images with `load_for_eval` so that a run predicts exactly as it
evaluated. Augmentation lives in `imgcls.data.augment`.
"""

from imgcls.data.config import DataConfig
from imgcls.data.loader import BatchLoader, Data, EvalData, build_data, build_eval_data
from imgcls.data.reader import ImageError, load_for_eval, read_image

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
