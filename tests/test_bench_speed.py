"""The speed benchmark's table code on one tiny model and small peak kernels (no timing assertions)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest


def _load_bench():
    """benchmarks/ is a folder of scripts run from the repository root, not part of the installed package."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_speed.py"
    spec = importlib.util.spec_from_file_location("benchmarks.bench_speed", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
COLUMNS, format_table, measure_model, measure_peaks = (
    bench.COLUMNS,
    bench.format_table,
    bench.measure_model,
    bench.measure_peaks,
)


@pytest.fixture(scope="module")
def peaks() -> dict:
    return measure_peaks(matmul_size=128, conv_shape=(2, 16, 16, 16), repeats=1)


def test_peaks_are_positive_rates_with_the_thread_count(peaks):
    for key in ("matmul_fp32", "matmul_bf16", "conv_fp32", "conv_bf16"):
        assert math.isfinite(peaks[key]) and peaks[key] > 0, key
    assert peaks["fp32"] == max(peaks["matmul_fp32"], peaks["conv_fp32"])
    assert peaks["bf16"] == max(peaks["matmul_bf16"], peaks["conv_bf16"])
    assert peaks["threads"] >= 1
    assert peaks["conv_shape"] == (2, 16, 16, 16)


def test_table_of_one_tiny_model(peaks):
    row = measure_model("lenet5", batch_size=8, iterations=1, repeats=1)
    assert row.input_size == (1, 32, 32)
    assert row.batch_size == 8
    assert row.macs > 0
    assert set(row.rates) == {(ph, p) for ph in ("train", "infer") for p in ("fp32", "bf16")}
    assert all(math.isfinite(v) and v > 0 for v in row.rates.values())
    # Training is costed as three forward passes.
    assert row.flops_per_image("train") == 3 * row.flops_per_image("infer") == 6 * row.macs

    header, rule, line = format_table([row], peaks)
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert rule.count("|") == len(COLUMNS) + 1
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == len(COLUMNS)
    assert cells[:3] == ["lenet5", "1×32×32", "8"]
    numbers = [float(c.rstrip("x")) for c in cells[3:]]
    assert all(v > 0 for v in numbers), cells
    assert cells[COLUMNS.index("train bf16/fp32")] == f"{row.ratio('train'):.2f}x"
    assert float(cells[COLUMNS.index("infer fp32 img/s")]) == pytest.approx(row.rates["infer", "fp32"], rel=0.01)


def test_fp32_channels_last_mode_for_cpus_without_bf16(peaks):
    """On a CPU that emulates bf16 the table compares fp32 NCHW with fp32 channels-last: no bf16 anywhere."""
    fp32_only = measure_peaks(matmul_size=128, conv_shape=(2, 16, 16, 16), repeats=1, precisions=("fp32",))
    assert "bf16" not in fp32_only and fp32_only["fp32"] > 0
    row = measure_model("lenet5", batch_size=8, iterations=1, repeats=1, fast="fp32cl")
    assert set(row.rates) == {(ph, p) for ph in ("train", "infer") for p in ("fp32", "fp32cl")}
    header, _, line = format_table([row], fp32_only)
    names = [c.strip() for c in header.strip("|").split("|")]
    assert names == list(bench.columns("fp32cl")) and not any("bf16" in n for n in names)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[names.index("train fp32 CL/fp32")] == f"{row.ratio('train'):.2f}x"
    pct = 100 * row.rates["infer", "fp32cl"] * row.flops_per_image("infer") / fp32_only["fp32"]
    assert float(cells[names.index("infer fp32 CL % peak")]) == pytest.approx(pct, rel=0.01)
