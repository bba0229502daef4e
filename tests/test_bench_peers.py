"""The peer benchmark's own logic: alternation order, result parsing, the CIFAR subset it builds, its environment."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from benchmarks import bench_peers as B
from PIL import Image


def test_alternate_runs_the_sides_in_turn():
    calls = []
    sides = {name: (lambda n=name: calls.append(n) or len(calls)) for name in ("a", "b", "c")}
    times, results = B.alternate(sides, rounds=2)
    assert calls == ["a", "b", "c", "a", "b", "c"]
    assert results == {"a": [1, 4], "b": [2, 5], "c": [3, 6]}
    assert all(len(t) == 2 and min(t) >= 0 for t in times.values())


def test_last_json_takes_the_final_object():
    assert B.last_json('log line\n{"top1": 1.5}\nmore\n{"top1": 2.5, "x": [1]}\n') == {"top1": 2.5, "x": [1]}
    assert B.last_json("[1, 2]\n") == [1, 2]
    # imgcls predict --json: one indented list over many lines, whose inner lines start with "{" too
    answers = [{"path": "a.jpg", "predictions": [{"index": 3, "label": "c3"}]}]
    assert B.last_json(json.dumps(answers, indent=2)) == answers
    with pytest.raises(ValueError):
        B.last_json("no json here\n")


def _png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_cifar_subset_takes_the_first_files_of_each_class(tmp_path, monkeypatch):
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, n in (("train", 5), ("test", 3)):
            for cls in ("cat", "dog"):
                for i in reversed(range(n)):  # stored out of order: the subset is by name, not by position
                    data = _png_bytes(i)
                    info = tarfile.TarInfo(f"{split}/{cls}/{cls}_{i:02d}.png")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("IMGCLS_CIFAR10_PNG", str(archive))
    out = B.cifar_subset(tmp_path / "subset", per_class=2, test_per_class=3)
    assert sorted(p.name for p in (out / "train" / "cat").iterdir()) == ["cat_00.png", "cat_01.png"]
    assert len(list((out / "test" / "dog").iterdir())) == 3
    assert np.asarray(Image.open(out / "train" / "dog" / "dog_01.png"))[0, 0, 0] == 1


def test_every_side_gets_the_same_threads_and_allocator(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    e = B.env(EXTRA="1")
    assert e["OMP_NUM_THREADS"] == str(B.THREADS) and e["EXTRA"] == "1" and "MALLOC_MMAP_THRESHOLD_" not in e


def test_environment_names_the_cpu():
    import torch

    line = B.lscpu_model()
    assert "CPUs" in line and "flags:" in line
    assert B.versions(__import__("sys").executable)["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_the_torchvision_sides_schedule_is_imgcls_warmup_then_cosine():
    # The train part compares accuracy, so every side must follow the same learning-rate curve step for step.
    import sys

    import torch

    from imgcls.engine.config import ScheduleConfig
    from imgcls.engine.schedule import LRSchedule

    sys.path.insert(0, str(B.SCRIPTS))
    from common import warmup_cosine

    def curve(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = make(opt)
        lrs = []
        for _ in range(30):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    ours = curve(lambda o: LRSchedule(o, ScheduleConfig(name="cosine", warmup_epochs=1, warmup_start=0.1), 10, 3))
    torch_side = curve(lambda o: warmup_cosine(o, 10, 30))
    assert torch_side == pytest.approx(ours, abs=1e-9)
    assert ours[0] == pytest.approx(0.01) and ours[10] == pytest.approx(0.1) and ours[-1] < 0.001
