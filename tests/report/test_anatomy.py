"""The report's calibration, model anatomy, most confused pairs and error gallery, from a run folder that
finalize_run wrote for a real registered network (lenet5) on known images."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tests.inference import helpers
from tests.report.test_report import _parse, _text

from imgcls.report import build_report
from imgcls.report.anatomy import heat_rgb, overlay, select_gallery
from imgcls.run_folder import RunFolder


def test_select_gallery_by_hand():
    # Five images, three classes. Mistakes: 1 (true 0, said 1, p 0.9), 2 (true 0, said 1, p 0.6),
    # 4 (true 2, said 0, p 0.8). Image 3 is right (p 0.95), image 0 right too.
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.05, 0.9, 0.05], [0.3, 0.6, 0.1], [0.0, 0.05, 0.95], [0.8, 0.1, 0.1]], dtype=np.float64
    )
    labels = np.array([0, 0, 0, 2, 2])
    chosen = select_gallery(probs, labels, errors=2, pairs=5, examples=3)
    assert chosen["errors_index"].tolist() == [1, 4]  # most confident mistakes first, two kept
    assert chosen["errors_target"].tolist() == [0, 2] and chosen["errors_pred"].tolist() == [1, 0]
    assert chosen["errors_prob"].tolist() == pytest.approx([0.9, 0.8])
    assert chosen["pairs"].tolist() == [[0, 1], [2, 0]] and chosen["pair_counts"].tolist() == [2, 1]
    assert chosen["pair_index"].tolist() == [[1, 2, -1], [4, -1, -1]]
    assert chosen["pair_prob"][0].tolist() == pytest.approx([0.9, 0.6, 0.0])
    right = select_gallery(np.eye(3), np.arange(3))
    assert len(right["errors_index"]) == 0 and right["pairs"].shape == (0, 2)


def test_overlay_is_the_grey_image_blended_with_the_colour_map():
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[0, 0] = (255, 255, 255)
    heat = np.array([[0.0, 1.0], [0.0, 0.0]])
    out = overlay(image, heat, alpha=0.5)
    # Half the grey image plus half the colour of the heat: inferno(0) is (near) black, inferno(1) pale yellow.
    cold, hot = heat_rgb(np.array([[0.0, 1.0]]))[0].astype(np.float64)
    assert out[0, 0].tolist() == np.round(0.5 * 255 + 0.5 * cold).tolist()  # white under no heat: mid grey
    assert out[1, 1].tolist() == np.round(0.5 * cold).tolist() and max(cold) < 10
    assert out[0, 1].tolist() == np.round(0.5 * hot).tolist() and out[0, 1, 0] > 100 > out[0, 1, 2]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("anatomy")
    run = helpers.write_run(root / "run", name="lenet5", num_classes=4, in_chans=1)
    from imgcls.engine.bundle import load_bundle
    from imgcls.engine.evaluate import finalize_run

    model, meta = load_bundle(run)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (48, 1, 32, 32), generator=g, dtype=torch.uint8)
    x = (pixels.float() / 255 - meta.mean[0]) / meta.std[0]
    y = torch.arange(48) % 4
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 48, 16)]
    data = SimpleNamespace(val=batches, task="multiclass", classes=meta.classes, mean=meta.mean, std=meta.std)
    evaluation = finalize_run(run, model, data)
    (run / "metrics.csv").write_text("epoch,train_loss,val_loss,val_top1,val_top5,lr,seconds\n1,2,2,10,50,0.1,1\n")
    page = _parse(build_report(run))
    return SimpleNamespace(run=RunFolder(run), page=page, pixels=pixels, evaluation=evaluation)


def test_the_report_has_calibration_anatomy_pairs_and_gallery(reported):
    page = reported.page
    text = _text(page)
    for heading in ("Calibration", "Model anatomy", "Most confused pairs", "Error gallery"):
        assert heading in text
    assert {"reliability.png", "filters.png", "stages.png", "confused_pairs.png", "errors.png"} <= set(page.images)
    for name in ("reliability.png", "filters.png", "stages.png", "confused_pairs.png", "errors.png"):
        with Image.open(reported.run.report_dir / name) as im:
            assert im.width > 400 and im.height > 200, name
    t = reported.evaluation["calibration"]["temperature"]
    assert f"T = {t:.3g}" in text and "ECE as trained" in text


def test_the_gallery_holds_the_most_confident_mistakes_as_predictions_csv_has_them(reported):
    with open(reported.run.predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    wrong = [r for r in rows if r["target"] != r["pred_1"]]
    wrong.sort(key=lambda r: -float(r["prob_1"]))
    with np.load(reported.run.samples, allow_pickle=False) as npz:
        samples = {k: npz[k] for k in npz.files}
    expected = [int(r["index"]) for r in wrong[:16]]
    got = samples["errors_index"].tolist()
    assert len(got) == len(expected) and got[:3] == expected[:3]  # ties in prob_1's six digits may swap the rest
    assert sorted(samples["errors_prob"].tolist(), reverse=True) == samples["errors_prob"].tolist()
    # The kept images are the validation pixels themselves (normalisation undone exactly).
    lookup = {int(i): k for k, i in enumerate(samples["gallery_index"])}
    for i in got:
        assert np.array_equal(samples["gallery_images"][lookup[i]], reported.pixels[i].permute(1, 2, 0).numpy())


def test_the_confused_pairs_are_the_largest_off_diagonal_cells(reported):
    matrix = np.asarray(reported.evaluation["confusion_matrix"])
    off = [(int(matrix[t, p]), t, p) for t in range(4) for p in range(4) if t != p and matrix[t, p]]
    off.sort(key=lambda c: (-c[0], c[1], c[2]))
    with np.load(reported.run.samples, allow_pickle=False) as npz:
        pairs, counts = npz["pairs"].tolist(), npz["pair_counts"].tolist()
    assert pairs == [[t, p] for _, t, p in off[: len(pairs)]] and counts == [c for c, _, _ in off[: len(pairs)]]
    text = _text(reported.page)
    t, p = pairs[0]
    assert f"class_{t} class_{p} {counts[0]}" in text  # the table's first row: true, predicted, images


def test_a_damaged_weights_file_leaves_the_rest_of_the_report(reported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reported.run.root, copy)
    weights = RunFolder(copy).weights
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    text = _text(_parse(build_report(copy)))
    assert "Not drawn:" in text and "Calibration" in text and "Error gallery" in text
