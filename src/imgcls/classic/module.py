"""`ClassicModel`: a classic pipeline behind the zoo's ``nn.Module`` face, so every verb treats it as a model.

Evaluation, the report, ``predict`` and ``serve`` hand a model float batches ``(N, C, H, W)`` normalised with
``model.json``'s mean and std and read logits back. A classic run is saved with mean 0 and std 1, so a batch is
``pixels / 255``: :meth:`ClassicModel.forward` rounds it back to the exact uint8 pixels, runs the pipeline on them
(NumPy, scikit-image, OpenCV, scikit-learn: no autograd) and returns its logits (SVM decision values over the
calibrated temperature, `imgcls.classic.pipeline`), so softmax gives the calibrated probabilities and top-k is the
SVM's ranking.

Its ``state_dict()`` is the pipeline's arrays as tensors and ``load_state_dict()`` rebuilds the estimators from
them, so `imgcls.engine.bundle` saves it to ``model.safetensors`` and loads it back after the SHA-256 check like
any network. It has no parameters, so nothing trains it by gradient: ``imgcls train`` fits it through
`imgcls.engine.classic_fit`. Tracing or exporting it is refused (its work is not a torch graph).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from imgcls.classic.pipeline import ClassicPipeline, FitReport, PipelineConfig
from imgcls.errors import UserError


class _Keys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def not_applicable(what: str, name: str) -> UserError:
    """The one-line refusal of a verb or option that classic pipelines do not support."""
    return UserError(f"{what} does not apply to classical pipeline models ({name} is hand-made features + an SVM)")


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """Float ``(N, C, H, W)`` in ``[0, 1]`` (pixels / 255) → uint8 ``(N, H, W, C)`` NumPy, exactly rounded."""
    pixels = (x.detach().to("cpu", torch.float32) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


class ClassicModel(nn.Module):
    """A :class:`ClassicPipeline` as a module (module docstring).

    Args:
        name: the registered name.
        num_classes: classes of the SVM (set again by :meth:`fit` from the data).
        in_chans: 1 (grey) or 3 (RGB) input channels.
        config: the pipeline's settings.
    """

    is_classic = True  # what the verbs that do not apply check (imgcls.classic.is_classic)

    def __init__(self, name: str, num_classes: int, in_chans: int, config: PipelineConfig):
        super().__init__()
        if in_chans not in (1, 3):
            raise UserError(f"{name}: in_chans must be 1 or 3, got {in_chans}")
        self.model_name = name
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.pipeline = ClassicPipeline(config, name)

    @property
    def config(self) -> PipelineConfig:
        return self.pipeline.config

    @property
    def num_features(self) -> int:
        """Length of the vector the SVM sees (0 before fitting)."""
        return int(self.pipeline.svm.coef_.shape[1]) if self.pipeline.fitted else 0

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{self.model_name}: {c.features}, encoding={c.encoding}, kernel={c.kernel}, fitted={self.pipeline.fitted}"
        )

    # --- fitting ---------------------------------------------------------------------------------------------------

    def fit(
        self, images: np.ndarray | torch.Tensor, labels, seed: int = 0, batch_size: int = 512, log=None
    ) -> FitReport:
        """Fit on uint8 images ``(N, C, H, W)`` (the zoo's layout) with class indices ``labels``.

        ``num_classes`` becomes ``max(labels) + 1`` unless the model was built with more.
        """
        images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        labels = np.asarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"expected uint8 images (N, {self.in_chans}, H, W), got {images.dtype} {images.shape}")
        hwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        self.num_classes = max(self.num_classes, int(labels.max()) + 1)

        def batches():
            for i in range(0, len(hwc), batch_size):
                yield hwc[i : i + batch_size], labels[i : i + batch_size]

        return self.pipeline.fit(batches, len(hwc), self.num_classes, seed=seed, log=log)

    # --- the module interface --------------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The vectors the SVM sees, ``(N, num_features)`` float32."""
        self._check_runnable(x)
        return torch.from_numpy(self.pipeline.vectors(to_uint8_images(x)).astype(np.float32)).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``(N, C, H, W)`` = pixels / 255 → logits ``(N, num_classes)`` float32 (module docstring)."""
        self._check_runnable(x)
        logits = self.pipeline.logits(to_uint8_images(x))
        return torch.from_numpy(logits.astype(np.float32)).to(x.device)

    def _check_runnable(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            raise not_applicable("tracing and export", self.model_name)
        if x.device.type == "meta" or not self.pipeline.fitted:
            raise UserError(
                f"{self.model_name} is not fitted: a classical pipeline has no layers to run or profile before it is "
                f"trained (imgcls train --model {self.model_name} ...)"
            )
        s = self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_chans, s, s):
            raise UserError(f"{self.model_name} takes (N, {self.in_chans}, {s}, {s}) input, got {tuple(x.shape)}")

    def reset_classifier(self, num_classes: int) -> None:
        """Forget the fitted state (a new number of classes needs a new fit)."""
        self.pipeline = ClassicPipeline(self.config, self.model_name, self.pipeline.workers)
        self.num_classes = int(num_classes)

    # --- the state as arrays ---------------------------------------------------------------------------------------

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False) -> dict[str, Any]:
        """The pipeline's fitted arrays as CPU tensors; before fitting, zeros of the shapes a fit gives (as a fresh
        network's state holds its initial values), so a saved state can be checked against a new model."""
        out = destination if destination is not None else OrderedDict()
        if self.pipeline.fitted:
            arrays = self.pipeline.arrays()
        else:
            shapes = self.pipeline.array_shapes(self.num_classes)
            arrays = {k: np.zeros(v, dtype=np.int64 if k == "svm.classes" else np.float64) for k, v in shapes.items()}
        for key, value in arrays.items():
            out[prefix + key] = torch.from_numpy(value.copy())
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False) -> _Keys:
        """Rebuild the fitted pipeline from :meth:`state_dict`'s arrays.

        Returns ``(missing_keys, unexpected_keys)``; with ``strict`` a key mismatch raises instead. Arrays whose
        shapes do not fit the settings are a UserError naming the first one.
        """
        expected = self.pipeline.expected_keys()
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unexpected:
            if strict:
                raise RuntimeError(f"{self.model_name}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")
            return _Keys(missing, unexpected)
        arrays = {k: v.detach().to("cpu").numpy() for k, v in state_dict.items()}
        try:
            self.pipeline.load_arrays(arrays, self.num_classes)
        except ValueError as exc:
            raise UserError(f"{self.model_name}: the saved arrays do not fit its settings ({exc})") from None
        return _Keys([], [])


__all__ = ["ClassicModel", "not_applicable", "to_uint8_images"]
