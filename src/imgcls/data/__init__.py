"""The data layer: sources (folder, CSV, built-in sets), decoding and validation, the uint8 cache, loaders.

The engine asks for loaders with `build_data`; predict and serve read images with `load_for_eval` so that a run
predicts exactly as it evaluated. Augmentation lives in `imgcls.data.augment`.
"""

from imgcls.data.config import DataConfig
from imgcls.data.loader import BatchLoader, Data, build_data
from imgcls.data.reader import ImageError, load_for_eval, read_image

__all__ = ["BatchLoader", "Data", "DataConfig", "ImageError", "build_data", "load_for_eval", "read_image"]
