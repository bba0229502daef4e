"""Issue 19 classes 3 and 5 as figures: settings that cannot train right, and runs that would mix up folders.

Each case is the real command in a subprocess. The unit tests of the checks themselves live in
``tests/engine/test_train_checks.py`` and ``tests/engine/test_audit.py``; these record what a user sees.
"""

from __future__ import annotations

import csv
import json
import time

import pytest

pytestmark = pytest.mark.faults

# Settings that used to train "fine" (exit 0, NaN weights shipped) or silently meant something else.
CANNOT_TRAIN_RIGHT = {
    "--lr nan": ["--lr", "nan"],
    "--lr inf": ["--lr", "inf"],
    "optim.clip_grad_norm=-1": ["--set", "optim.clip_grad_norm=-1"],
    "--image-size 0": ["--image-size", "0"],
    "optim.weight_decay=nan": ["--set", "optim.weight_decay=nan"],
}


def test_settings_that_cannot_train_right_are_refused_before_any_file(tmp_path, kit, figure):
    refused, left = [], []
    for name, extra in CANNOT_TRAIN_RIGHT.items():
        run = tmp_path / name.replace(" ", "_").replace("=", "_")
        done = kit.run_to_end(kit.imgcls(*kit.train_argv(run, *extra, epochs=1)), timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (name, done.stdout[-500:], done.stderr[-500:])
        assert len(lines) == 1 and lines[0].startswith("imgcls: error: "), (name, done.stderr)
        assert "Traceback" not in done.stderr
        refused.append(name)
        if run.exists():
            left.append(name)
    assert left == []  # nothing written: the same --out works at once with sane settings
    figure("run_guards_settings", {"cases": len(CANNOT_TRAIN_RIGHT), "refused": len(refused), "folders_left": 0})


def test_a_second_run_on_a_busy_folder_and_a_foreign_folder_are_refused(tmp_path, kit, figure):
    import signal

    run = tmp_path / "run"
    first = kit.start(kit.imgcls(*kit.train_argv(run, epochs=500)))  # still training when the second starts
    try:
        lock = run / ".imgcls-train.lock"
        deadline = time.monotonic() + 300
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists(), "the first run never took its lock"
        # Even --overwrite must not clear a folder another train is writing.
        second = kit.run_to_end(kit.imgcls(*kit.train_argv(run, "--overwrite", epochs=1, seed=9)), timeout=300)
        assert first.poll() is None, "the first run ended before the second was tried"
    finally:
        first.send_signal(signal.SIGTERM)  # it writes a checkpoint and stops
        out, _ = first.communicate(timeout=600)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert "another imgcls train is writing" in second.stderr, second.stderr
    assert first.returncode == 130, out[-2000:]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))  # the first run's record only
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 3  # the first's, not the second's 9
    assert kit.read_checkpoint(run / "checkpoints" / "last.pt") is not None

    foreign = tmp_path / "my-notes"
    foreign.mkdir()
    (foreign / "eval.json").write_text('{"mine": true}')
    (foreign / "report").mkdir()
    (foreign / "report" / "index.html").write_text("<p>mine</p>")
    third = kit.run_to_end(kit.imgcls(*kit.train_argv(foreign, epochs=1)), timeout=300)
    assert third.returncode == 2 and third.stderr.count("\n") == 1, third.stderr
    assert (foreign / "eval.json").read_text() == '{"mine": true}'
    assert sorted(p.name for p in foreign.iterdir()) == ["eval.json", "report"]
    figure(
        "run_guards_folders",
        {
            "second_message": second.stderr.strip().replace(str(tmp_path), "<tmp>")[:140],
            "first_record_whole": True,  # its metrics and checkpoint, nothing of the second
            "foreign_files_kept": 2,
            "foreign_message": third.stderr.strip().replace(str(tmp_path), "<tmp>")[:140],
        },
    )
