"""Encodings of an image's local descriptors into one vector, and the vocabularies they are fitted with.

- :func:`bovw_pyramid` — bag of visual words over a spatial pyramid (Lazebnik, Schmid & Ponce 2006, CVPR,
  Sec. 3): each descriptor votes for its nearest k-means centre ("visual word") in every cell of levels
  ``0..L`` (level ``l`` cuts the image into ``2^l × 2^l`` cells); level 0 is weighted ``1 / 2^L`` and level
  ``l >= 1`` ``1 / 2^(L-l+1)`` (their Eq. 3), and the counts are divided by the number of descriptors, so the
  whole vector sums to 1 (``L = 0`` is the plain normalised histogram of Csurka et al. 2004). A linear SVM on
  it after an explicit χ² feature map stands in for their histogram-intersection kernel (the two kernels
  score alike in Vedaldi & Zisserman 2012, TPAMI 34(3)).
- :func:`vlad` — vector of locally aggregated descriptors (Jégou, Douze, Schmid & Pérez 2010, CVPR, Eq. 1): for
  each centre, the sum of the residuals ``x - c_k`` of the descriptors assigned to it.
- :func:`fisher_vector` — the improved Fisher vector (Perronnin, Sánchez & Mensink 2010, ECCV, Sec. 2-3):
  gradients of the descriptors' log-likelihood under a diagonal GMM with respect to the means and standard
  deviations, normalised by the Fisher information (their Eq. 6-7).

VLAD and Fisher vectors then get the signed square root (power normalisation with α = 0.5) and L2
normalisation (Perronnin et al. 2010, Sec. 3.1-3.2; for VLAD, Jégou et al. 2012, TPAMI 34(9)): :func:`power_l2`.
With a pyramid they are computed per cell, normalised per cell, concatenated and L2-normalised again.

Vocabularies are fitted with scikit-learn (k-means, a diagonal Gaussian mixture, PCA); assignment uses its
``pairwise_distances_argmin`` and the mixture's ``predict_proba``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from imgcls.errors import UserError


def pyramid_weights(levels: int) -> list[float]:
    """Lazebnik et al.'s level weights for levels ``0..levels`` (module docstring); they sum to 1."""
    return [1.0 / 2**levels if level == 0 else 1.0 / 2 ** (levels - level + 1) for level in range(levels + 1)]


def pyramid_cells(positions: np.ndarray, level: int) -> np.ndarray:
    """Cell index ``row · 2^level + col`` of each ``(x, y)`` position in ``[0, 1)``, ``(M,)`` int64."""
    n = 2**level
    col = np.clip((positions[:, 0] * n).astype(np.int64), 0, n - 1)
    row = np.clip((positions[:, 1] * n).astype(np.int64), 0, n - 1)
    return row * n + col


def pyramid_dim(levels: int) -> int:
    """Number of cells over levels ``0..levels``: ``Σ 4^l``."""
    return sum(4**level for level in range(levels + 1))


def bovw_pyramid(words: np.ndarray, positions: np.ndarray, k: int, levels: int = 0) -> np.ndarray:
    """Spatial-pyramid histogram of visual words (module docstring).

    Args:
        words: ``(M,)`` word index of each descriptor.
        positions: ``(M, 2)`` ``(x, y)`` in ``[0, 1)``.
        k: vocabulary size.
        levels: ``L``; 0 gives the plain histogram.

    Returns:
        float64 ``(k · Σ 4^l,)``, level 0 first, cells in row-major order; sums to 1 (0 without descriptors).
    """
    m = max(len(words), 1)
    parts = []
    for level, weight in enumerate(pyramid_weights(levels)):
        cells = 4**level
        index = pyramid_cells(positions, level) * k + words
        parts.append(np.bincount(index, minlength=cells * k) * (weight / m))
    return np.concatenate(parts)


