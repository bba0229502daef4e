"""Engines and the measured choice: every candidate computes what fp32 eager computes on real decoded images,
and the choice is always the fastest measured one."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from tests.inference import helpers

from imgcls.engine.bundle import load_bundle
from imgcls.errors import UserError
from imgcls.inference import engines as E
from imgcls.inference.predictor import Preprocess


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLS_INFERENCE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run folder (LeNet-5-size model, spread-out logits) and a uint8 batch of real decoded photo files."""
    root = tmp_path_factory.mktemp("engines")
    run = helpers.write_run(root / "run", num_classes=5)
    model, meta = load_bundle(run)
    pre = Preprocess(tuple(meta.input_size), meta.resize or meta.input_size[1], tuple(meta.mean), tuple(meta.std))
    from imgcls.data.reader import load_for_eval

    paths = helpers.write_images(root / "images", 6)
    c, h, _ = pre.input_size
    batch = torch.stack([load_for_eval(p, size=h, resize=pre.resize, in_chans=c) for p in paths])
    return run, model, meta, pre, batch


def _source(setup, **kw) -> E.EngineSource:
    _, model, meta, pre, _ = setup
    return E.EngineSource(model, meta.input_size, pre.normalise, key=meta.sha256, meta=meta, **kw)


@pytest.mark.parametrize(
    ("name", "tolerance"),
    [("eager", 1e-5), ("graph", 1e-4), ("onnx", 1e-4), ("eager-bf16", 3e-2), ("graph-bf16", 3e-2)],
)
def test_every_candidate_matches_fp32_eager(setup, cache, name, tolerance):
    _, model, _, pre, batch = setup
    with torch.no_grad():
        expected = model.eval()(pre.normalise(batch))
    engine = _source(setup).build(name)
    got = engine(batch)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= tolerance * max(1.0, scale), name
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert engine.precision == E.ENGINE_PRECISION[name]


