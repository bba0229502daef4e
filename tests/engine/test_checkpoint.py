"""Checkpoints: round trip with every RNG state, atomic replacement, no unpickling of arbitrary objects."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from imgcls.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from imgcls.engine.ema import ModelEma
from imgcls.errors import UserError


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_round_trip_restores_every_generator(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    _draws()
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "last.pt", {"model": model.state_dict(), "rng": rng_state(), "epoch": 4})
    expected = _draws()
    _draws()  # move every generator on
    state = load_checkpoint(tmp_path / "last.pt")
    set_rng_state(state["rng"])
    assert _draws() == expected
    assert state["epoch"] == 4
    assert torch.equal(state["model"]["weight"], model.weight.detach())


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(Exception):  # noqa: B017  (pickling a lambda fails half-way through the write)
        save_checkpoint(path, {"epoch": 2, "bad": lambda: None})
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": Evil()}, path)
    with pytest.raises(UserError, match="unreadable checkpoint"):
        load_checkpoint(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=str(garbage.name)):
        load_checkpoint(garbage)
    plain = tmp_path / "plain.pt"
    with open(plain, "wb") as f:
        pickle.dump({"epoch": 1}, f)
    with pytest.raises(UserError):
        load_checkpoint(plain)
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_ema_average_by_hand_and_in_a_checkpoint(tmp_path):
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEma(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # 0.5 * 1 + 0.5 * 3
    assert ema.module.weight.item() == pytest.approx(2.0)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)  # 0.5 * 2 + 0.5 * 4
    assert ema.module.weight.item() == pytest.approx(3.0)
    save_checkpoint(tmp_path / "c.pt", {"ema": ema.state_dict()})
    other = ModelEma(torch.nn.Linear(1, 1, bias=False), decay=0.9)
    other.load_state_dict(load_checkpoint(tmp_path / "c.pt")["ema"])
    assert other.module.weight.item() == pytest.approx(3.0) and other.updates == 2 and other.decay == 0.5
    # The warm-up ramp: min(d, (1 + n) / (10 + n)) starts at 0.1.
    assert ModelEma(model, decay=0.999).current_decay() == pytest.approx(0.1)