def power_l2(v: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Signed power ``sign(v) |v|^alpha`` then L2 normalisation (a zero vector stays zero)."""
    v = np.sign(v) * np.abs(v) ** alpha
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def vlad(descriptors: np.ndarray, centres: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Unnormalised VLAD: ``v_k = Σ_{x: NN(x) = k} (x - c_k)``, flattened to ``(K · D,)`` float64."""
    k, d = centres.shape
    sums = np.zeros((k, d))
    np.add.at(sums, words, descriptors.astype(np.float64))
    counts = np.bincount(words, minlength=k).astype(np.float64)
    return (sums - counts[:, None] * centres).ravel()


def fisher_vector(
    descriptors: np.ndarray, posteriors: np.ndarray, weights: np.ndarray, means: np.ndarray, variances: np.ndarray
) -> np.ndarray:
    """Unnormalised Fisher vector of ``T`` descriptors under a diagonal GMM (module docstring).

    With ``γ_t(k)`` the posteriors and ``u = (x_t - μ_k) / σ_k``:
    ``G_μk = Σ_t γ_t(k) u / (T √w_k)`` and ``G_σk = Σ_t γ_t(k) (u² - 1) / (T √(2 w_k))``
    (Perronnin et al. 2010, Eq. 6-7), from the zeroth, first and second order statistics.

    Args:
        descriptors: ``(T, D)``.
        posteriors: ``(T, K)``, rows summing to 1.
        weights, means, variances: the mixture's ``(K,)``, ``(K, D)``, ``(K, D)``.

    Returns:
        float64 ``(2 · K · D,)``: all ``G_μ`` rows, then all ``G_σ`` rows.
    """
    x = descriptors.astype(np.float64)
    t = max(len(x), 1)
    s0 = posteriors.sum(axis=0)  # (K,)
    s1 = posteriors.T @ x  # (K, D)
    s2 = posteriors.T @ (x * x)  # (K, D)
    sigma = np.sqrt(variances)
    g_mu = (s1 - s0[:, None] * means) / (sigma * t * np.sqrt(weights)[:, None])
    second = s2 - 2.0 * means * s1 + s0[:, None] * (means**2 - variances)  # Σ γ ((x - μ)² - σ²)
    g_sigma = second / (variances * t * np.sqrt(2.0 * weights)[:, None])
    return np.concatenate([g_mu.ravel(), g_sigma.ravel()])


def encode_pyramid(
    encode: Callable[[np.ndarray], np.ndarray], positions: np.ndarray, levels: int, dim: int
) -> np.ndarray:
    """VLAD/Fisher over a pyramid: ``encode(index)`` of each cell's descriptors, power-L2 per cell, then L2."""
    if levels == 0:
        return power_l2(encode(np.arange(len(positions))))
    parts = []
    for level in range(levels + 1):
        cells = pyramid_cells(positions, level)
        for c in range(4**level):
            index = np.flatnonzero(cells == c)
            parts.append(power_l2(encode(index)) if len(index) else np.zeros(dim))
    v = np.concatenate(parts)
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


# --- fitting the vocabularies ------------------------------------------------------------------------------------


def _enough(descriptors: np.ndarray, k: int, what: str) -> None:
    if len(descriptors) < k:
        raise UserError(
            f"{what}: {k} {'words' if 'k-means' in what else 'components'} need at least {k} descriptors, the "
            f"training images gave {len(descriptors)} (use more images or a smaller model.kwargs.codebook)"
        )


def fit_kmeans(descriptors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` visual words: scikit-learn's mini-batch k-means (k-means++ seeding, 3 restarts); ``(k, D)`` float64."""
    from sklearn.cluster import MiniBatchKMeans

    _enough(descriptors, k, "k-means vocabulary")
    km = MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=max(1024, 4 * k), random_state=seed, max_iter=100)
    return km.fit(descriptors.astype(np.float64)).cluster_centers_.astype(np.float64)


def fit_gmm(descriptors: np.ndarray, k: int, seed: int):
    """A ``k``-component diagonal Gaussian mixture (scikit-learn, EM from k-means++ seeds)."""
    from sklearn.mixture import GaussianMixture

    _enough(descriptors, k, "Gaussian mixture vocabulary")
    gmm = GaussianMixture(
        n_components=k, covariance_type="diag", reg_covar=1e-4, max_iter=100, init_params="k-means++", random_state=seed
    )
    return gmm.fit(descriptors.astype(np.float64))


def gmm_from_arrays(weights: np.ndarray, means: np.ndarray, variances: np.ndarray):
    """A fitted diagonal `GaussianMixture` rebuilt from its arrays (``predict_proba`` works as after ``fit``)."""
    from sklearn.mixture import GaussianMixture

    weights, means, variances = (np.ascontiguousarray(a, np.float64) for a in (weights, means, variances))
    gmm = GaussianMixture(n_components=len(weights), covariance_type="diag")
    gmm.weights_, gmm.means_, gmm.covariances_ = weights, means, variances
    gmm.precisions_cholesky_ = 1.0 / np.sqrt(variances)
    gmm.n_features_in_ = means.shape[1]
    gmm.converged_ = True
    return gmm


def nearest(descriptors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean) of each descriptor, ``(M,)`` int64."""
    from sklearn.metrics import pairwise_distances_argmin

    if len(descriptors) == 0:
        return np.zeros(0, dtype=np.int64)
    return pairwise_distances_argmin(descriptors.astype(np.float64), centres).astype(np.int64)


__all__ = [
    "bovw_pyramid",
    "encode_pyramid",
    "fisher_vector",
    "fit_gmm",
    "fit_kmeans",
    "gmm_from_arrays",
    "nearest",
    "power_l2",
    "pyramid_cells",
    "pyramid_dim",
    "pyramid_weights",
    "vlad",
]
