"""Precision `auto`, autocast and the memory format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgcls.engine.precision import cpu_has_bf16, resolve_device, resolve_precision, use_channels_last
from imgcls.errors import UserError


def test_auto_on_cpu_follows_the_bf16_units():
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == ("bf16" if cpu_has_bf16() else "fp32")
    assert chosen.reason  # said in the run summary


def test_bf16_autocast_runs_convolutions_in_bf16_and_fp32_does_not():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with resolve_precision("bf16", "cpu").autocast():
        assert conv(x).dtype == torch.bfloat16
    with resolve_precision("fp32", "cpu").autocast():
        assert conv(x).dtype == torch.float32
    assert not resolve_precision("bf16", "cpu").grad_scaler().is_enabled()  # bf16 needs no loss scaling


def test_channels_last_for_convolutional_nets_only():
    assert use_channels_last(nn.Sequential(nn.Conv2d(1, 2, 3)), None)
    assert not use_channels_last(nn.Sequential(nn.Linear(2, 2)), None)
    assert not use_channels_last(nn.Sequential(nn.Conv2d(1, 2, 3)), False)


def test_bad_choices_are_user_errors():
    with pytest.raises(UserError, match="--precision"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(UserError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")
