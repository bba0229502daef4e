"""The classic pipelines as registered models: one row per paper, one entry point per row.

Sizes are chosen for the small images of CIFAR-10 and digits (both upsampled when smaller): the global features
work on 32×32 pixels, the dense-SIFT pipelines on 64×64 so that a 16-pixel SIFT patch (Lazebnik et al.'s size)
spans a quarter of the image, on a 4-pixel grid (169 descriptors). Photos deserve more: ``--image-size``
scales the input and every size below stays in pixels. ``model.kwargs`` overrides any field of the row
(`imgcls.classic.pipeline.PipelineConfig`), e.g. ``--set 'model.kwargs={features: daisy}'``.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgcls.classic.module import ClassicModel
from imgcls.classic.pipeline import PipelineConfig
from imgcls.models._registry import register_model

TAG = "classic"


@dataclass(frozen=True)
class ClassicSpec:
    config: PipelineConfig  # its image_size is the native input size of the registry entry
    in_chans: int


PIPELINES = {
    # Dalal & Triggs 2005: 9 unsigned orientation bins, 2x2-cell blocks, L2-Hys (their 8-px cells on 64x128
    # windows; 4-px cells here on 32x32), colour gradients, linear SVM (their C = 0.01).
    "hog_svm": ClassicSpec(PipelineConfig(features="hog", image_size=32, hog_cell=4, C=0.01), in_chans=3),
    # Ojala et al. 2002: LBP^riu2 at (P, R) = (8, 1) and (16, 2) (their multiresolution operator), histograms on
    # a 4x4 grid (Ahonen et al. 2006's spatial layout), chi2 kernel by explicit map.
    "lbp_svm": ClassicSpec(PipelineConfig(features="lbp", image_size=32, lbp_grid=4, kernel="chi2", C=0.1), in_chans=1),
    # Lazebnik et al. 2006: dense SIFT of 16x16 patches, M = 200 words, pyramid L = 2 (their best setting),
    # histogram-intersection kernel (here chi2 by explicit map).
    "sift_bovw_svm": ClassicSpec(
        PipelineConfig(features="sift", encoding="bovw", image_size=64, codebook=200, pyramid=2, kernel="chi2", C=1.0),
        in_chans=1,
    ),
    # Jegou et al. 2010: VLAD of SIFT with k = 64 words, power + L2 normalised, linear SVM.
    "sift_vlad_svm": ClassicSpec(
        PipelineConfig(features="sift", encoding="vlad", image_size=64, codebook=64, C=1.0), in_chans=1
    ),
    # Perronnin et al. 2010: SIFT reduced to 64 dimensions by PCA, diagonal GMM (64 components here, 256 in the
    # paper), improved Fisher vector (power + L2), linear SVM.
    "sift_fisher_svm": ClassicSpec(
        PipelineConfig(features="sift", encoding="fisher", image_size=64, pca=64, codebook=64, C=1.0), in_chans=1
    ),
}


def _classic(name: str, num_classes: int = 1000, in_chans: int | None = None, **kw) -> ClassicModel:
    spec = PIPELINES[name]
    config = PipelineConfig.from_dict({**spec.config.to_dict(), **kw})
    return ClassicModel(name, num_classes, in_chans or spec.in_chans, config)


def _info(name: str, paper: str) -> dict:
    spec = PIPELINES[name]
    c, size = spec.in_chans, spec.config.image_size
    return dict(input_size=(c, size, size), paper=paper, mean=(0.0,) * c, std=(1.0,) * c, tags=(TAG,))


@register_model(**_info("hog_svm", "Dalal & Triggs 2005 (CVPR): HOG + linear SVM"))
def hog_svm(**kw):
    return _classic("hog_svm", **kw)


@register_model(**_info("lbp_svm", "Ojala et al. 2002 (TPAMI 24(7)): LBP histograms + χ² SVM"))
def lbp_svm(**kw):
    return _classic("lbp_svm", **kw)


@register_model(**_info("sift_bovw_svm", "Lazebnik et al. 2006 (CVPR): dense SIFT BoVW + spatial pyramid + χ² SVM"))
def sift_bovw_svm(**kw):
    return _classic("sift_bovw_svm", **kw)


@register_model(**_info("sift_vlad_svm", "Jégou et al. 2010 (CVPR): dense SIFT VLAD + linear SVM"))
def sift_vlad_svm(**kw):
    return _classic("sift_vlad_svm", **kw)


@register_model(**_info("sift_fisher_svm", "Perronnin et al. 2010 (ECCV): improved Fisher vectors + linear SVM"))
def sift_fisher_svm(**kw):
    return _classic("sift_fisher_svm", **kw)


__all__ = ["PIPELINES", "TAG", "ClassicSpec"]
