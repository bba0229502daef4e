"""`imgcls lr-find` through the real command line: the suggestion, the files it writes, and one-line refusals."""

from __future__ import annotations

import json
import re

from imgcls.cli import main


def test_lr_find_prints_a_suggestion_in_the_tested_range_and_writes_its_curve(tmp_path, capsys):
    out = tmp_path / "lrf"
    argv = ["lr-find", "--recipe", "digits", "--precision", "fp32", "--out", str(out)]
    argv += ["--start-lr", "1e-5", "--end-lr", "10", "--steps", "60", "--set", "train.progress=none"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(
        r"imgcls: lr-find: (\d+) steps from 1e-05, (?:up to 10|stopped at \S+ \(loss diverging\)), in \d+:\d\d: "
        r"lowest loss at (\S+)(?:, steepest fall at \S+)?; suggested lr (\S+) · curve (.+)",
        line,
    )
    assert match, line
    finding = json.loads((out / "lr_find.json").read_text())
    assert float(match.group(3)) == float(f"{finding['suggestion']:.3g}")
    assert match.group(4) == str(out / "lr_find.png")
    assert 1e-5 <= finding["suggestion"] <= 10
    # LeNet-5 with SGD on the digits trains well from about 1e-3 to 0.3 (the digits recipe uses 0.05).
    assert 1e-3 <= finding["suggestion"] <= 0.3, finding["suggestion"]
    assert len(finding["lrs"]) == int(match.group(1)) <= 60
    assert finding["lrs"][0] == 1e-5
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]  # nothing else: no run


def test_lr_find_refuses_a_bad_range_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "lrf"
    assert main(["lr-find", "--recipe", "digits", "--start-lr", "1", "--end-lr", "0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "imgcls: error: train.lr_find_range: needs [start, end] with start < end, got [1.0, 0.1]\n"
    assert main(["lr-find", "--recipe", "digits", "--steps", "3", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "imgcls: error: train.lr_find_steps: must be >= 10, got 3\n"
    assert not out.exists()
