"""What a prediction answers, and the batching loop every predictor shares; no PyTorch here.

`Result` and `Prediction` are the answers of DESIGN.md's ``predict`` (text, JSON, CSV and the HTTP service all
write them). `BatchedPredictor` is the loop of :meth:`~BatchedPredictor.iter_predict`: inputs in batches, each
batch decoded on a thread pool while the network works on the previous one (Pillow releases the GIL while it
decodes, so the two overlap on a CPU), one answer per input in order, an unreadable input answered by its
error. `imgcls.inference.predictor.Predictor` (PyTorch) and `imgcls.inference.fastpath.FastPredictor` (ONNX
Runtime and NumPy only) fill in how a batch is decoded, stacked and scored.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.errors import UserError


@dataclass(frozen=True)
class Prediction:
    """One of the top-k answers for an image."""

    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class Result:
    """The answer for one input: its top-k predictions (and, for multi-label, the label set), or the one-line
    reason it could not be answered."""

    path: str
    predictions: tuple[Prediction, ...] = ()
    error: str | None = None
    labels: tuple[str, ...] | None = None  # multi-label: every class at or above its threshold, most probable first

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """The JSON object of DESIGN.md: ``{"path", "predictions": [...]}`` (plus ``"labels"`` for multi-label)
        or ``{"path", "error"}``."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        preds = [{"label": p.label, "index": p.index, "probability": p.probability} for p in self.predictions]
        out = {"path": self.path, "predictions": preds}
        if self.labels is not None:
            out["labels"] = list(self.labels)
        return out


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[str]:
    """Turn command-line inputs (files, folders, globs) into a list of paths, each input in the order given.

    A folder contributes its image files (by extension, as the data layer recognises them; recursively, sorted),
    a glob its matches (sorted). An input that yields nothing is kept as it is, so that it gets an answer of its
    own (an error) instead of vanishing.
    """
    from imgcls.data.reader import is_image_file

    paths: list[str] = []
    for item in items:
        text = os.fspath(item)
        if os.path.isdir(text):
            found = sorted(str(p) for p in Path(text).rglob("*") if is_image_file(p) and p.is_file())
        elif not os.path.exists(text) and glob.has_magic(text):
            found = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        else:
            found = []
        paths.extend(found or [text])
    return paths


class ArrayNormaliser:
    """uint8 ``(N, C, H, W)`` -> float32 ``(x - 255 mean) / (255 std)`` in NumPy, the same float32 operations as
    `imgcls.inference.predictor.Preprocess.normalise`. ONNX Runtime engines normalise with it, so PyTorch's thread
    pool is not woken (to spin beside ONNX Runtime's threads) before each run.

    Args:
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
    """

    def __init__(self, mean: Iterable[float], std: Iterable[float]):
        self.mean = (np.asarray(list(mean), dtype=np.float32) * np.float32(255.0)).reshape(1, -1, 1, 1)
        scaled = np.asarray(list(std), dtype=np.float32) * np.float32(255.0)
        self.inv_std = (np.float32(1.0) / scaled).reshape(1, -1, 1, 1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return (batch.astype(np.float32) - self.mean) * self.inv_std


def check_input(item) -> None:
    """Refuse a path that is a folder without images or matches nothing, with the reason predict reports."""
    from imgcls.data.reader import ImageError

    if isinstance(item, (str, os.PathLike)):
        text = os.fspath(item)
        if os.path.isdir(text):
            raise ImageError(text, "folder holds no image files")
        if not os.path.exists(text):
            raise ImageError(text, "no file matches this pattern" if glob.has_magic(text) else "file not found")


class BatchedPredictor:
    """The batching loop of a predictor (module docstring). A subclass sets ``batch_size`` and ``num_workers``
    and provides ``load`` (one input -> uint8 ``(C, H, W)``, raising ``ImageError``), ``stack`` (a list of those
    -> a batch) and ``answer_batch`` (a batch -> one Result per image, given their labels)."""

    batch_size: int
    num_workers: int

    def load(self, item):
        raise NotImplementedError

    def stack(self, arrays: list):
        raise NotImplementedError

    def answer_batch(self, labels: list[str], batch, topk: int) -> list[Result]:
        raise NotImplementedError

    def predict(self, inputs: Iterable, topk: int = 5) -> list[Result]:
        """Top-k answers for image files, encoded bytes or PIL images, one :class:`Result` per input, in order.

        An input that cannot be read gets a Result with its error; the others are unaffected.
        """
        return list(self.iter_predict(inputs, topk))

    def iter_predict(self, inputs: Iterable, topk: int = 5) -> Iterator[Result]:
        """Like :meth:`predict`, but yields each batch's answers as soon as they are ready (for long folders)."""
        if topk < 1:
            raise UserError(f"--topk must be at least 1 (got {topk})")
        items = list(inputs)
        if len(items) == 1:
            # One image (a batch-1 call, a served request): nothing to overlap, so decode it here and spare the
            # call a thread pool's start, hand-off and join.
            yield from self._answer(items, [self._load_or_error(items[0])], 0, topk)
            return
        chunks = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="imgcls-decode") as pool:
            # Decode one batch ahead so that reading files overlaps with the model's work.
            pending = [pool.submit(self._load_or_error, item) for item in chunks[0]] if chunks else []
            offset = 0
            for k, chunk in enumerate(chunks):
                current = pending
                if k + 1 < len(chunks):
                    pending = [pool.submit(self._load_or_error, item) for item in chunks[k + 1]]
                yield from self._answer(chunk, [f.result() for f in current], offset, topk)
                offset += len(chunk)

    def _load_or_error(self, item):
        from imgcls.data.reader import ImageError

        try:
            return self.load(item)
        except ImageError as exc:
            return one_line(getattr(exc, "reason", None) or str(exc))

    def _answer(self, chunk: list, decoded: list, offset: int, topk: int) -> Iterator[Result]:
        good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        labels = [describe(item, offset + i) for i, item in enumerate(chunk)]
        answers = []
        if good:
            answers = self.answer_batch([labels[i] for i in good], self.stack([decoded[i] for i in good]), topk)
        row = dict(zip(good, answers, strict=True))
        for i, d in enumerate(decoded):
            yield row[i] if i in row else Result(labels[i], error=d)


def describe(item, index: int) -> str:
    """How an input is named in its answer: its path, else ``<input N>``."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return f"<input {index}>"


def one_line(text: str) -> str:
    return " ".join(str(text).split())


__all__ = ["BatchedPredictor", "Prediction", "Result", "check_input", "describe", "expand_inputs", "one_line"]
