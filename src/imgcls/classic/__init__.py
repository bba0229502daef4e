"""The classic pipeline CNNs replaced, as models of the zoo: hand-made features, encoding, spatial pyramid, SVM.

Registered models (`imgcls.classic.models`; ``imgcls models`` lists them with their papers):

=================  ==========================================================================================
``hog_svm``        HOG (Dalal & Triggs 2005) + linear SVM
``lbp_svm``        LBP^riu2 histograms (Ojala et al. 2002) + χ² SVM (explicit feature map)
``sift_bovw_svm``  dense SIFT, k-means bag of visual words, spatial pyramid (Lazebnik et al. 2006) + χ² SVM
``sift_vlad_svm``  dense SIFT, VLAD (Jégou et al. 2010), power + L2 normalisation + linear SVM
``sift_fisher_svm`` dense SIFT, PCA, diagonal GMM, improved Fisher vector (Perronnin et al. 2010) + linear SVM
=================  ==========================================================================================

They go through the same verbs and run folder as the CNNs: ``imgcls train --model hog_svm`` fits one
(`imgcls.engine.classic_fit`), and ``eval``, ``predict`` and ``serve`` load it from ``model.safetensors`` (arrays
only, SHA-256 checked) like any model (`imgcls.classic.module.ClassicModel`). Explain, test-time augmentation
and export do not apply to them and say so.

Layers: ``features``, ``encoders``, ``pipeline``, ``module`` and ``models`` import only NumPy, torch, the
optional libraries (lazily) and the registry, so `imgcls.models` can register them; ``train`` (the run folder)
uses the data layer and the engine and is imported only by the engine's ``train``.

Libraries: scikit-learn (a core dependency) for k-means, GMM, PCA, the χ² map and the SVM; scikit-image (HOG,
LBP, DAISY) and OpenCV (SIFT) from the ``classic`` extra (``pip install 'imgcls[classic]'``; ``make install``
installs it). A model whose library is missing fails with a one-line error saying so.
"""

from __future__ import annotations

from typing import Any

TAG = "classic"  # the registry tag of these models (ModelEntry.tags)


def is_classic(model: Any) -> bool:
    """True for a classic pipeline: a registered name tagged ``classic``, or a `ClassicModel` instance.

    Unknown names and ``None`` are False (the caller's own checks report them).
    """
    if model is None:
        return False
    if not isinstance(model, str):
        return bool(getattr(model, "is_classic", False))
    from imgcls.errors import UserError
    from imgcls.models import model_entry

    try:
        return TAG in model_entry(model).tags
    except UserError:
        return False


def not_applicable(what: str, name: str):
    """The UserError for a verb or option that does not apply: ``"<what> does not apply to classical pipeline
    models (<name> is ...)"``. Raise it."""
    from imgcls.classic.module import not_applicable as make

    return make(what, name)


__all__ = ["TAG", "is_classic", "not_applicable"]
