"""Where a CPU speedrun step spends its time, and what each speed setting buys (issues 6 and 13).

One airbench94 training step (batch 1024, 32×32, forward + label-smoothed cross-entropy + backward + Nesterov
SGD) in several configurations, all built in one process and timed in interleaved rounds (A, B, C, ..., A, B,
C, ...) so that load from other processes falls on every variant alike; the median round counts:

- precision and memory format: fp32 vs bf16 autocast, NCHW vs channels_last (on a CPU without bf16 units the
  bf16 steps are left out — emulated, they take minutes —; the recipe's row is the precision ``auto`` picks);
- the speedrun recipe's optimiser (Muon on the filters, Nesterov SGD on the rest; ``engine.muon``) at its batch
  of 2000, per image, against Nesterov SGD at the same batch: what Newton–Schulz costs on a CPU;
- the fp32 weight gradient of block 2's first conv (``fp32_weight_grad_blocks``, see ``imgcls.models.airbench``);
- GELU's tanh approximation instead of the exact erf form (a cheaper activation);
- ``torch.compile`` of the model (compile seconds reported apart from the step time);
- one intra-op thread instead of two.

Then ``torch.profiler`` splits the default configuration's step by operator family, and the data path from the
uint8 array (reflect-pad-2 translate, alternating flip, normalise: the recipe's augmentation) is timed per batch
beside it. Achieved FLOP/s count 2 FLOPs per MAC and training as 3 forward passes, against the peak of the
recipe's precision measured in the same process (``bench_speedrun.peak_flops``: a large matmul and 3×3 convs).

Command: ``.venv/bin/python -m benchmarks.run speedrun_step`` (about 5–10 minutes on 2 cores).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

COMMAND = ".venv/bin/python -m benchmarks.run speedrun_step"
BATCH = 1024
ROUNDS = int(os.environ.get("IMGCLS_BENCH_STEP_ROUNDS", "3"))


def _model(fp32_weight_grad: bool = False, tanh_gelu: bool = False, channels_last: bool = True) -> nn.Module:
    from imgcls.models import create_model

    torch.manual_seed(0)
    model = create_model("airbench94", num_classes=10, fp32_weight_grad_blocks=(1,) if fp32_weight_grad else ())
    if tanh_gelu:
        for m in list(model.modules()):
            for name, child in m.named_children():
                if isinstance(child, nn.GELU):
                    setattr(m, name, nn.GELU(approximate="tanh"))
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class _Variant:
    def __init__(
        self,
        label: str,
        model: nn.Module,
        bf16: bool,
        channels_last: bool,
        threads: int = 0,
        optimizer=None,
        batch: int = BATCH,
    ):
        self.label, self.model, self.bf16, self.threads, self.batch = label, model, bf16, threads, batch
        self.forward = model
        self.compile_seconds: float | None = None
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = optimizer or torch.optim.SGD(params, lr=1e-3, momentum=0.85, nesterov=True)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, 32, 32, generator=g)
        self.x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        self.y = torch.randint(0, 10, (batch,), generator=g)
        self.times: list[float] = []

    def step(self) -> float:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.forward(self.x), self.y, label_smoothing=0.2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        elapsed = time.perf_counter() - t
        torch.set_num_threads(before)
        return elapsed

    @property
    def rate(self) -> float:
        return self.batch / statistics.median(self.times)


def _recipe_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The speedrun recipe's optimiser, built by the engine from the recipe file itself."""
    from imgcls.config_reader import load_recipe, read_section
    from imgcls.engine.config import OptimConfig
    from imgcls.engine.optim import build_optimizer

    return build_optimizer(model, read_section(OptimConfig, load_recipe("speedrun")["optim"]))


