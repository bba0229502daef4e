"""The interface every model in the zoo offers, so engine, export and tests never special-case a family."""

from __future__ import annotations

from torch import Tensor, nn


class Classifier(nn.Module):
    """Base class: ``forward(x) == forward_head(forward_features(x))``.

    Subclasses set ``num_features`` (width of what the head sees) and implement ``forward_features``,
    ``forward_head`` and ``reset_classifier``. Models with auxiliary heads return ``(logits, aux1, ...)``
    from ``forward`` in training mode only; in eval mode every model returns the logits tensor alone.
    """

    num_features: int
    num_classes: int

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
