"""`imgcls data stats` and `imgcls data preview`, through the real command-line entry point."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from imgcls.cli import main


def test_stats_json_on_digits(capsys):
    assert main(["data", "stats", "digits", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"] == [str(i) for i in range(10)] and out["task"] == "multiclass"
    assert out["images"]["train"] + out["images"]["val"] == 1797
    assert sum(out["counts"]["train"].values()) == out["images"]["train"]
    assert out["sizes"]["width"]["median"] == 8 and len(out["mean"]) == 1 and out["issues"] == []


def test_stats_lists_problems_of_a_folder(tmp_path, capsys):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 20, 3), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "b" / "zero.jpg").write_bytes(b"")
    assert main(["data", "stats", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "2 classes" in text and "problems: 1" in text and "zero.jpg: empty file" in text
    assert "width 20/20/20" in text


def test_preview_writes_a_grid(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  spec: digits\naugment:\n  crop_padding: 1\n  hflip: 0.5\n")
    out = tmp_path / "grid.png"
    assert main(["data", "preview", "digits", "--recipe", str(recipe), "--out", str(out), "--count", "8"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 100
        assert np.asarray(im.convert("L")).std() > 10  # something was drawn


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "stats", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcls: error: --data") and err.count("\n") == 1
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("data:\n  batch_sise: 3\n")
    assert main(["data", "preview", "digits", "--recipe", str(recipe), "--out", str(tmp_path / "g.png")]) == 2
    assert "batch_sise" in capsys.readouterr().err


def test_stats_counts_only_usable_images_and_finds_truncated_ones(tmp_path, capsys):
    # Issue 11 item 12: unreadable files were counted in the class totals; a JPEG cut after its first 3 KB was
    # "not an image" (cut inside its EXIF block) or not found at all (cut after the header: only decoding shows it).
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.jpg")
    exif = Image.Exif()
    exif[0x010E] = "x" * 6000
    photo = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    photo.save(tmp_path / "b" / "exif.jpg", exif=exif.tobytes())
    (tmp_path / "b" / "exif.jpg").write_bytes((tmp_path / "b" / "exif.jpg").read_bytes()[:3000])
    photo.save(tmp_path / "b" / "half.jpg", quality=95)
    (tmp_path / "b" / "half.jpg").write_bytes((tmp_path / "b" / "half.jpg").read_bytes()[:3000])
    (tmp_path / "a" / "zero.png").write_bytes(b"")
    assert main(["data", "stats", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    counts = {c: out["counts"]["train"][c] + out["counts"]["val"][c] for c in ("a", "b")}
    assert counts == {"a": 3, "b": 3}  # before the fix: 4 and 5
    assert out["images"]["train"] + out["images"]["val"] == 6
    reasons = {i["path"].rsplit("/", 1)[1]: i["reason"] for i in out["issues"]}
    assert set(reasons) == {"exif.jpg", "half.jpg", "zero.png"}
    assert reasons["exif.jpg"].startswith("truncated") and reasons["half.jpg"].startswith("truncated")
