"""evaluate_model, test-time augmentation and the files finalize_run writes, on tiny models and in-memory loaders."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from imgcls.engine.evaluate import evaluate_model, finalize_run
from imgcls.run_folder import RunFolder

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.2)


class TensorLoader:
    """The data layer's loader contract in miniature: `iterate()` yields `(x, y)` batches in a fixed order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def iterate(self, start_batch: int = 0):
        for i in range(start_batch * self.batch_size, len(self.x), self.batch_size):
            yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]


class FirstPixels(nn.Module):
    """Logits = the first K pixel values: predictions are set by the input, so they can be counted by hand."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return x.flatten(1)[:, : self.num_classes]


class MirrorSymmetricNet(nn.Module):
    """Conv with left-right symmetric kernels + global pooling: exactly invariant to horizontal flips."""

    def __init__(self, in_chans: int = 3, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():
            self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class TinyConvNet(nn.Module):
    """A small net that is not flip invariant (a column-position-dependent head)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 5, size: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.fc = nn.Linear(4 * size, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=2).flatten(1))  # pools rows only: (N, 4·W)


def _images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen)


def test_top1_top5_and_loss_equal_hand_counts():
    k, n = 6, 10
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, 4, 4)
    x.view(n, -1)[:, :k] = torch.randn(n, k, generator=gen)
    logits = x.view(n, -1)[:, :k]
    order = logits.argsort(dim=1, descending=True)
    # Targets: rank 1 for samples 0–3, rank 3 for 4–6, rank 6 (last) for 7–9 → top-1 4/10, top-5 7/10.
    ranks = [0, 0, 0, 0, 2, 2, 2, 5, 5, 5]
    y = torch.stack([order[i, r] for i, r in enumerate(ranks)])
    res = evaluate_model(FirstPixels(k), TensorLoader(x, y, batch_size=3), task="multiclass")
    assert res.top1 == pytest.approx(40.0)
    assert res.top5 == pytest.approx(70.0)
    expected_loss = torch.nn.functional.cross_entropy(logits, y).item()
    assert res.loss == pytest.approx(expected_loss, rel=1e-6)  # batches 3, 3, 3, 1 weighted by size
    assert res.logits.shape == (n, k) and torch.equal(res.targets, y)
    assert res.metrics["confusion_matrix"][y[0]][y[0]] >= 1
    assert sum(map(sum, res.metrics["confusion_matrix"])) == n


def test_plain_iterable_loader_and_top5_none_under_five_classes():
    x = _images(7)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    res = evaluate_model(TinyConvNet(num_classes=3), batches, task="multiclass")
    assert res.top5 is None
    assert res.num_samples == 7


def test_flip_tta_of_flip_invariant_model_equals_no_tta():
    torch.manual_seed(0)
    model = MirrorSymmetricNet()
    x = _images(12)
    y = torch.randint(0, 5, (12,))
    plain = evaluate_model(model, TensorLoader(x, y, 5), task="multiclass")
    flip = evaluate_model(model, TensorLoader(x, y, 5), task="multiclass", tta="flip")
    assert torch.allclose(torch.softmax(flip.logits, 1), torch.softmax(plain.logits, 1), atol=1e-6)
    assert flip.top1 == plain.top1 and flip.top5 == plain.top5
    assert flip.loss == pytest.approx(plain.loss, rel=1e-5)


def test_flip_tta_averages_probabilities_of_image_and_mirror():
    torch.manual_seed(1)
    model = TinyConvNet().eval()
    x = _images(9)
    y = torch.randint(0, 5, (9,))
    res = evaluate_model(model, TensorLoader(x, y, 4), task="multiclass", tta="flip")
    with torch.no_grad():
        expected = (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(-1)), 1)) / 2
    assert torch.allclose(torch.softmax(res.logits, 1), expected, atol=1e-6)
    assert res.loss == pytest.approx(torch.nn.functional.nll_loss(expected.log(), y).item(), rel=1e-5)


def test_flip_tta_multilabel_averages_sigmoids():
    torch.manual_seed(2)
    model = TinyConvNet(num_classes=4).eval()
    x = _images(6)
    y = (torch.rand(6, 4) < 0.5).float()
    res = evaluate_model(model, TensorLoader(x, y, 6), task="multilabel", tta="flip")
    with torch.no_grad():
        expected = (torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(-1)))) / 2
    assert torch.allclose(torch.sigmoid(res.logits), expected, atol=1e-6)
    assert res.top5 is None and res.metrics["mAP"] is not None


