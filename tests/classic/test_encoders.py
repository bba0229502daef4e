"""Bag of words, spatial pyramid, VLAD and Fisher vectors on descriptors whose encoding is known."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls.classic import encoders as E
from imgcls.errors import UserError


def test_pyramid_weights_are_lazebniks_and_sum_to_one():
    assert E.pyramid_weights(0) == [1.0]
    assert E.pyramid_weights(2) == [0.25, 0.25, 0.5]  # Lazebnik et al. 2006, Eq. 3 with L = 2
    for levels in range(5):
        assert sum(E.pyramid_weights(levels)) == pytest.approx(1.0)
    assert E.pyramid_dim(2) == 1 + 4 + 16


def test_bovw_histogram_counts_the_descriptors_and_sums_to_one():
    words = np.array([0, 2, 2, 2, 1, 0])
    pos = np.full((6, 2), 0.5)
    hist = E.bovw_pyramid(words, pos, k=4, levels=0)
    np.testing.assert_allclose(hist * len(words), [2, 1, 3, 0])
    assert hist.sum() == pytest.approx(1.0)


def test_bovw_pyramid_puts_each_word_in_its_cell():
    # One descriptor in the top-left corner (word 1), one in the bottom-right (word 0); k = 2, L = 1.
    words = np.array([1, 0])
    pos = np.array([[0.1, 0.2], [0.9, 0.8]])
    hist = E.bovw_pyramid(words, pos, k=2, levels=1)
    assert hist.shape == (2 * (1 + 4),)
    level0, level1 = hist[:2], hist[2:].reshape(4, 2)  # cells row-major: TL, TR, BL, BR
    np.testing.assert_allclose(level0, [0.5 * 0.5, 0.5 * 0.5])  # weight 1/2 at level 0, each word 1 of 2
    np.testing.assert_allclose(level1[0], [0, 0.5 * 0.5])  # top-left holds word 1
    np.testing.assert_allclose(level1[3], [0.5 * 0.5, 0])  # bottom-right holds word 0
    assert level1[1].sum() == level1[2].sum() == 0
    assert hist.sum() == pytest.approx(1.0)


def test_vlad_sums_residuals_per_word_and_normalises():
    centres = np.array([[0.0, 0.0], [10.0, 10.0]])
    desc = np.array([[1.0, 0.0], [0.0, 2.0], [11.0, 10.0]])
    words = E.nearest(desc, centres)
    np.testing.assert_array_equal(words, [0, 0, 1])
    v = E.vlad(desc, centres, words)
    np.testing.assert_allclose(v, [1.0, 2.0, 1.0, 0.0])  # (1,0)+(0,2) for word 0; (11,10)-(10,10) for word 1
    normed = E.power_l2(v)
    assert normed.shape == (4,)  # K · D
    assert np.linalg.norm(normed) == pytest.approx(1.0)
    np.testing.assert_allclose(normed, np.sqrt([1, 2, 1, 0]) / np.sqrt(4))  # signed square roots, then L2


def test_power_l2_keeps_signs_and_zero():
    out = E.power_l2(np.array([-4.0, 0.0, 9.0]))
    np.testing.assert_allclose(out, np.array([-2.0, 0.0, 3.0]) / np.sqrt(13))
    np.testing.assert_array_equal(E.power_l2(np.zeros(3)), np.zeros(3))


def test_fisher_vector_of_descriptors_at_the_mean():
    # One component, descriptors exactly at its mean: no mean gradient, and (u² - 1) = -1 per dimension.
    means, variances, weights = np.array([[1.0, -2.0, 0.5]]), np.array([[4.0, 1.0, 0.25]]), np.array([1.0])
    desc = np.repeat(means, 5, axis=0)
    fv = E.fisher_vector(desc, np.ones((5, 1)), weights, means, variances)
    assert fv.shape == (2 * 1 * 3,)
    np.testing.assert_allclose(fv[:3], 0.0, atol=1e-12)
    np.testing.assert_allclose(fv[3:], -1.0 / np.sqrt(2.0))


def test_fisher_vector_is_small_for_data_drawn_from_the_model_and_large_for_shifted_data():
    rng = np.random.default_rng(0)
    k, d = 3, 4
    weights = np.array([0.2, 0.3, 0.5])
    means = rng.normal(0, 5, (k, d))
    variances = rng.uniform(0.5, 2.0, (k, d))
    comp = rng.choice(k, size=20000, p=weights)
    x = means[comp] + rng.normal(size=(20000, d)) * np.sqrt(variances[comp])
    gmm = E.gmm_from_arrays(weights, means, variances)
    fv = E.fisher_vector(x, gmm.predict_proba(x), weights, means, variances)
    assert fv.shape == (2 * k * d,)
    # the score has expectation 0 under the model: ~1/sqrt(T) per dimension
    assert np.abs(fv).max() < 0.05
    shifted = x + 1.0
    fv_shifted = E.fisher_vector(shifted, gmm.predict_proba(shifted), weights, means, variances)
    assert np.abs(fv_shifted).max() > 0.3


def test_gmm_rebuilt_from_arrays_gives_the_fitted_posteriors():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(-3, 1, (300, 2)), rng.normal(3, 0.5, (300, 2))])
    gmm = E.fit_gmm(x, 2, seed=0)
    again = E.gmm_from_arrays(gmm.weights_, gmm.means_, gmm.covariances_)
    np.testing.assert_allclose(again.predict_proba(x), gmm.predict_proba(x), rtol=1e-10, atol=1e-12)


def test_encode_pyramid_normalises_each_cell_then_the_whole():
    pos = np.array([[0.1, 0.1], [0.9, 0.9]])
    vectors = np.array([[3.0, 4.0], [0.0, 9.0]])
    out = E.encode_pyramid(lambda i: vectors[i].sum(axis=0), pos, levels=1, dim=2)
    assert out.shape == (2 * 5,)
    assert np.linalg.norm(out) == pytest.approx(1.0)
    cells = out.reshape(5, 2)
    assert np.all(cells[2] == 0) and np.all(cells[3] == 0)  # the top-right and bottom-left cells are empty
    # the two occupied level-1 cells have equal norms (each was L2-normalised before the final L2)
    assert np.linalg.norm(cells[1]) == pytest.approx(np.linalg.norm(cells[4]))


def test_kmeans_vocabulary_finds_separated_clusters_and_refuses_too_few_descriptors():
    rng = np.random.default_rng(2)
    truth = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.1, (200, 2)) for c in truth])
    centres = E.fit_kmeans(x, 3, seed=0)
    found = sorted(map(tuple, np.round(centres).astype(int).tolist()))
    assert found == [(0, 0), (0, 10), (10, 0)]
    with pytest.raises(UserError, match="at least 50 descriptors"):
        E.fit_kmeans(x[:10], 50, seed=0)
