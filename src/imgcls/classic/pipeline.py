"""The classic pipeline: features → (vocabulary + encoding + spatial pyramid) → (χ² map) → linear SVM.

:class:`PipelineConfig` holds every setting (the registered models in `imgcls.classic.models` are rows of it;
``model.kwargs`` of a recipe overrides fields). :class:`ClassicPipeline` fits and applies it on uint8 images
``(N, H, W, C)``; its fitted state is a flat dict of NumPy arrays (:meth:`ClassicPipeline.arrays`), from which
:meth:`ClassicPipeline.load_arrays` rebuilds the scikit-learn estimators — no pickle anywhere.

Fitting, in order (:meth:`ClassicPipeline.fit`):

1. Local-descriptor models only: descriptors of ``codebook_images`` training images drawn at random (at most
   ``codebook_descriptors`` of them kept), an optional PCA to ``pca`` dimensions (Perronnin et al. 2010 reduce
   SIFT to 64), then the vocabulary: k-means (BoVW, VLAD) or a diagonal GMM (Fisher vectors).
2. One vector per training image (`imgcls.classic.features`, `imgcls.classic.encoders`).
3. ``kernel="chi2"``: scikit-learn's ``AdditiveChi2Sampler``, the explicit feature map of the additive χ² kernel
   (Vedaldi & Zisserman 2012), so a linear SVM on the mapped vectors approximates a χ²-kernel SVM; optional
   standardisation (zero mean, unit variance per dimension).
4. Probabilities: a share ``calibration`` of the training images (stratified) is held out, a linear SVM is fitted
   on the rest, and the temperature ``T`` minimising the log loss of ``softmax(decision / T)`` on the held-out
   images is found (temperature scaling, Guo et al. 2017, arXiv:1706.04599). ``T > 0`` preserves the order of
   the decision values, so top-1/top-5 are the SVM's own ranking; the probabilities are calibrated.
5. The final one-vs-rest linear SVM (scikit-learn's ``LinearSVC``, liblinear, squared hinge loss) on all
   training images.

Outputs (:meth:`ClassicPipeline.logits`): ``decision / T``, one column per class; with two classes liblinear
gives one decision value ``d`` and the logits are ``(0, d / T)``, so the softmax is ``sigmoid(d / T)``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from imgcls.classic import encoders as E
from imgcls.classic import features as F
from imgcls.errors import UserError

FEATURES = ("hog", "lbp", "sift", "daisy")
LOCAL_FEATURES = ("sift", "daisy")
ENCODINGS = ("none", "bovw", "vlad", "fisher")
KERNELS = ("linear", "chi2")
SIFT_DIM = 128

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of a classic pipeline (sizes in pixels of the model's input).

    Attributes:
        features: ``hog``, ``lbp`` (global) or ``sift``, ``daisy`` (dense local descriptors).
        encoding: ``none`` for global features; ``bovw``, ``vlad`` or ``fisher`` for local ones.
        image_size: side of the square images the pipeline takes (it fixes the length of HOG and LBP vectors).
        hog_orientations, hog_cell, hog_block: HOG bins, cell side, block side in cells.
        lbp_scales: ``(P, R)`` pairs of the LBP operator; lbp_grid: ``grid × grid`` histogram cells.
        patch, step: side of a local descriptor's square and the grid step between centres.
        pca: reduce local descriptors to this many dimensions first (0: keep them).
        codebook: k-means words or GMM components.
        codebook_images, codebook_descriptors: training images sampled for the vocabulary, descriptors kept.
        pyramid: spatial-pyramid levels ``L`` (0: the whole image only).
        kernel: ``linear`` or ``chi2`` (explicit map, non-negative features only); chi2_steps: its sample steps.
        standardize: zero mean, unit variance per dimension before the SVM.
        C: the SVM's inverse regularisation; max_iter: liblinear's iteration cap.
        calibration: share of training images held out to fit the softmax temperature (0: ``T = 1``).
    """

    features: str = "hog"
    encoding: str = "none"
    image_size: int = 32
    hog_orientations: int = 9
    hog_cell: int = 4
    hog_block: int = 2
    lbp_scales: tuple[tuple[int, float], ...] = ((8, 1.0), (16, 2.0))
    lbp_grid: int = 4
    patch: int = 16
    step: int = 4
    pca: int = 0
    codebook: int = 200
    codebook_images: int = 2000
    codebook_descriptors: int = 100_000
    pyramid: int = 0
    kernel: str = "linear"
    chi2_steps: int = 2
    standardize: bool = False
    C: float = 1.0
    max_iter: int = 2000
    calibration: float = 0.2

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, where: str = "model.kwargs") -> PipelineConfig:
        """Build and validate; an unknown key or a bad value is a one-line UserError naming ``where.key``."""
        values = dict(values or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown setting {where}.{unknown[0]} for a classic pipeline (known: {', '.join(known)})")
        typed: dict[str, Any] = {}
        for key, value in values.items():
            typed[key] = _coerce(key, value, str(known[key].type), where)
        config = cls(**typed)
        config.validate(where)
        return config

    def validate(self, where: str = "model.kwargs") -> None:
        def bad(key: str, reason: str) -> UserError:
            return UserError(f"{where}.{key}: {reason} (got {getattr(self, key)!r})")

        if self.features not in FEATURES:
            raise bad("features", f"must be one of {', '.join(FEATURES)}")
        if self.encoding not in ENCODINGS:
            raise bad("encoding", f"must be one of {', '.join(ENCODINGS)}")
        if self.is_local and self.encoding == "none":
            raise bad("encoding", f"{self.features} gives local descriptors: choose bovw, vlad or fisher")
        if not self.is_local and self.encoding != "none":
            raise bad("encoding", f"{self.features} is a global descriptor: encoding must be none")
        if self.kernel not in KERNELS:
            raise bad("kernel", f"must be one of {', '.join(KERNELS)}")
        if self.kernel == "chi2" and self.encoding in ("vlad", "fisher"):
            raise bad("kernel", "the chi2 map needs non-negative histograms; VLAD and Fisher vectors are signed")
        for key in ("image_size", "hog_orientations", "hog_cell", "hog_block", "lbp_grid", "patch", "step", "codebook"):
            if getattr(self, key) < 1:
                raise bad(key, "must be at least 1")
        for key in ("codebook_images", "codebook_descriptors", "max_iter", "chi2_steps"):
            if getattr(self, key) < 1:
                raise bad(key, "must be at least 1")
        if self.pca < 0 or self.pyramid < 0:
            raise bad("pca" if self.pca < 0 else "pyramid", "must be 0 or more")
        if not self.lbp_scales or any(p < 1 or r <= 0 for p, r in self.lbp_scales):
            raise bad("lbp_scales", "needs (P, R) pairs with P >= 1 neighbours and radius R > 0")
        if not self.C > 0:
            raise bad("C", "must be positive")
        if not 0.0 <= self.calibration < 1.0:
            raise bad("calibration", "must be in [0, 1)")

    @property
    def is_local(self) -> bool:
        return self.features in LOCAL_FEATURES

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (what ``model.json`` stores as ``model_kwargs``)."""
        out = dataclasses.asdict(self)
        out["lbp_scales"] = [[int(p), float(r)] for p, r in self.lbp_scales]
        return out


def _coerce(key: str, value: Any, annotation: str, where: str) -> Any:
    try:
        if key == "lbp_scales":
            return tuple((int(p), float(r)) for p, r in value)
        if annotation == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if annotation == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if annotation == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise UserError(f"{where}.{key}: expected {annotation}, got {value!r}") from None


@dataclass
class FitReport:
    """What :meth:`ClassicPipeline.fit` measured."""

    num_images: int
    feature_dim: int  # length of the vector the SVM sees (after the χ² map)
    temperature: float
    train_loss: float  # log loss of the calibrated probabilities on the training images
    train_top1: float  # percent
    seconds: dict[str, float] = field(default_factory=dict)  # per stage


class ClassicPipeline:
    """Fit and apply one :class:`PipelineConfig` (module docstring).

    Args:
        config: the settings.
        name: the model's registered name, for messages.
        workers: threads extracting features (OpenCV and most of scikit-image's work release the GIL);
            default: one per CPU core, at most 8. Results do not depend on it.
    """

    def __init__(self, config: PipelineConfig, name: str = "classic", workers: int | None = None):
        self.config = config
        self.name = name
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.num_classes: int | None = None
        self.pca = None  # sklearn PCA
        self.centres: np.ndarray | None = None  # (K, D) k-means words
        self.gmm = None  # sklearn GaussianMixture (diagonal)
        self.scaler = None  # sklearn StandardScaler
        self.svm = None  # sklearn LinearSVC
        self.temperature = 1.0

    # --- libraries ---------------------------------------------------------------------------------------------

    def check_libraries(self) -> None:
        """A one-line UserError now, rather than after minutes of work, when an optional library is missing."""
        what = f"{self.name} ({self.config.features.upper()} features)"
        F.require("cv2" if self.config.features == "sift" else "skimage.feature", what)

    @property
    def fitted(self) -> bool:
        return self.svm is not None

    # --- per image -----------------------------------------------------------------------------------------------

    def raw_local(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense descriptors and positions of one image, before PCA."""
        c = self.config
        if c.features == "sift":
            return F.dense_sift(image, c.patch, c.step)
        return F.dense_daisy(image, c.patch, c.step)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """The vector of one uint8 image before the kernel map (float64); needs the vocabulary when local."""
        c = self.config
        if c.features == "hog":
            return F.hog(image, c.hog_orientations, c.hog_cell, c.hog_block).astype(np.float64)
        if c.features == "lbp":
            return F.lbp_histograms(image, c.lbp_scales, c.lbp_grid).astype(np.float64)
        desc, pos = self.raw_local(image)
        if self.pca is not None:
            desc = self.pca.transform(desc.astype(np.float64))
        if c.encoding == "bovw":
            return E.bovw_pyramid(E.nearest(desc, self.centres), pos, c.codebook, c.pyramid)
        if c.encoding == "vlad":
            words = E.nearest(desc, self.centres)
            dim = self.centres.size
            return E.encode_pyramid(lambda i: E.vlad(desc[i], self.centres, words[i]), pos, c.pyramid, dim)
        post = self.gmm.predict_proba(desc)
        g = self.gmm
        dim = 2 * g.means_.size
        return E.encode_pyramid(
            lambda i: E.fisher_vector(desc[i], post[i], g.weights_, g.means_, g.covariances_), pos, c.pyramid, dim
        )

    def _map(self, images: Iterable[np.ndarray], fn: Callable[[np.ndarray], Any]) -> list:
        images = list(images)
        if self.workers == 1 or len(images) < 2:
            return [fn(im) for im in images]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="imgcls-classic") as pool:
            return list(pool.map(fn, images))

    def check_size(self, images: np.ndarray) -> None:
        """A UserError unless ``images`` are ``(N, S, S, C)`` with ``S`` the ``image_size`` setting."""
        s = self.config.image_size
        if images.ndim != 4 or images.shape[1:3] != (s, s):
            raise UserError(
                f"{self.name} takes {s}x{s} images (model.kwargs.image_size), got shape {tuple(images.shape)}"
            )

    def vectors(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W, C)`` uint8 → ``(N, D)`` float64: encoding, then the χ² map and standardisation."""
        self.check_size(images)
        x = np.stack(self._map(images, self.encode)) if len(images) else np.zeros((0, self.vector_dim()))
        return self._kernel_map(x)

    def _kernel_map(self, x: np.ndarray) -> np.ndarray:
        if self.config.kernel == "chi2":
            from sklearn.kernel_approximation import AdditiveChi2Sampler

            x = AdditiveChi2Sampler(sample_steps=self.config.chi2_steps).fit_transform(x)
        if self.scaler is not None:
            x = self.scaler.transform(x)
        return x

    # --- fitting -------------------------------------------------------------------------------------------------

    def fit(
        self,
        batches: Batches,
        num_images: int,
        num_classes: int,
        seed: int = 0,
        log: Callable[[str], None] | None = None,
    ) -> FitReport:
        """Fit on the training images (module docstring).

        Args:
            batches: a function returning an iterable of ``(images, labels)``: uint8 ``(n, H, W, C)`` and int
                ``(n,)`` class indices, the same images in the same order on every call (it is called twice for
                local-descriptor models: once for the vocabulary, once for the vectors).
            num_images: how many images ``batches()`` yields in all.
            num_classes: the number of classes; every class needs at least one training image.
            seed: seeds the vocabulary sample, k-means/GMM/PCA, the calibration split and liblinear.
            log: receives one progress line per stage.

        Returns:
            A :class:`FitReport`.
        """
        say = log or (lambda text: None)
        c = self.config
        self.check_libraries()
        seconds: dict[str, float] = {}
        rng = np.random.default_rng(seed)
        if c.is_local:
            t0 = time.perf_counter()
            self._fit_vocabulary(batches, num_images, rng, seed, say)
            seconds["vocabulary"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        x, y = self._training_vectors(batches, num_images)
        seconds["features"] = time.perf_counter() - t0
        present = np.bincount(y, minlength=num_classes)
        if len(present) > num_classes:
            raise ValueError(f"labels go up to {len(present) - 1}, but num_classes is {num_classes}")
        if (present == 0).any():
            raise UserError(
                f"{self.name}: class index {int(np.flatnonzero(present == 0)[0])} has no training image; a one-vs-rest "
                "SVM needs at least one image of every class"
            )
        say(f"{len(x)} training images → {x.shape[1]} features each ({seconds['features']:.1f}s)")

        if c.standardize:
            from sklearn.preprocessing import StandardScaler

            self.scaler = StandardScaler(copy=False).fit(x)
            x = self.scaler.transform(x)

        t0 = time.perf_counter()
        self.temperature = self._calibrate(x, y, seed, say)
        seconds["calibration"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.svm = self._fit_svm(x, y, seed)
        self.num_classes = num_classes
        seconds["svm"] = time.perf_counter() - t0
        # From here on the estimators are those rebuilt from the arrays, exactly as a saved model loads them.
        self.load_arrays(self.arrays(), num_classes)
        logits = self._logits_from_decision(self.svm.decision_function(x))
        loss = _log_loss(logits, y)
        top1 = 100.0 * float((logits.argmax(1) == y).mean())
        say(f"linear SVM (C={c.C:g}) fitted in {seconds['svm']:.1f}s: training top-1 {top1:.2f}%, log loss {loss:.4f}")
        return FitReport(len(x), int(x.shape[1]), self.temperature, loss, top1, seconds)

    def _fit_vocabulary(self, batches: Batches, num_images: int, rng, seed: int, say) -> None:
        c = self.config
        chosen = np.zeros(max(num_images, 1), dtype=bool)
        chosen[rng.choice(num_images, size=min(c.codebook_images, num_images), replace=False)] = True
        sample, offset = [], 0
        for images, _ in batches():
            self.check_size(images)
            picked = [images[i] for i in range(len(images)) if offset + i < len(chosen) and chosen[offset + i]]
            sample.extend(d for d, _ in self._map(picked, self.raw_local))
            offset += len(images)
        desc = np.concatenate(sample).astype(np.float64) if sample else np.zeros((0, 1))
        if len(desc) > c.codebook_descriptors:
            desc = desc[np.sort(rng.choice(len(desc), size=c.codebook_descriptors, replace=False))]
        if c.pca:
            from sklearn.decomposition import PCA

            if c.pca > min(desc.shape):
                raise UserError(
                    f"model.kwargs.pca: {c.pca} dimensions, but the descriptors have {desc.shape[1]} and "
                    f"{len(desc)} were sampled"
                )
            fitted = PCA(n_components=c.pca, random_state=seed).fit(desc)
            # Rebuilt from its arrays at once, so training, evaluation and a loaded model share one code path.
            self.pca = _pca_from_arrays(fitted.components_, fitted.mean_, fitted.explained_variance_)
            desc = self.pca.transform(desc)
        if c.encoding == "fisher":
            g = E.fit_gmm(desc, c.codebook, seed)
            self.gmm = E.gmm_from_arrays(g.weights_, g.means_, g.covariances_)
            kind = f"{c.codebook}-component diagonal GMM"
        else:
            self.centres = E.fit_kmeans(desc, c.codebook, seed)
            kind = f"{c.codebook}-word k-means vocabulary"
        say(
            f"{kind} from {len(desc)} {c.features.upper()} descriptors of {int(chosen.sum())} training images"
            + (f" (PCA to {c.pca} dimensions)" if c.pca else "")
        )

    def _training_vectors(self, batches: Batches, num_images: int) -> tuple[np.ndarray, np.ndarray]:
        # Filled batch by batch into one preallocated array: the vectors of a large set are the run's biggest
        # allocation, and stacking a list would need it twice.
        x: np.ndarray | None = None
        labels, n = [], 0
        for images, y in batches():
            v = self.vectors(images)
            if x is None:
                x = np.empty((max(num_images, len(v)), v.shape[1]))
            if n + len(v) > len(x):
                x = np.concatenate([x, np.empty((n + len(v) - len(x), x.shape[1]))])
            x[n : n + len(v)] = v
            labels.append(np.asarray(y, dtype=np.int64))
            n += len(v)
        if x is None or n == 0:
            raise UserError(f"{self.name}: no training images")
        return x[:n], np.concatenate(labels)

    def _fit_svm(self, x: np.ndarray, y: np.ndarray, seed: int):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        svm = LinearSVC(C=self.config.C, max_iter=self.config.max_iter, random_state=seed)
        with warnings.catch_warnings():
            # liblinear's iteration cap is a setting (max_iter), not an error: the fitted SVM is usable either way.
            warnings.simplefilter("ignore", ConvergenceWarning)
            return svm.fit(x, y)

    def _calibrate(self, x: np.ndarray, y: np.ndarray, seed: int, say) -> float:
        share = self.config.calibration
        if share <= 0:
            return 1.0
        from sklearn.model_selection import train_test_split

        try:
            fit_idx, held_idx = train_test_split(np.arange(len(y)), test_size=share, stratify=y, random_state=seed)
        except ValueError:
            say("too few images per class to hold some out for calibration: probabilities use T = 1")
            return 1.0
        if len(np.unique(y[fit_idx])) < len(np.unique(y)):
            say("too few images per class to hold some out for calibration: probabilities use T = 1")
            return 1.0
        svm = self._fit_svm(x[fit_idx], y[fit_idx], seed)
        decision = _columns(svm.decision_function(x[held_idx]))
        # Held-out labels index the classes the held-out SVM knows (every class is in its part: checked above).
        temperature = fit_temperature(decision, np.searchsorted(svm.classes_, y[held_idx]))
        say(f"softmax temperature {temperature:.4g} fitted on {len(held_idx)} held-out training images")
        return temperature

    # --- applying ------------------------------------------------------------------------------------------------

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        """The SVM's decision values of uint8 ``(N, H, W, C)`` images: ``(N, K)``, or ``(N,)`` with two classes."""
        if not self.fitted:
            raise UserError(f"{self.name}: not fitted (train it first: imgcls train --model {self.name} ...)")
        return self.svm.decision_function(self.vectors(images))

    def _logits_from_decision(self, decision: np.ndarray) -> np.ndarray:
        return _columns(decision) / self.temperature

    def logits(self, images: np.ndarray) -> np.ndarray:
        """``(N, num_classes)`` float64: decision values over the temperature (module docstring)."""
        return self._logits_from_decision(self.decision_function(images))

    # --- state as arrays -----------------------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as named arrays (what ``model.safetensors`` holds)."""
        if not self.fitted:
            return {}
        out = {
            "svm.coef": self.svm.coef_,
            "svm.intercept": np.asarray(self.svm.intercept_),
            "svm.classes": np.asarray(self.svm.classes_, dtype=np.int64),
            "calibration.temperature": np.array([self.temperature]),
        }
        if self.scaler is not None:
            out["scaler.mean"], out["scaler.scale"] = self.scaler.mean_, self.scaler.scale_
        if self.pca is not None:
            out["pca.components"], out["pca.mean"] = self.pca.components_, self.pca.mean_
            out["pca.explained_variance"] = self.pca.explained_variance_
        if self.centres is not None:
            out["codebook.centres"] = self.centres
        if self.gmm is not None:
            out["gmm.weights"], out["gmm.means"] = self.gmm.weights_, self.gmm.means_
            out["gmm.variances"] = self.gmm.covariances_
        return {
            k: np.ascontiguousarray(v, dtype=np.int64 if k == "svm.classes" else np.float64) for k, v in out.items()
        }

    def array_shapes(self, num_classes: int) -> dict[str, tuple[int, ...]]:
        """Name and shape of every array :meth:`arrays` gives once fitted for ``num_classes`` classes (all float64
        but ``svm.classes``, int64). A saved state must match them exactly."""
        c = self.config
        dim = self.vector_dim()
        rows = 1 if num_classes == 2 else num_classes
        shapes: dict[str, tuple[int, ...]] = {
            "svm.coef": (rows, dim),
            "svm.intercept": (rows,),
            "svm.classes": (num_classes,),
            "calibration.temperature": (1,),
        }
        if c.standardize:
            shapes["scaler.mean"] = shapes["scaler.scale"] = (dim,)
        d = self.descriptor_dim()
        if c.is_local and c.pca:
            shapes.update({"pca.components": (c.pca, d), "pca.mean": (d,), "pca.explained_variance": (c.pca,)})
            d = c.pca
        if c.encoding in ("bovw", "vlad"):
            shapes["codebook.centres"] = (c.codebook, d)
        if c.encoding == "fisher":
            shapes.update(
                {"gmm.weights": (c.codebook,), "gmm.means": (c.codebook, d), "gmm.variances": (c.codebook, d)}
            )
        return shapes

    def expected_keys(self) -> set[str]:
        return set(self.array_shapes(2))

    def load_arrays(self, arrays: dict[str, np.ndarray], num_classes: int) -> None:
        """Rebuild the fitted estimators from :meth:`arrays`; shapes are checked against the configuration.

        Raises:
            ValueError: a missing or unexpected array, or one whose shape does not fit (the message names it).
        """
        from sklearn.svm import LinearSVC

        c = self.config
        keys, expected = set(arrays), self.expected_keys()
        if keys != expected:
            raise ValueError(f"missing {sorted(expected - keys)[:3]}, unexpected {sorted(keys - expected)[:3]}")
        a = {k: np.asarray(v) for k, v in arrays.items()}
        for key, shape in self.array_shapes(num_classes).items():
            if a[key].shape != shape:
                raise ValueError(f"{key} has shape {a[key].shape}, {self.name}'s settings need {shape}")
        classes = a["svm.classes"].astype(np.int64)
        coef = a["svm.coef"]
        if not np.array_equal(classes, np.arange(num_classes)):
            raise ValueError(f"svm.classes {classes.tolist()[:5]} are not 0..{num_classes - 1}")
        dim = coef.shape[1]
        self.pca = self.centres = self.gmm = self.scaler = None
        if "pca.components" in a:
            self.pca = _pca_from_arrays(a["pca.components"], a["pca.mean"], a["pca.explained_variance"])
        if "codebook.centres" in a:
            self.centres = np.ascontiguousarray(a["codebook.centres"], np.float64)
        if "gmm.means" in a:
            self.gmm = E.gmm_from_arrays(a["gmm.weights"], a["gmm.means"], a["gmm.variances"])
        if "scaler.mean" in a:
            from sklearn.preprocessing import StandardScaler

            self.scaler = StandardScaler()
            self.scaler.mean_, self.scaler.scale_ = a["scaler.mean"], a["scaler.scale"]
            self.scaler.var_, self.scaler.n_features_in_ = a["scaler.scale"] ** 2, dim
        temperature = float(a["calibration.temperature"].reshape(-1)[0])
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"calibration.temperature {temperature} is not a positive number")
        svm = LinearSVC(C=c.C)
        svm.coef_, svm.intercept_, svm.classes_ = coef, a["svm.intercept"], classes
        svm.n_features_in_ = coef.shape[1]
        self.svm, self.temperature, self.num_classes = svm, temperature, num_classes

    def descriptor_dim(self) -> int:
        """Length of one local descriptor before PCA."""
        if self.config.features == "sift":
            return SIFT_DIM
        return 8 * (2 * 6 + 1)  # dense_daisy's defaults: (rings · histograms + 1) · orientations

    def vector_dim(self) -> int:
        """Length of the vector the SVM sees, from the settings alone (after the χ² map)."""
        c = self.config
        if c.features == "hog":
            blocks = max(0, c.image_size // c.hog_cell - c.hog_block + 1)
            n = blocks * blocks * c.hog_block * c.hog_block * c.hog_orientations
        elif c.features == "lbp":
            n = c.lbp_grid * c.lbp_grid * sum(int(p) + 2 for p, _ in c.lbp_scales)
        else:
            d = c.pca or self.descriptor_dim()
            per_cell = {"bovw": c.codebook, "vlad": c.codebook * d, "fisher": 2 * c.codebook * d}[c.encoding]
            n = E.pyramid_dim(c.pyramid) * per_cell
        return n * (2 * c.chi2_steps - 1) if c.kernel == "chi2" else n


def _pca_from_arrays(components: np.ndarray, mean: np.ndarray, explained_variance: np.ndarray):
    """A fitted scikit-learn PCA (no whitening) rebuilt from its arrays."""
    from sklearn.decomposition import PCA

    components, mean, explained_variance = (
        np.ascontiguousarray(a, np.float64) for a in (components, mean, explained_variance)
    )
    pca = PCA(n_components=components.shape[0])
    pca.components_, pca.mean_, pca.explained_variance_ = components, mean, explained_variance
    pca.n_components_, pca.n_features_in_ = components.shape
    return pca


def _columns(decision: np.ndarray) -> np.ndarray:
    """liblinear's ``(N,)`` binary decision values as two columns ``(0, d)``; ``(N, K)`` unchanged."""
    decision = np.asarray(decision, dtype=np.float64)
    if decision.ndim == 1:
        return np.stack([np.zeros_like(decision), decision], axis=1)
    return decision


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    from scipy.special import log_softmax

    return float(-log_softmax(logits, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(decision: np.ndarray, y: np.ndarray) -> float:
    """The ``T > 0`` minimising the log loss of ``softmax(decision / T)`` for labels ``y`` (a bounded search over
    ``log T`` in ``[-8, 8]``)."""
    from scipy.optimize import minimize_scalar

    decision = np.asarray(decision, dtype=np.float64)
    found = minimize_scalar(
        lambda log_t: _log_loss(decision / math.exp(log_t), y), bounds=(-8.0, 8.0), method="bounded"
    )
    return float(math.exp(found.x))


__all__ = ["ENCODINGS", "FEATURES", "ClassicPipeline", "FitReport", "PipelineConfig", "fit_temperature"]
