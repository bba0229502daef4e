"""The run report: built from a real run folder written here (metrics.csv, eval.json, samples.npz, model.json)."""

from __future__ import annotations

import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.errors import UserError
from imgcls.report import build_report, plots
from imgcls.run_folder import RunFolder


def _metrics_rows(epochs: int, k: int) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        top1 = 100 * (1 - 0.9 * math.exp(-e / 3))
        rows.append(
            {
                "epoch": e,
                "train_loss": 2.3 * math.exp(-e / 4),
                "val_loss": 2.3 * math.exp(-e / 5) + 0.1,
                "val_top1": top1,
                "val_top5": min(100.0, top1 + 15) if k >= 5 else "",
                "lr": 0.05 * (1 + math.cos(math.pi * (e - 1) / epochs)),
                "seconds": 12.5,
            }
        )
    return rows


def _confusion(k: int, n_per_class: int, gen: np.random.Generator) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    for i in range(k):
        right = int(n_per_class * gen.uniform(0.3, 0.95))
        cm[i, i] = right
        wrong = gen.integers(0, k, n_per_class - right)
        np.add.at(cm[i], wrong, 1)
    return cm


def make_run(root: Path, *, k: int = 10, epochs: int = 8, task: str = "multiclass", samples: int = 16) -> Path:
    """A run folder with every file the report reads, shaped as the engine writes them."""
    gen = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    classes = [f"class_{i:03d}" if i % 7 else f"a rather long class name {i}" for i in range(k)]
    rows = _metrics_rows(epochs, k)
    with open(root / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    evaluation = {"task": task, "classes": classes, "num_samples": 50 * k, "loss": 0.61}
    if task == "multilabel":
        ap = [float(v) for v in gen.uniform(0.2, 1.0, k)]
        ap[0] = None
        evaluation.update(
            top1=71.0, top5=None, mAP=100 * float(np.mean(ap[1:])), f1_micro=60.0, f1_macro=55.0,
            per_class={"ap": ap, "precision": [0.5] * k, "recall": [0.6] * k, "f1": [0.55] * k, "support": [9] * k},
        )  # fmt: skip
    else:
        cm = _confusion(k, 50, gen)
        recall = (np.diag(cm) / cm.sum(1)).tolist()
        precision = (np.diag(cm) / np.maximum(cm.sum(0), 1)).tolist()
        evaluation.update(
            top1=100 * np.trace(cm) / cm.sum(), top5=97.5 if k >= 5 else None, macro_f1=80.0,
            confusion_matrix=cm.tolist(),
            per_class={"precision": precision, "recall": recall, "f1": recall, "support": cm.sum(1).tolist()},
        )  # fmt: skip
    (root / "eval.json").write_text(json.dumps(evaluation))
    size = 32
    yy, xx = np.mgrid[:size, :size]
    images = np.stack(
        [
            np.stack([(xx * 8 + i * 20) % 256, (yy * 8) % 256, np.full_like(xx, 40 * i % 256)], -1)
            for i in range(samples)
        ]
    ).astype(np.uint8)
    kk = min(5, k)
    topk_probs = np.sort(gen.dirichlet(np.ones(k), samples), axis=1)[:, ::-1][:, :kk].astype(np.float32)
    topk_idx = np.stack([gen.permutation(k)[:kk] for _ in range(samples)])
    if task == "multilabel":
        targets = (gen.uniform(size=(samples, k)) < 0.3).astype(np.uint8)
    else:
        targets = np.where(gen.uniform(size=samples) < 0.6, topk_idx[:, 0], gen.integers(0, k, samples))
    np.savez_compressed(
        root / "samples.npz",
        images=images,
        index=np.arange(samples),
        targets=targets,
        topk_indices=topk_idx,
        topk_probs=topk_probs,
        classes=np.asarray(classes),
        task=np.asarray(task),
    )
    meta = {
        "name": "resnet18_cifar", "num_classes": k, "classes": classes, "input_size": [3, 32, 32], "task": task,
        "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "resize": 32,
    }  # fmt: skip
    (root / "model.json").write_text(json.dumps({**meta, "sha256": "ab" * 32}))
    config = {"data": {"spec": "cifar10"}, "train": {"epochs": epochs, "precision": "bf16"}, "git_commit": "0" * 40}
    (root / "config.json").write_text(json.dumps(config))
    return root


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in ("meta", "br", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags: {page.stack}"
    return page


# Expected pixel sizes: width × height ranges at the report's DPI.
SIZES = {
    "loss.png": ((500, 900), (300, 600)),
    "accuracy.png": ((500, 900), (300, 600)),
    "lr.png": ((500, 900), (300, 600)),
    "confusion.png": ((600, 3000), (600, 3000)),
    "per_class.png": ((600, 1000), (300, 3000)),
    "samples.png": ((1500, 2400), (600, 1400)),
}


def test_report_for_ten_classes(tmp_path):
    run = make_run(tmp_path / "run", k=10)
    html = build_report(run)
    assert html == run / "report" / "report.html"
    page = _parse(html)
    assert sorted(page.images) == sorted(SIZES)
    for name, ((w0, w1), (h0, h1)) in SIZES.items():
        with Image.open(run / "report" / name) as im:
            im.load()
            assert im.format == "PNG"
            assert w0 <= im.width <= w1 and h0 <= im.height <= h1, (name, im.size)
            assert np.asarray(im.convert("L")).std() > 5  # something was drawn
    text = " ".join(page.text)
    evaluation = json.loads((run / "eval.json").read_text())
    assert "resnet18_cifar" in text and "cifar10" in text
    assert f"{evaluation['top1']:.2f}%" in text and "97.50%" in text
    assert "1 min 40 s" in text  # 8 epochs × 12.5 s
    assert "a rather long class name 7" in text  # the per-class table


def test_confusion_and_per_class_grow_with_100_classes(tmp_path):
    gen = np.random.default_rng(1)
    sizes = {}
    for k in (10, 100):
        classes = [f"class_{i:03d}" for i in range(k)]
        cm = _confusion(k, 20, gen)
        with Image.open(plots.plot_confusion(cm, classes, tmp_path / f"cm{k}.png")) as im:
            sizes[k] = im.size
        if k == 100:
            recall = 100 * np.diag(cm) / cm.sum(1)
            with Image.open(plots.plot_per_class(recall, classes, tmp_path / "pc.png", label="accuracy")) as im:
                assert im.height / 100 >= 20  # a readable row per class
    assert sizes[100][0] > 1.8 * sizes[10][0] and sizes[100][1] > 1.8 * sizes[10][1]
    assert sizes[100][1] / 100 >= 12  # at least ~12 px per class row of the confusion matrix


def test_multilabel_and_partial_run_folders(tmp_path):
    run = make_run(tmp_path / "ml", k=6, task="multilabel", samples=5)
    page = _parse(build_report(run))
    assert "confusion.png" not in page.images  # no confusion matrix for multi-label
    assert {"per_class.png", "samples.png", "loss.png"} <= set(page.images)
    assert "mAP" in " ".join(page.text)

    bare = tmp_path / "bare"  # stopped before the final evaluation: curves only
    bare.mkdir()
    (bare / "metrics.csv").write_text("epoch,train_loss,val_loss,val_top1,val_top5,lr,seconds\n1,2.0,2.1,30,,0.1,5\n")
    page = _parse(build_report(bare))
    assert sorted(page.images) == ["accuracy.png", "loss.png", "lr.png"]


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_report(tmp_path / "missing")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,loss\n1,2\n")
    with pytest.raises(UserError, match=r"metrics\.csv"):
        build_report(run)
    (run / "metrics.csv").unlink()
    (run / "eval.json").write_text("{not json")
    with pytest.raises(UserError, match=r"eval\.json"):
        build_report(run)


def test_read_metrics_parses_numbers_and_blanks(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,val_loss,val_top1,val_top5,lr,seconds\n1,0.5,0.6,80.5,,0.1,3.25\n")
    assert RunFolder(tmp_path).read_metrics() == [
        {"epoch": 1.0, "train_loss": 0.5, "val_loss": 0.6, "val_top1": 80.5, "val_top5": None, "lr": 0.1,
         "seconds": 3.25}
    ]  # fmt: skip
    assert RunFolder(tmp_path / "absent").read_metrics() == []


def test_report_from_finalize_run(tmp_path):
    """End to end: the files finalize_run writes are what build_report reads."""
    from imgcls.engine.evaluate import finalize_run

    torch.manual_seed(0)
    k, n = 7, 30
    x = torch.randn(n, 1, 8, 8)
    y = torch.arange(n) % k
    data = SimpleNamespace(
        val=[(x[:16], y[:16]), (x[16:], y[16:])], task="multiclass", classes=[f"digit {i}" for i in range(k)],
        mean=[0.5], std=[0.25],
    )  # fmt: skip
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, k))
    finalize_run(tmp_path, model, data)
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,val_loss,val_top1,val_top5,lr,seconds\n1,2,2,10,50,0.1,1\n")
    page = _parse(build_report(tmp_path))
    assert {"confusion.png", "per_class.png", "samples.png"} <= set(page.images)
    with Image.open(tmp_path / "report" / "samples.png") as im:
        assert im.width > 1000


# --- issue 11 items 6 and 12: best and last, the shipped weights, honest figures, readable axes -----------------


def _text(page: _Page) -> str:
    return " ".join(" ".join(page.text).split())


def test_best_and_last_are_both_shown_and_the_shipped_one_is_named(tmp_path):
    run = make_run(tmp_path / "run", k=10, epochs=8)
    rows = RunFolder(run).read_metrics()
    rows[5]["val_top1"], rows[5]["val_loss"] = 99.0, 0.05  # epoch 6 is the best; epoch 8 the last
    RunFolder(run).write_metrics(list(rows[0]), rows)
    text = _text(_parse(build_report(run)))
    assert "best epoch 6 (top-1 99.00%, val loss 0.0500)" in text
    last = rows[-1]
    assert f"last epoch 8 (top-1 {last['val_top1']:.2f}%, val loss {last['val_loss']:.4f})" in text
    assert "shipped weights epoch 6 (the best epoch by validation top-1)" in text
    assert "optimistic" in text and "test/" in text  # chosen on the only held-out split

    config = json.loads((run / "config.json").read_text())
    config["train"]["save"] = "last"
    (run / "config.json").write_text(json.dumps(config))
    text = _text(_parse(build_report(run)))
    assert "shipped weights epoch 8 (the last epoch)" in text and "optimistic" not in text


def test_the_engines_record_is_used_and_a_test_split_is_reported_apart(tmp_path):
    run = make_run(tmp_path / "run", k=10, epochs=8)
    folder = RunFolder(run)
    config = folder.read_config()
    config["run"] = {"selection": {  # as the engine records it at the end of a run
        "metric": "top1", "column": "val_top1", "rule": "best", "best_epoch": 3, "best_value": 91.25,
        "last_epoch": 8, "last": {"epoch": 8, "val_top1": 90.5, "val_loss": 0.35}, "shipped_epoch": 3,
        "seconds": 754.2,
    }}  # fmt: skip
    folder.write_config(config)
    evaluation = folder.read_eval()
    evaluation["test"] = {"top1": 88.125, "top5": 99.0, "num_samples": 321}
    folder.write_eval(evaluation)
    page = _parse(build_report(run))
    text = _text(page)
    assert "training time 12 min 34 s (the whole run" in text  # the recorded figure, not the sum of epochs
    assert "best epoch 3 (top-1 91.25%" in text and "last epoch 8 (top-1 90.50%, val loss 0.3500)" in text
    assert "shipped weights epoch 3 (the best epoch by validation top-1)" in text
    assert "test (shipped weights) top-1 88.12% / top-5 99.00% on 321 images, evaluated once" in text
    assert "88.12%" in text.split("Run")[0]  # the test figure is the headline
    assert "optimistic" not in text  # the unbiased figure is there


def test_two_classes_never_say_top_5(tmp_path):
    run = make_run(tmp_path / "run", k=2, epochs=3)
    page = _parse(build_report(run))
    text = _text(page)
    assert "top-5" not in text and "top-2 predictions" in text
    with np.load(run / "samples.npz") as npz:
        fig = plots.samples_figure(npz["images"], npz["targets"], npz["topk_indices"], npz["topk_probs"], ["a", "b"])
    titles = [t.get_text() for t in fig.axes[0].texts if "Validation images" in t.get_text()]
    assert titles and "top-2 predictions" in titles[0] and "top-5" not in titles[0]


def test_one_loss_spike_does_not_flatten_the_curve():
    rows = _metrics_rows(10, 10)
    ordinary = [r["train_loss"] for r in rows] + [r["val_loss"] for r in rows]
    rows[6]["val_loss"] = 4e4  # one diverging epoch
    ax = plots.loss_figure(rows).axes[0]
    low, top = ax.get_ylim()
    assert top < 100 and top >= max(ordinary)
    assert (max(ordinary) - min(ordinary)) / (top - low) > 0.5  # the ordinary curve fills most of the axis
    assert any(t.get_text() == "4e+04" for t in ax.texts)  # the spike's value is written at the edge
    assert "spike" in ax.get_title()
    # A normal curve (high first epochs included) is not clipped.
    plain = plots.loss_figure(_metrics_rows(10, 10)).axes[0]
    assert plain.get_ylim()[1] >= max(ordinary) and "spike" not in plain.get_title()
    assert plots.spikes(np.array([2.3, 1.2, 0.9, 0.8])).tolist() == [False] * 4
    assert plots.spikes(np.array([1.0, 1e4])).tolist() == [False, True]


@pytest.mark.parametrize("epochs", [1, 3, 13, 18, 19, 20, 21, 25, 100])
def test_epoch_ticks_are_whole_numbers(epochs):
    rows = _metrics_rows(epochs, 10)
    for fig in (plots.loss_figure(rows), plots.accuracy_figure(rows), plots.lr_figure(rows)):
        ax = fig.axes[0]
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_real_run_reports_the_time_the_console_printed(tmp_path, capsys):
    from imgcls.cli import main

    run = tmp_path / "run"
    argv = ["train", "--recipe", "digits", "--epochs", "2", "--out", str(run), "--set", "train.progress=none"]
    assert main(argv) == 0
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("imgcls: done in ")]
    selection = RunFolder(run).read_config()["run"]["selection"]
    seconds = round(selection["seconds"])
    assert done and done[0].startswith(f"imgcls: done in {seconds // 60}:{seconds % 60:02d}")
    minutes, rest = divmod(seconds, 60)
    shown = f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"
    text = _text(_parse(RunFolder(run).report_page))
    assert f"training time {shown} (the whole run" in text
    assert f"shipped weights epoch {selection['shipped_epoch']} (the best epoch by validation top-1)" in text
