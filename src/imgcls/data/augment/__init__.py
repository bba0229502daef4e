"""Batched, seeded augmentation: every classic op of the CNN papers applied to a whole uint8 batch at once.

- `config`: `AugmentConfig`, the ``augment`` section (defaults do nothing), checked when made.
- `geometry`: RandomResizedCrop boxes, crop/pad/translate/flip, rotation and scale, the evaluation geometry.
- `colour`: colour jitter, PCA lighting, channel permutation, blur, noise (the ``adjust_*`` blends).
- `erase`: Cutout, Coarse Dropout, Random Erasing on the normalised batch.
- `policies`: AutoAugment, RandAugment, TrivialAugment.
- `mixing`: mixup, CutMix, SamplePairing with soft targets (`build_mixer`).
- `pipeline`: `build_batch_transform`, the function the loaders call, in the papers' order.

A new augmentation goes into the module of its kind, with a field in `AugmentConfig` and a step in
`pipeline.build_batch_transform`. Every draw comes from the caller's `torch.Generator` (`_common`).
"""

from imgcls.data.augment.config import AugmentConfig, parse_randaugment
from imgcls.data.augment.geometry import sample_resized_crop, sample_resized_crops
from imgcls.data.augment.mixing import Mixer, build_mixer
from imgcls.data.augment.pipeline import BatchTransform, build_batch_transform, mean_image
from imgcls.data.augment.policies import AutoAugment, RandAugment, TrivialAugment

__all__ = [
    "AugmentConfig",
    "AutoAugment",
    "BatchTransform",
    "Mixer",
    "RandAugment",
    "TrivialAugment",
    "build_batch_transform",
    "build_mixer",
    "mean_image",
    "parse_randaugment",
    "sample_resized_crop",
    "sample_resized_crops",
]
