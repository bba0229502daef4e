"""Write the golden parity files ``tests/models/golden/<name>.json`` from torchvision and timm.

Run it in a throwaway virtualenv that has torchvision and timm (they are not dependencies of imgcls)::

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch torchvision timm  # e.g. 2.14.1, 0.29.1, 1.0.31
    /tmp/refvenv/bin/python tools/make_golden.py            # all architectures
    /tmp/refvenv/bin/python tools/make_golden.py resnet50   # one

For each architecture the reference model's weights are filled by a deterministic procedure of
(key name, shape) alone -- a counter-based integer hash seeded by the CRC-32 of the key -- so no weight file is
committed: ``tests/models/test_weights.py`` re-implements ``fill_value`` on our side, writes the same tensors
under the reference key names into a file, loads it through ``imgcls.create_model(..., weights=file)`` and
compares the logits with the ones recorded here. The golden files are outputs of this script: regenerate
them, never edit them by hand.

Imports only torch, torchvision and timm (not imgcls), so the reference side stays independent of ours.
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from pathlib import Path

import timm
import torch
import torchvision

OUT = Path(__file__).resolve().parents[1] / "tests" / "models" / "golden"
FILL_VERSION = 2
NUM_LOGITS = 32  # how many of the 1000 logits are stored (plus the mean and std of all of them)
_M32 = 0xFFFFFFFF
PERIOD = 65521  # largest prime below 2**16


def _tv(name: str, **kw):
    return lambda: getattr(torchvision.models, name)(weights=None, **kw)


def _timm(name: str):
    return lambda: timm.create_model(name, pretrained=False)


# name -> (library, builder, input size). Small inputs keep the test cheap; the Inception stems need >= 75 px.
ARCHITECTURES = {
    **{
        name: ("torchvision", _tv(name), 64) for name in ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg19", "vgg19_bn")
    },
    "vgg16": ("torchvision", _tv("vgg16"), 64),
    "vgg16_bn": ("torchvision", _tv("vgg16_bn"), 64),
    "resnet18": ("torchvision", _tv("resnet18"), 64),
    "resnet50": ("torchvision", _tv("resnet50"), 64),
    **{name: ("torchvision", _tv(name), 64) for name in ("resnet34", "resnet101", "resnet152", "resnext101_32x8d")},
    "resnext50_32x4d": ("torchvision", _tv("resnext50_32x4d"), 64),
    "densenet169": ("torchvision", _tv("densenet169"), 64),
    "densenet201": ("torchvision", _tv("densenet201"), 64),
    "densenet121": ("torchvision", _tv("densenet121"), 64),
    # torchvision turns transform_input on only when it loads Google's weights; the architecture is without it.
    "inception_v3": (
        "torchvision",
        _tv("inception_v3", aux_logits=True, init_weights=False, transform_input=False),
        96,
    ),
    "inception_v4": ("timm", _timm("inception_v4"), 96),
    "inception_resnet_v2": ("timm", _timm("inception_resnet_v2"), 96),
    "dpn92": ("timm", _timm("dpn92"), 64),
    "mobilenet_v2": ("torchvision", _tv("mobilenet_v2"), 64),
    "mobilenet_v3_large": ("torchvision", _tv("mobilenet_v3_large"), 64),
    "mobilenet_v3_small": ("torchvision", _tv("mobilenet_v3_small"), 64),
    "efficientnet_b0": ("torchvision", _tv("efficientnet_b0"), 64),
    "regnet_x_400mf": ("torchvision", _tv("regnet_x_400mf"), 64),
    "regnet_y_400mf": ("torchvision", _tv("regnet_y_400mf"), 64),
    "regnet_x_800mf": ("torchvision", _tv("regnet_x_800mf"), 64),
    "regnet_y_800mf": ("torchvision", _tv("regnet_y_800mf"), 64),
    "resnet10t": ("timm", _timm("resnet10t"), 64),
}


def uniform(key: str, n: int) -> torch.Tensor:
    """`n` float64 numbers in [0, 1) from an integer hash of (CRC-32 of `key`, index); platform independent.

    Values repeat with period ``PERIOD`` (a prime, so rows of a weight matrix are not copies of each other):
    hashing each of the ~10^8 elements of the larger models would dominate the parity test's time.
    """
    seed = zlib.crc32(key.encode())
    h = (torch.arange(min(n, PERIOD), dtype=torch.int64) + seed) & _M32
    for _ in range(2):  # the "hash32" integer mixer: xor-shift, multiply, twice
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & _M32
    h = h ^ (h >> 16)
    u = h.to(torch.float64) / 2.0**32
    return u.repeat(-(-n // PERIOD))[:n] if n > PERIOD else u


def fill_value(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The deterministic float32 tensor for state-dict entry `key` of `shape` (scaled so activations stay sane)."""
    n = math.prod(shape)
    u = uniform(key, n).reshape(shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        v = 0.5 + u  # positive
    elif leaf == "running_mean":
        v = (2 * u - 1) * 0.1
    elif len(shape) >= 2:
        fan_in = n // shape[0]
        v = (2 * u - 1) * math.sqrt(3.0 / fan_in)  # variance 1/fan_in
    elif leaf == "weight":
        v = 0.75 + 0.5 * u  # norm scale around 1
    else:
        v = (2 * u - 1) * 0.1
    return v.to(torch.float32)


def make(name: str) -> dict:
    library, build, size = ARCHITECTURES[name]
    model = build().eval()
    state = model.state_dict()
    filled = {k: fill_value(k, tuple(v.shape)) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(filled)
    x = (2 * uniform("input", 3 * size * size) - 1).to(torch.float32).reshape(1, 3, size, size)  # in [-1, 1)
    with torch.no_grad():
        logits = model(x)[0].double()
    return {
        "_comment": "Generated by tools/make_golden.py from the reference library; regenerate, never edit by hand.",
        "name": name,
        "library": library,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__},
        "fill_version": FILL_VERSION,
        "input_size": [3, size, size],
        "keys": [[k, list(v.shape)] for k, v in state.items()],
        "logits": [round(float(v), 7) for v in logits[:NUM_LOGITS]],
        "logits_mean": float(logits.mean()),
        "logits_std": float(logits.std()),
    }


def main(argv: list[str]) -> int:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    OUT.mkdir(parents=True, exist_ok=True)
    for name in argv or list(ARCHITECTURES):
        golden = make(name)
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(golden, indent=None, separators=(",", ":")) + "\n")
        print(
            f"{path.name}: {len(golden['keys'])} keys, logits std {golden['logits_std']:.4g}, {path.stat().st_size} B"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
