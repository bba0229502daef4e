"""The augmentation API under its earlier name: `AugmentConfig`, `build_batch_transform` and the ops.

Kept so that code and recipes naming ``imgcls.data.transforms`` go on working; everything lives in
`imgcls.data.augment` (configuration, geometry, colour, erasing, policies, mixing, the pipeline).
"""

from imgcls.data.augment.colour import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    LUMA,
    adjust_brightness,
    adjust_contrast,
    adjust_hue_turns,
    adjust_saturation,
    channel_permute,
    gaussian_blur,
    gaussian_noise,
    hue_matrices,
    pca_lighting,
)
from imgcls.data.augment.config import AugmentConfig
from imgcls.data.augment.erase import box_keep, box_mask, cutout_keep, cutout_mask, random_erasing_mask
from imgcls.data.augment.geometry import (
    affine_warp,
    center_crop,
    crop_flip,
    resize_center_crop,
    sample_resized_crop,
    sample_resized_crops,
)
from imgcls.data.augment.pipeline import BatchTransform, build_batch_transform, mean_image

__all__ = [
    "IMAGENET_PCA_EIGVAL",
    "IMAGENET_PCA_EIGVEC",
    "LUMA",
    "AugmentConfig",
    "BatchTransform",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue_turns",
    "adjust_saturation",
    "affine_warp",
    "box_keep",
    "box_mask",
    "build_batch_transform",
    "center_crop",
    "channel_permute",
    "crop_flip",
    "cutout_keep",
    "cutout_mask",
    "gaussian_blur",
    "gaussian_noise",
    "hue_matrices",
    "mean_image",
    "pca_lighting",
    "random_erasing_mask",
    "resize_center_crop",
    "sample_resized_crop",
    "sample_resized_crops",
]