def test_ten_crop_tta_averages_the_ten_hand_cut_crops():
    torch.manual_seed(3)
    model = MirrorSymmetricNet(num_classes=5).eval()
    x = _images(4, size=10)
    y = torch.tensor([0, 1, 2, 3])
    res = evaluate_model(model, TensorLoader(x, y, 3), task="multiclass", tta="ten-crop", crop_size=8)
    s, big = 8, 10
    corners = [(0, 0), (0, big - s), (big - s, 0), (big - s, big - s), ((big - s) // 2, (big - s) // 2)]
    crops = [x[:, :, t : t + s, left : left + s] for t, left in corners]
    crops += [c.flip(-1) for c in crops]
    with torch.no_grad():
        expected = torch.stack([torch.softmax(model(c), 1) for c in crops]).mean(0)
    assert torch.allclose(torch.softmax(res.logits, 1), expected, atol=1e-5)


def test_bf16_autocast_agrees_with_fp32_and_model_mode_is_restored():
    torch.manual_seed(4)
    model = TinyConvNet(num_classes=5)
    model.train()
    x = _images(16)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # well-defined targets: the fp32 predictions
    model.train()
    fp32 = evaluate_model(model, TensorLoader(x, y, 8), task="multiclass")
    bf16 = evaluate_model(model, TensorLoader(x, y, 8), task="multiclass", precision="bf16")
    assert model.training
    assert fp32.top1 == 100.0
    assert bf16.top1 >= 75.0  # bf16 rounding may flip a near-tie, not most predictions
    assert torch.allclose(bf16.logits, fp32.logits, atol=0.1)


def test_binary_single_logit_model_reports_auc():
    gen = torch.Generator().manual_seed(5)
    y = torch.randint(0, 2, (40,), generator=gen)
    x = torch.zeros(40, 1, 2, 2)
    x[:, 0, 0, 0] = (y.float() * 2 - 1) + 0.8 * torch.randn(40, generator=gen)
    res = evaluate_model(FirstPixels(1), TensorLoader(x, y, 16), task="binary")
    from sklearn.metrics import roc_auc_score

    assert res.metrics["auc"] == pytest.approx(roc_auc_score(y.numpy(), x[:, 0, 0, 0].numpy()))
    assert res.top1 == pytest.approx(100.0 * ((x[:, 0, 0, 0] > 0).long() == y).float().mean().item())
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x[:, 0, 0, 0], y.float())
    assert res.loss == pytest.approx(bce.item(), rel=1e-6)


def _fake_data(n: int = 23, k: int = 5, size: int = 8):
    gen = torch.Generator().manual_seed(6)
    pixels = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = (pixels.float() / 255 - mean) / std
    y = torch.arange(n) % k
    data = SimpleNamespace(
        val=TensorLoader(x, y, 6),
        task="multiclass",
        classes=[f"class_{i}" for i in range(k)],
        mean=list(MEAN),
        std=list(STD),
    )
    return data, pixels


def test_finalize_run_writes_valid_files(tmp_path):
    torch.manual_seed(7)
    data, pixels = _fake_data()
    model = TinyConvNet(num_classes=5)
    out = finalize_run(tmp_path, model, data)
    ref = evaluate_model(model, data.val, task="multiclass")

    saved = json.loads(RunFolder(tmp_path).eval.read_text())
    assert saved == out
    assert saved["top1"] == pytest.approx(ref.top1) and saved["top5"] == pytest.approx(ref.top5)
    assert saved["classes"] == data.classes and saved["task"] == "multiclass"
    assert np.asarray(saved["confusion_matrix"]).shape == (5, 5)
    assert len(saved["per_class"]["recall"]) == 5

    with open(RunFolder(tmp_path).predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 23
    assert list(rows[0]) == ["index", "target"] + [f"pred_{i}" for i in range(1, 6)] + [
        f"prob_{i}" for i in range(1, 6)
    ]
    probs = torch.softmax(ref.logits, 1)
    for i, row in enumerate(rows):
        assert int(row["index"]) == i and int(row["target"]) == int(data.val.y[i])
        assert int(row["pred_1"]) == int(probs[i].argmax())
        p = [float(row[f"prob_{j}"]) for j in range(1, 6)]
        assert p == sorted(p, reverse=True) and sum(p) == pytest.approx(1.0, abs=1e-4)

    with np.load(RunFolder(tmp_path).samples, allow_pickle=False) as npz:
        assert npz["images"].dtype == np.uint8 and npz["images"].shape[1:] == (8, 8, 3)
        idx = npz["index"]
        assert 1 < len(idx) <= 16 and idx[0] == 0 and idx[-1] == 22  # spread over the whole split
        # Un-normalising gives back the original pixels.
        assert np.array_equal(npz["images"], pixels[idx].permute(0, 2, 3, 1).numpy())
        assert np.array_equal(npz["targets"], data.val.y[idx].numpy())
        assert np.array_equal(npz["topk_indices"][:, 0], probs[idx].argmax(1).numpy())
        assert npz["topk_probs"].shape == (len(idx), 5)
        assert list(npz["classes"]) == data.classes and str(npz["task"]) == "multiclass"


class CountingNet(nn.Module):
    """A wrapper that counts the images its forward sees."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.num_classes, self.seen = net, net.num_classes, 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.net(x)


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_finalize_run_reuses_the_last_validation_and_writes_the_same_files(tmp_path, tta):
    torch.manual_seed(7)
    data, _ = _fake_data()
    model = CountingNet(TinyConvNet(num_classes=5))
    fresh = finalize_run(tmp_path / "fresh", model, data, tta=tta)
    passes = model.seen
    model.seen = 0
    validated = evaluate_model(model, data.val, task="multiclass")
    model.seen = 0
    reused = finalize_run(tmp_path / "reused", model, data, tta=tta, validated=validated)
    # tta none: no pass of the model at all; flip: only the mirror view (the plain view and the calibration's
    # single views are the validation's).
    assert passes == 23 * (1 if tta == "none" else 3)
    assert model.seen == (0 if tta == "none" else 23)
    assert reused == fresh
    fresh_run, reused_run = RunFolder(tmp_path / "fresh"), RunFolder(tmp_path / "reused")
    assert fresh_run.predictions.read_bytes() == reused_run.predictions.read_bytes()
    with np.load(fresh_run.samples) as f, np.load(reused_run.samples) as r:
        assert sorted(f.files) == sorted(r.files)
        for key in f.files:
            assert np.array_equal(f[key], r[key]), key


def test_finalize_run_multilabel(tmp_path):
    torch.manual_seed(8)
    data, _ = _fake_data(n=10, k=4)
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(10, 4, generator=gen) < 0.4).float()
    y[0] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    data.val = TensorLoader(data.val.x, y, 4)
    data.task = "multilabel"
    out = finalize_run(tmp_path, TinyConvNet(num_classes=4), data)
    assert out["mAP"] is not None and "confusion_matrix" not in out
    with open(RunFolder(tmp_path).predictions, newline="") as f:
        first = next(csv.DictReader(f))
    assert first["target"] == "0;2"
    with np.load(RunFolder(tmp_path).samples, allow_pickle=False) as npz:
        assert npz["targets"].shape == (10, 4)


_RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist
    from torch import nn
    from imgcls.engine.evaluate import evaluate_model

    rank, store = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 7))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(13, 3, 8, 8, generator=gen), torch.randint(0, 7, (13,), generator=gen)
    full = evaluate_model(model, [(x[:5], y[:5]), (x[5:], y[5:])], task="multiclass")
    shard = slice(0, 8) if rank == 0 else slice(8, 13)  # uneven shards: 8 and 5 samples
    part = evaluate_model(model, [(x[shard], y[shard])], task="multiclass", distributed=True)
    same = torch.allclose(part.logits, full.logits, atol=1e-6) and torch.equal(part.targets, full.targets)
    print(json.dumps({"same": same, "top1": [part.top1, full.top1], "loss": [part.loss, full.loss],
                      "n": part.num_samples}))
    dist.destroy_process_group()
    """
)


def test_distributed_gathers_uneven_shards_like_one_process(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(tmp_path / "store")], env=env, stdout=subprocess.PIPE, text=True
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    for out in outs:
        got = json.loads(out.strip().splitlines()[-1])
        assert got["same"] and got["n"] == 13
        assert got["top1"][0] == pytest.approx(got["top1"][1])
        assert got["loss"][0] == pytest.approx(got["loss"][1])


# --- imgcls eval: a real run folder, a real image folder --------------------------------------------------------


def _image_folder(root, classes, per_class: int = 4, size: int = 40, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", per_class + 1)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 120, (size, size)) + 60 * c  # class sets the brightness
                Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    return root


def _run_folder(run, data_root, classes, *, resize: int = 36):
    from imgcls import create_model
    from imgcls.engine.bundle import ModelMeta, save_bundle

    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=len(classes), in_chans=1)
    meta = ModelMeta(
        name="lenet5", num_classes=len(classes), classes=list(classes), input_size=[1, 32, 32], mean=[0.45],
        std=[0.3], resize=resize, in_chans=1,
    )  # fmt: skip
    save_bundle(run, model, meta)
    config = {"data": {"spec": str(data_root), "workers": 1, "batch_size": 4}, "train": {"seed": 0}}
    (run / "config.json").write_text(json.dumps(config))
    return model.eval(), meta


@pytest.fixture
def eval_run(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "cache"))
    classes = ["bright", "dark", "mid"]
    data_root = _image_folder(tmp_path / "pictures", classes)
    model, meta = _run_folder(tmp_path / "run", data_root, classes)
    return SimpleNamespace(run=tmp_path / "run", data_root=data_root, model=model, meta=meta, tmp=tmp_path)