_FAMILIES = (
    ("conv backward", ("convolution_backward",)),
    ("conv forward", ("mkldnn_convolution", "_convolution", "conv2d")),
    ("max-pool (fwd + bwd, incl. zero-fill)", ("max_pool2d", "fill_", "zero_")),
    ("GELU (fwd + bwd)", ("gelu",)),
    ("BatchNorm (fwd + bwd)", ("batch_norm",)),
    ("optimizer", ("sgd", "_foreach", "add_", "mul_", "lerp")),
)


def _profile(variant: _Variant) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            variant.step()
    shares: dict[str, float] = {name: 0.0 for name, _ in _FAMILIES}
    other = 0.0
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        name = event.key[len("aten::") :]
        for family, keys in _FAMILIES:
            if any(k in name for k in keys):
                shares[family] += event.self_cpu_time_total
                break
        else:
            other += event.self_cpu_time_total
    total = sum(shares.values()) + other
    rows = [(name, 100 * v / total) for name, v in shares.items()]
    return [*rows, ("everything else", 100 * other / total)]


def _data_rate() -> float:
    from imgcls.constants import CIFAR10_MEAN as CIFAR_MEAN
    from imgcls.constants import CIFAR10_STD as CIFAR_STD
    from imgcls.data.augment import AugmentConfig, build_batch_transform
    from imgcls.data.loader import ArraySamples, BatchLoader

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50_000, 3, 32, 32), dtype=np.uint8)
    aug = AugmentConfig(crop_padding=2, padding_mode="reflect", alternate_flip=True)
    transform = build_batch_transform(aug, True, 32, CIFAR_MEAN, CIFAR_STD)
    samples = ArraySamples(images, rng.integers(0, 10, 50_000), in_chans=3)
    loader = BatchLoader(samples, batch_size=BATCH, train=True, seed=0, transform=transform, alternate_flip=True)
    loader.set_epoch(1)
    t = time.perf_counter()
    n = sum(x.shape[0] for x, _ in loader.iterate())
    return n / (time.perf_counter() - t)