def test_numpy_normalisation_equals_torchs_bit_for_bit():
    pre = Preprocess((3, 4, 5), 4, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = torch.randint(0, 256, (7, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = pre.array_normaliser()(x.numpy())
    assert got.dtype.name == "float32"
    assert torch.equal(torch.from_numpy(got), pre.normalise(x))
    assert float(got[0, 0].min()) >= -0.485 / 0.229 - 1e-6 and float(got.max()) <= (1 - 0.406) / 0.225 + 1e-6


def test_onnx_engines_normalise_in_numpy(setup, cache):
    """With a NumPy normalisation given, the ONNX Runtime engine never calls PyTorch's (whose thread pool would
    spin beside ONNX Runtime's threads), and answers what fp32 eager answers."""
    _, model, meta, pre, batch = setup

    def no_torch(x):
        raise AssertionError("the ONNX Runtime engine normalised with PyTorch")

    source = E.EngineSource(model, meta.input_size, no_torch, normalise_array=pre.array_normaliser(), meta=meta)
    with torch.no_grad():
        expected = model.eval()(pre.normalise(batch))
    got = source.build("onnx")(batch)
    assert float((got - expected).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))
    with pytest.raises(AssertionError, match="normalised with PyTorch"):
        source.build("eager")(batch)


def test_eager_fp32_runs_channels_last(setup, cache):
    engine = _source(setup).build("eager")
    conv = next(p for p in engine.forward.parameters() if p.ndim == 4)
    assert engine.channels_last and conv.is_contiguous(memory_format=torch.channels_last)


def test_choice_is_the_fastest_measured(setup, cache):
    _, _, _, _, batch = setup
    source = _source(setup)
    built = {name: source.build(name) for name in ("eager", "graph", "onnx")}
    timings = E.measure(built, batch, rounds=3)
    assert set(timings.seconds) == set(built) and timings.batch == len(batch)
    assert all(s > 0 for s in timings.seconds.values())
    chosen = E.choose(timings)
    assert all(timings.seconds[chosen] <= s for s in timings.seconds.values())
    # The same measured result with its figures rotated among the engines: the choice follows the figures.
    names = list(timings.seconds)
    values = [timings.seconds[n] for n in names]
    for shift in range(1, len(names)):
        rotated = dataclasses.replace(timings, seconds=dict(zip(names, values[shift:] + values[:shift])))
        fastest = min(rotated.seconds.values())
        assert rotated.seconds[E.choose(rotated)] == fastest
    # Ties go to the first name in order, so the choice is stable.
    tied = dataclasses.replace(timings, seconds=dict.fromkeys(names, 1.0))
    assert E.choose(tied) == sorted(names)[0]


def test_select_measures_then_remembers(setup, cache):
    first = E.select(_source(setup), precision="fp32", batch_size=4)
    assert first.how == "measured" and set(first.timings.seconds) == {"eager", "graph", "onnx"}
    assert first.engine.name == E.choose(first.timings)
    assert first.engine.name in first.describe() and "ms" in first.describe()
    again = E.select(_source(setup), precision="fp32", batch_size=4)
    assert again.how == "remembered" and again.engine.name == first.engine.name
    # The costs come back with the choice, ONNX Runtime's with these weights' own file.
    assert set(again.costs) == set(first.costs)
    for name, cost in first.costs.items():
        assert again.costs[name].start == pytest.approx(cost.start), name
        assert again.costs[name].per_image == pytest.approx(cost.per_image), name
    assert again.costs["onnx"].file == first.costs["onnx"].file
    # Another batch size is another measurement.
    assert E.select(_source(setup), precision="fp32", batch_size=2).how == "measured"


def test_a_measured_selection_says_what_each_candidate_costs_a_later_load(setup, cache):
    """Start (making the engine as a later load would, plus its first call) and seconds per image, for every
    measured candidate; the ONNX export done once for the cache is not part of ONNX Runtime's start."""
    selection = E.select(_source(setup), precision="fp32", batch_size=4, remember=False)
    assert selection.how == "measured" and set(selection.costs) == set(selection.timings.seconds)
    for name, cost in selection.costs.items():
        assert cost.start > 0 and cost.start >= selection.timings.first[name], name
        assert cost.per_image == pytest.approx(selection.timings.seconds[name] / selection.timings.batch)
    assert selection.costs["onnx"].file is not None and selection.costs["onnx"].file.is_file()
    assert selection.costs["eager"].file is None
    fresh = _source(setup)  # a new cache key: this build exports the ONNX file first
    fresh.key = "e" * 64
    t0 = time.perf_counter()
    exported = fresh.build("onnx")
    whole = time.perf_counter() - t0
    assert 0 < exported.open_seconds < whole, "the export is not counted as opening the session"
    assert fresh.build("onnx").open_seconds > 0


def test_a_clear_loser_is_dropped_after_one_round_and_never_chosen():
    """Two callables, one ~50x slower: it runs its warm-up and one round, the fast one all rounds (a 60 ms
    stall of a 1 ms call would be needed to drop the wrong one)."""
    import time

    calls = {"fast": 0, "slow": 0}

    def engine(name, seconds):
        def run(batch):
            calls[name] += 1
            time.sleep(seconds)

        return run

    timings = E.measure({"slow": engine("slow", 0.05), "fast": engine("fast", 0.001)}, torch.zeros(1), rounds=4)
    assert calls == {"fast": 1 + 4, "slow": 1 + 1}
    assert E.choose(timings) == "fast" and timings.seconds["slow"] > timings.seconds["fast"]
    calls.update(fast=0, slow=0)
    E.measure({"slow": engine("slow", 0.05), "fast": engine("fast", 0.001)}, torch.zeros(1), rounds=4, drop_over=None)
    assert calls == {"fast": 5, "slow": 5}


def test_choice_is_remembered_per_architecture_but_per_weights_for_int8(setup, cache):
    """Other weights of the same architecture reuse an fp32 choice; an int8 choice belongs to its weights."""
    _, model, meta, pre, _ = setup
    other = dataclasses.replace(meta, sha256="0" * 64)
    source = E.EngineSource(model, meta.input_size, pre.normalise, key=other.sha256, meta=other)
    assert E._choice_key(source, E.candidates("fp32"), 4) == E._choice_key(_source(setup), E.candidates("fp32"), 4)
    assert E._choice_key(source, E.candidates("int8"), 4) != E._choice_key(_source(setup), E.candidates("int8"), 4)
    wider = dataclasses.replace(meta, num_classes=meta.num_classes + 1)
    changed = E.EngineSource(model, meta.input_size, pre.normalise, key=meta.sha256, meta=wider)
    assert E._choice_key(changed, E.candidates("fp32"), 4) != E._choice_key(_source(setup), E.candidates("fp32"), 4)
    first = E.select(_source(setup), precision="fp32", batch_size=4)
    assert first.how == "measured"
    reused = E.select(source, precision="fp32", batch_size=4)
    assert reused.how == "remembered"
    # Its costs, but never the other weights' ONNX file: these weights' own, when the cache holds one (it does
    # when the remembered choice is ONNX Runtime, built just now), else none.
    assert set(reused.costs) | {"onnx"} == set(first.costs)
    if reused.engine.name == "onnx":
        assert reused.costs["onnx"].file == source.folder() / "model.onnx" != first.costs["onnx"].file
    else:
        assert "onnx" not in reused.costs


def test_forced_engine_skips_the_measurement(setup, cache):
    chosen = E.select(_source(setup), precision="fp32", engine="graph")
    assert chosen.how == "forced" and chosen.engine.name == "graph" and chosen.timings is None
    with pytest.raises(UserError, match="unknown engine: fast"):
        E.select(_source(setup), engine="fast")


def test_candidates_by_precision():
    assert E.candidates("fp32") == ("eager", "graph", "onnx")
    assert E.candidates("auto", bf16_native=False) == ("eager", "graph", "onnx")
    assert set(E.candidates("auto", bf16_native=True)) == {"eager-bf16", "graph-bf16", "eager", "graph", "onnx"}
    assert E.candidates("int8") == ("onnx-int8", "torch-int8")
    with pytest.raises(UserError, match="unknown precision"):
        E.candidates("fp8")


def test_untraceable_model_falls_back(cache):
    class Branchy(torch.nn.Module):
        """Data-dependent control flow: TorchScript tracing refuses nothing, but FX tracing does."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return y if bool(y.sum() > 0) else -y

    source = E.EngineSource(Branchy(), (3, 8, 8), lambda x: x.float() / 255)
    assert E.select(source, precision="fp32", engine="eager").engine.name == "eager"
    with pytest.raises(RuntimeError, match="FX quantization failed"):
        from imgcls.inference.int8 import quantize_torch

        quantize_torch(Branchy(), [torch.randn(2, 3, 8, 8)])


@pytest.fixture
def busy_cores():
    """One busy process per core: every timed call shares its cores with them."""
    import os
    import subprocess
    import sys
    import time

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    time.sleep(0.3)
    yield
    for p in procs:
        p.kill()
        p.wait()


def test_a_measurement_beside_busy_processes_is_used_but_not_remembered(cache, busy_cores):
    # A ResNet-18 at 128 px: calls of ~0.1 s at the measured batch of 8, long enough to be judged.
    from imgcls.models import create_model

    model = create_model("resnet18", num_classes=5).eval()
    source = E.EngineSource(model, (3, 128, 128), lambda x: x.float() / 255, key="f" * 64)
    first = E.select(source, precision="fp32", batch_size=8)
    assert first.how == "measured" and not first.settled
    assert 0 < first.timings.disturbed <= first.timings.calls
    assert "held the cores: not remembered" in first.describe()
    assert E.select(source, precision="fp32", batch_size=8).how == "measured"  # measured again, not remembered


def test_a_call_is_disturbed_by_waiting_for_a_core_not_by_sleeping_threads():
    """The run-queue wait decides (module docstring): threads that sleep between kernels (OMP_WAIT_POLICY=PASSIVE,
    CPU share ~0.85 on a quiet host) are not disturbed; threads that waited for a core a third of the time are."""
    assert not E.was_disturbed(wall=0.2, cpu=0.34, waited=0.004, threads=2)
    assert E.was_disturbed(wall=0.2, cpu=0.26, waited=0.14, threads=2)
    assert not E.was_disturbed(wall=0.2, cpu=0.4, waited=0.05, threads=2), "0.05 of 0.4 thread-seconds: noise"
    # Without the kernel's figures, the CPU share is the test.
    assert E.was_disturbed(wall=0.2, cpu=0.26, waited=None, threads=2)
    assert not E.was_disturbed(wall=0.2, cpu=0.39, waited=None, threads=2)
    assert not E.was_disturbed(wall=0.01, cpu=0.0, waited=0.01, threads=2), "too short to judge"


def test_the_run_queue_wait_is_read_from_this_process(busy_cores):
    if E._run_queue_wait() is None:
        pytest.skip("no scheduler statistics on this system")
    before = E._run_queue_wait()
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:  # one busy thread beside one busy process per core: it waits its turn
        pass
    assert E._run_queue_wait() - before > 0.05


def test_settle_waits_for_spinning_threads_and_no_longer():
    """After an ONNX Runtime call its threads spin for a while; settle() returns once the process is idle, within
    its limit, and at once when nothing spins."""
    t0 = time.perf_counter()
    E.settle()
    assert time.perf_counter() - t0 < 0.05, "an idle process settles at the first look"

    def spin():
        end = time.perf_counter() + 0.1
        while time.perf_counter() < end:
            pass

    import threading

    worker = threading.Thread(target=spin)
    worker.start()
    t0 = time.perf_counter()
    E.settle(limit=1.0)
    waited = time.perf_counter() - t0
    worker.join()
    assert 0.05 <= waited < 1.0, "it waited for the busy thread to finish, not for its whole limit"