def test_eval_matches_predicting_each_file_by_hand(eval_run):
    from imgcls.data import load_for_eval
    from imgcls.engine.evaluate import evaluate

    out = evaluate(eval_run.run)
    cm = np.zeros((3, 3), dtype=np.int64)
    for c, name in enumerate(eval_run.meta.classes):
        for path in sorted((eval_run.data_root / "val" / name).iterdir()):
            pixels = load_for_eval(path, 32, 36, 1).float() / 255
            x = ((pixels - 0.45) / 0.3)[None]
            with torch.no_grad():
                cm[c, int(eval_run.model(x).argmax())] += 1
    assert out["num_samples"] == 15
    assert out["confusion_matrix"] == cm.tolist()
    assert out["top1"] == pytest.approx(100 * np.trace(cm) / 15)
    assert out["top5"] is None and out["classes"] == eval_run.meta.classes
    json.dumps(out, allow_nan=False)


def test_eval_flip_and_ten_crop_run_on_the_real_loader(eval_run):
    from imgcls.engine.evaluate import evaluate

    for tta in ("flip", "ten-crop"):
        out = evaluate(eval_run.run, tta=tta)
        assert out["tta"] == tta and out["num_samples"] == 15
        assert 0 <= out["top1"] <= 100 and out["loss"] > 0