def run() -> str:
    from imgcls._memory import keep_freed_memory
    from imgcls.models import create_model, profile

    # The allocator setting `imgcls train` applies at start, so the step is timed and profiled as the command runs
    # it (with glibc's defaults a batch-2000 step pays ~800,000 page faults: imgcls._memory).
    kept = keep_freed_memory()
    load_before = os.getloadavg()
    threads = torch.get_num_threads()
    macs = profile(create_model("airbench94", num_classes=10), (3, 32, 32)).macs
    from benchmarks.bench_speedrun import peak_flops
    from imgcls.engine.precision import cpu_has_bf16

    native_bf16 = cpu_has_bf16()
    precision = "bf16" if native_bf16 else "fp32"
    bf16 = native_bf16  # the recipe's precision (``auto``) on this CPU
    tag = f"{precision}, channels_last"
    variants = [
        _Variant("fp32, NCHW", _model(channels_last=False), bf16=False, channels_last=False),
        _Variant("fp32, channels_last", _model(), bf16=False, channels_last=True),
        _Variant("bf16, NCHW", _model(channels_last=False), bf16=True, channels_last=False),
        _Variant("bf16, channels_last", _model(), bf16=True, channels_last=True),
    ]
    if not native_bf16:
        del variants[2:]  # emulated bf16 steps take minutes here; the peaks below show what bf16 costs
    recipe = variants[1] if not native_bf16 else variants[3]
    recipe.label += " (the recipe's step)"
    variants += [
        _Variant(f"{tag}, block 2 weight grad in fp32", _model(True), bf16=bf16, channels_last=True),
        _Variant(f"{tag}, GELU tanh approximation", _model(tanh_gelu=True), bf16=bf16, channels_last=True),
        _Variant(f"{tag}, 1 thread", _model(), bf16=bf16, channels_last=True, threads=1),
        _Variant(f"{tag}, batch 2000, Nesterov SGD", _model(), bf16=bf16, channels_last=True, batch=2000),
    ]
    muon_model = _model()
    variants.append(
        _Variant(
            f"{tag}, batch 2000, Muon + SGD (the speedrun recipe's optimiser)",
            muon_model,
            bf16=bf16,
            channels_last=True,
            optimizer=_recipe_optimizer(muon_model),
            batch=2000,
        )
    )
    compiled = _Variant(f"{tag}, torch.compile", _model(), bf16=bf16, channels_last=True)
    compiled.forward = torch.compile(compiled.model)
    t = time.perf_counter()
    compiled.step()  # compiles forward; backward compiles on the same call
    compiled.compile_seconds = time.perf_counter() - t
    variants.append(compiled)
    for v in variants:
        v.step()  # warm-up
    for _ in range(ROUNDS):
        for v in variants:
            v.times.append(v.step())
    peak = peak_flops(precision)
    fp32_peak = peak_flops("fp32", repeats=2) if native_bf16 else peak
    reference = variants[0].rate
    parts = _profile(recipe)
    conv_share = sum(share for name, share in parts if name.startswith("conv "))
    data_rate = _data_rate()
    load_after = os.getloadavg()

    flops = 6 * macs
    lines = [
        "## Speedrun step: where the time goes (issues 6, 13)",
        "",
        f"airbench94, batch {BATCH}, one training step (forward, label-smoothed cross-entropy, backward, Nesterov "
        f"SGD); every variant built in one process and timed in {ROUNDS} interleaved rounds after a warm-up, "
        f"median round; torch {torch.__version__}, {threads} threads, freed memory kept for reuse as `imgcls train` "
        f"keeps it: {'yes' if kept else 'no (IMGCLS_KEEP_FREED_MEMORY=0, or not glibc)'}. Load average (1/5/15 min) "
        f"{' / '.join(f'{v:.2f}' for v in load_before)} before, {' / '.join(f'{v:.2f}' for v in load_after)} "
        f"after. {macs / 1e6:.1f} MMACs per image forward; achieved GFLOP/s = images/s × 6 × MACs; {precision} peak "
        f"measured in the same run (the precision `auto` picks on this CPU): {peak / 1e9:.0f} GFLOP/s (best of a "
        "4096² matmul and 3×3 convs 256→256)"
        + (
            f"; fp32 peak {fp32_peak / 1e9:.0f} GFLOP/s."
            if native_bf16
            else ". This CPU has no bf16 units: bf16 is emulated there (slower than fp32), so no bf16 step is timed."
        ),
        "",
        f"| configuration | images/s | vs fp32 NCHW | GFLOP/s | % of {precision} peak "
        "| 8 epochs of 50,000 at this rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        extra = f" (compile: {v.compile_seconds:.0f} s once)" if v.compile_seconds is not None else ""
        lines.append(
            f"| {v.label}{extra} | {v.rate:.0f} | {v.rate / reference:.2f}x | {v.rate * flops / 1e9:.0f} | "
            f"{100 * v.rate * flops / peak:.0f} | {400_000 / v.rate:.0f} s |"
        )
    lines += [
        "",
        "Self CPU time of the recipe's step by operator family (`torch.profiler`, two steps):",
        "",
        "| operators | share of the step |",
        "|---|---:|",
        *(f"| {name} | {share:.1f} % |" for name, share in parts),
        "",
        f"Data path from the uint8 array (reflect pad 2 + random translate, alternating flip, normalise; batch "
        f"{BATCH}, one epoch of 50,000): {data_rate:,.0f} images/s, i.e. {100 * recipe.rate / data_rate:.1f} % "
        "of the recipe's step time.",
        "",
        f"What the figures say: the convolutions ({conv_share:.0f} % of the step's time) do all of its counted "
        f"arithmetic at about {100 * recipe.rate * flops / peak / (conv_share / 100):.0f} % of the measured peak. "
        f"The speedrun recipe (8 epochs of 50,000 at batch 2000, about 0.28 PFLOP of training) needs "
        f"{400_000 * flops / peak:.0f} s at 100 % of this peak, before any data, validation or TTA time.",
        "",
        f"Command: `{COMMAND}`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