def test_eval_refuses_a_folder_with_other_classes_and_a_missing_run(eval_run):
    from imgcls.engine.evaluate import evaluate
    from imgcls.errors import UserError

    other = _image_folder(eval_run.tmp / "other", ["bright", "dark", "zebra"], per_class=2)
    with pytest.raises(UserError, match=r"other/val: class folder\(s\) the run does not know: zebra"):
        evaluate(eval_run.run, data=str(other))
    with pytest.raises(UserError, match="run folder not found"):
        evaluate(eval_run.tmp / "nope")
    with pytest.raises(UserError, match="--tta"):
        evaluate(eval_run.run, tta="sideways")


def test_eval_on_given_data_is_all_of_it_and_its_own_data_the_validation_split(eval_run):
    """Issue 11 item 5: `eval --data FOLDER` of class subfolders evaluated a seeded 10 % of it (2 of 15 here)."""
    from imgcls.engine.evaluate import evaluate

    flat = eval_run.data_root / "val"  # class subfolders and nothing else: all 15 images are the data
    out = evaluate(eval_run.run, data=str(flat))
    assert (out["split"], out["num_samples"]) == ("all", 15)
    fewer = _image_folder(eval_run.tmp / "fewer", ["dark", "mid"], per_class=1)  # a subset of the run's classes
    out = evaluate(eval_run.run, data=str(fewer / "train"))
    assert (out["split"], out["num_samples"]) == ("all", 2)
    assert sum(map(sum, out["confusion_matrix"])) == 2 and sum(out["confusion_matrix"][0]) == 0  # no "bright" row
    own = evaluate(eval_run.run)  # the run's own data (train/ + val/): its validation split only
    assert (own["split"], own["num_samples"]) == ("val", 15)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_evaluation_agrees_with_cpu():
    torch.manual_seed(9)
    model = TinyConvNet(num_classes=5).eval()
    x = _images(32)
    with torch.no_grad():
        y = model(x).argmax(1)
    cpu = evaluate_model(model, TensorLoader(x, y, 8), task="multiclass")
    gpu = evaluate_model(model.cuda(), TensorLoader(x, y, 8), task="multiclass", device="cuda", precision="bf16")
    assert gpu.logits.device.type == "cpu"
    assert torch.allclose(gpu.logits, cpu.logits, atol=0.1)
    assert gpu.top1 >= 75.0  # bf16 rounding may flip a near-tie, not most predictions


# --- audit (issue 11): TTA views and weights on inputs whose answer is known ------------------------------------


class Recorder(nn.Module):
    """Keeps every batch it is shown and answers the same logits for any input (its softmax is fixed)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.seen: list[torch.Tensor] = []
        self.logits = torch.tensor([1.0, -0.5, 2.0, 0.25][:num_classes])

    def forward(self, x):
        self.seen.append(x.clone())
        return self.logits.expand(x.shape[0], -1)


@pytest.mark.parametrize("tta", ["none", "flip", "flip-translate", "ten-crop"])
def test_tta_weights_sum_to_one(tta):
    """A model that answers the same for every view: any weighted average whose weights sum to 1 returns it."""
    model = Recorder(3)
    x = _images(5, size=10)
    y = torch.tensor([0, 1, 2, 0, 1])
    res = evaluate_model(model, TensorLoader(x, y, 5), task="multiclass", tta=tta, crop_size=8)
    assert torch.allclose(torch.softmax(res.logits, 1), torch.softmax(model.logits, 0).expand(5, -1), atol=1e-6)
    assert len(model.seen) == {"none": 1, "flip": 2, "flip-translate": 6, "ten-crop": 10}[tta]


def test_flip_translate_weights_and_views_on_a_known_image():
    from imgcls.engine.evaluate import flip_translate_views

    h, w = 5, 6
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)  # pixel value = its index

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    def shifted(dy: int, dx: int) -> torch.Tensor:  # view[i, j] = x[i + dy, j + dx], reflected at the border
        return torch.tensor([[x[0, 0, reflect(i + dy, h), reflect(j + dx, w)] for j in range(w)] for i in range(h)])

    views, weights = flip_translate_views(x)
    assert sum(weights) == pytest.approx(1.0) and weights == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    expected = [x[0, 0], x[0, 0].flip(-1), shifted(1, 1), shifted(1, 1).flip(-1), shifted(-1, -1)]
    expected.append(shifted(-1, -1).flip(-1))
    for got, want in zip(views, expected, strict=True):
        assert torch.equal(got[0, 0], want)


def test_flip_translate_averages_probabilities_with_airbench_weights():
    from imgcls.engine.evaluate import flip_translate_views

    torch.manual_seed(9)
    model = TinyConvNet(num_classes=5).eval()
    x = _images(7)
    y = torch.randint(0, 5, (7,))
    res = evaluate_model(model, TensorLoader(x, y, 4), task="multiclass", tta="flip-translate")
    views, weights = flip_translate_views(x)
    with torch.no_grad():
        expected = sum(wt * torch.softmax(model(v), 1) for v, wt in zip(views, weights))
        logit_average = torch.softmax(sum(wt * model(v) for v, wt in zip(views, weights)), 1)
    assert torch.allclose(torch.softmax(res.logits, 1), expected, atol=1e-6)  # probabilities, as documented
    assert not torch.allclose(expected, logit_average, atol=1e-4)  # ...which is not the same as logits


def test_ten_crop_shows_the_network_exactly_the_ten_known_crops():
    model = Recorder(3)
    big, s = 6, 4
    x = torch.arange(big * big, dtype=torch.float32).reshape(1, 1, big, big)  # every crop is unique
    evaluate_model(model, [(x, torch.tensor([0]))], task="multiclass", tta="ten-crop", crop_size=s)
    seen = [v[0, 0] for v in model.seen]
    corners = {"tl": (0, 0), "tr": (0, big - s), "bl": (big - s, 0), "br": (big - s, big - s), "c": (1, 1)}
    known = [x[0, 0, t : t + s, left : left + s] for t, left in corners.values()]
    known += [k.flip(-1) for k in known]
    assert len(seen) == 10
    for want in known:  # each of the ten exactly once
        assert sum(torch.equal(got, want) for got in seen) == 1
    assert seen[0][0, 0] == 7  # the center crop of a 6x6 image starts at (1, 1): pixel 1*6+1


def test_finalize_run_evaluates_a_separate_test_split_once(tmp_path):
    torch.manual_seed(10)
    data, _ = _fake_data()
    gen = torch.Generator().manual_seed(11)
    xt, yt = torch.randn(9, 3, 8, 8, generator=gen), torch.arange(9) % 5
    data.test = TensorLoader(xt, yt, 4)
    model = TinyConvNet(num_classes=5)
    out = finalize_run(tmp_path, model, data)
    expected = evaluate_model(model, data.test, task="multiclass")
    saved = RunFolder(tmp_path).read_eval()
    assert saved["test"]["num_samples"] == 9 and saved["test"]["top1"] == pytest.approx(expected.top1)
    assert saved["num_samples"] == 23 and out == saved  # the validation figures stay the top-level ones


def test_finalize_run_tunes_multilabel_thresholds_into_model_json(tmp_path):
    from imgcls.engine.bundle import save_bundle
    from imgcls.models import create_model
    from imgcls.run_folder import ModelMeta

    torch.manual_seed(12)
    data, _ = _fake_data(n=40, k=4)
    y = (torch.rand(40, 4, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    data.val = TensorLoader(data.val.x, y, 8)
    data.task = "multilabel"
    model = TinyConvNet(num_classes=4)
    shipped = create_model("lenet5", num_classes=4, in_chans=1)  # a real bundle beside: its record gets them
    meta = ModelMeta("lenet5", 4, data.classes[:4], [1, 32, 32], [0.5], [0.25], task="multilabel", in_chans=1)
    sha = save_bundle(tmp_path, shipped, meta).sha256
    out = finalize_run(tmp_path, model, data)
    expected = _tuned(model, data)
    assert out["tuned_thresholds"] == expected and out["threshold"] == 0.5
    record = RunFolder(tmp_path).read_meta()
    assert record.thresholds == expected and record.sha256 == sha
    from imgcls.engine.bundle import load_bundle

    load_bundle(tmp_path)  # the weights still match their record


def _tuned(model, data):
    from imgcls.engine import metrics as M

    res = evaluate_model(model, data.val, task="multilabel")
    return M.tune_thresholds(res.logits, res.targets)


def test_eval_reports_calibration_with_the_runs_temperature(eval_run):
    from imgcls.engine.calibration import calibration_report
    from imgcls.engine.evaluate import evaluate

    plain = evaluate(eval_run.run)
    assert plain["calibration"]["bins"] == 15 and "temperature" not in plain["calibration"]
    assert plain["ece"] == plain["calibration"]["ece"]
    folder = RunFolder(eval_run.run)
    meta = folder.read_meta()
    meta.temperature = 4.0
    folder.write_meta(meta)
    scaled = evaluate(eval_run.run)
    assert scaled["calibration"]["temperature"] == 4.0 and scaled["top1"] == plain["top1"]
    assert scaled["ece"] == scaled["calibration"]["ece_calibrated"]
    assert scaled["calibration"]["ece"] == pytest.approx(plain["ece"])  # "as trained" is the same network
    assert "temperature" not in evaluate(eval_run.run, tta="flip")["calibration"]  # fitted on single views only
    assert set(calibration_report(torch.zeros(2, 3), torch.tensor([0, 1]), 1.0)) <= set(scaled["calibration"])


@pytest.mark.parametrize("tta", ["flip", "flip-translate"])
def test_tta_fraction_one_with_the_plain_view_given_is_the_full_tta(tta):
    torch.manual_seed(3)
    model, x, y = TinyConvNet(num_classes=5), _images(20), torch.randint(0, 5, (20,))
    full = evaluate_model(model, TensorLoader(x, y, 8), task="multiclass", tta=tta)
    plain = evaluate_model(model, TensorLoader(x, y, 8), task="multiclass")
    from imgcls.engine.evaluate import _evaluate

    given = _evaluate(
        model, TensorLoader(x, y, 8), task="multiclass", loss_fn=None, precision="fp32", device="cpu",
        distributed=False, tta=tta, crop_size=None, threshold=0.5, plain=plain.logits,
    )  # fmt: skip
    assert torch.equal(given.logits, full.logits) and given.metrics == full.metrics


def test_tta_fraction_gives_the_views_to_the_least_confident_images_only():
    torch.manual_seed(4)
    model, x, y = TinyConvNet(num_classes=5), _images(40), torch.randint(0, 5, (40,))
    plain = evaluate_model(model, TensorLoader(x, y, 40), task="multiclass")
    full = evaluate_model(model, TensorLoader(x, y, 40), task="multiclass", tta="flip-translate")
    part = evaluate_model(model, TensorLoader(x, y, 40), task="multiclass", tta="flip-translate", tta_fraction=0.25)
    confidence = torch.softmax(plain.logits, 1).max(1).values
    least = set(torch.argsort(confidence)[:10].tolist())  # ceil(0.25 * 40)
    for i in range(40):
        expected = full.logits[i] if i in least else torch.log_softmax(plain.logits[i], 0)
        torch.testing.assert_close(part.logits[i], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full.logits, torch.log_softmax(plain.logits, 1), atol=1e-3)  # the views matter here
    assert part.metrics["tta"] == "flip-translate" and part.metrics["tta_fraction"] == 0.25
    assert "tta_fraction" not in full.metrics


def test_tta_fraction_on_sigmoid_outputs_picks_the_labels_nearest_one_half():
    from imgcls.engine.evaluate import _least_confident

    logits = torch.tensor([[4.0, -3.0], [0.1, 5.0], [-6.0, 6.0], [2.0, -0.05]])
    assert _least_confident(logits, "multilabel", 0.5).tolist() == [3, 1]
    assert _least_confident(torch.tensor([3.0, -0.2, 0.5, -9.0]), "binary", 0.25).tolist() == [1]


def test_tta_fraction_out_of_range_or_with_ten_crop_is_refused(eval_run, capsys):
    from imgcls.cli import main

    for argv, text in (
        (["--tta", "flip", "--tta-fraction", "0"], "--tta-fraction: 0.0 is not in (0, 1]"),
        (["--tta", "ten-crop", "--tta-fraction", "0.5"], "--tta-fraction applies to flip and flip-translate"),
    ):
        assert main(["eval", "--run", str(eval_run.run), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert text in err and "\n" not in err


def test_finalize_run_with_a_tta_fraction_runs_the_other_views_on_that_share_of_each_batch(tmp_path):
    torch.manual_seed(9)
    data, _ = _fake_data()  # 23 images in batches of 6, 6, 6, 5
    model = CountingNet(TinyConvNet(num_classes=5))
    validated = evaluate_model(model, data.val, task="multiclass")
    model.seen = 0
    out = finalize_run(tmp_path / "run", model, data, tta="flip-translate", validated=validated, tta_fraction=0.5)
    assert model.seen == 5 * (3 + 3 + 3 + 3)  # five extra views on ceil(0.5 * batch) images of each batch
    assert out["tta"] == "flip-translate" and out["tta_fraction"] == 0.5
    assert json.loads(RunFolder(tmp_path / "run").eval.read_text())["tta_fraction"] == 0.5


def test_eval_precision_run_is_the_precision_the_run_recorded(eval_run, capsys):
    """`imgcls eval --precision run` evaluates in the run's own precision (as its eval.json was computed); the
    default stays exact fp32."""
    from imgcls.cli import main
    from imgcls.engine.evaluate import evaluate

    config_path = eval_run.run / "config.json"
    config = json.loads(config_path.read_text())
    config["run"] = {"precision": "bf16"}
    config_path.write_text(json.dumps(config))
    in_fp32 = evaluate(eval_run.run)
    assert in_fp32["precision"] == "fp32"
    in_bf16 = evaluate(eval_run.run, precision="run")
    assert in_bf16["precision"] == "bf16"
    assert in_bf16["loss"] != in_fp32["loss"]  # computed in bf16, not only labelled so
    assert main(["eval", "--run", str(eval_run.run), "--precision", "run", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["precision"] == "bf16" and printed["confusion_matrix"] == in_bf16["confusion_matrix"]
