"""Parameters and multiply-accumulates (MACs), in total and per top-level module.

The counting is torch's own :class:`torch.utils.flop_counter.FlopCounterMode`; this module only runs one
forward pass (eval mode, ``torch.no_grad()``, batch 1) and attributes what it counts to the model's top-level
children with forward hooks.

What is counted: convolutions, linear layers and matrix products (``aten.convolution``, ``mm``, ``addmm``,
``bmm``, ``baddbmm``, attention). FlopCounterMode reports 2 FLOPs per multiply-add for each of them, so
``macs = flops // 2`` exactly. What is not counted: pooling, activations, batch norm (in eval mode it is an
affine map that folds into the preceding convolution), local response normalisation, element-wise additions
of residual connections and concatenations. This is the convention of the papers' tables (He et al. 2015,
Table 1 "FLOPs" are multiply-adds of conv/fc layers; Szegedy et al. 2014, Table 1 "ops"), of torchvision's
``_ops`` metadata and of timm's ``GMACs``, so the figures compare directly: ResNet-18 1.8 G, VGG-16 15.5 G at
224×224.

Each row covers one top-level child (``model.named_children()``) and everything below it, in the order the
forward pass first calls it; its output shape is that of the last call into it. Work the model's own
``forward`` does outside any child (e.g. a functional ``F.linear``) and parameters registered directly on the
model land in a final ``(other)`` row, so rows always sum to the totals. Children the eval-mode forward does
not call (auxiliary heads) keep their parameters in a row with no output shape and 0 MACs; they are part of
``params`` because they are part of the weights file.

A model built on the meta device is profiled without memory or arithmetic (FlopCounterMode counts from
shapes), which is how the model table is made::

    with torch.device("meta"):
        model = create_model("vgg16")
    profile(model).macs  # 15_470_264_320
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

OTHER = "(other)"


@dataclass(frozen=True)
class LayerProfile:
    """One top-level child module.

    Attributes:
        name: attribute name of the child (``"layer1"``, ``"inception3a"``), or ``"(other)"``.
        kind: class name of the child (``"Conv2d"``, ``"Sequential"``, ...).
        output_shape: output of one sample, batch dimension dropped, e.g. ``(64, 56, 56)``; a tuple of
            shapes when the child returns several tensors; ``None`` when the forward pass did not call it.
        params: number of parameter elements of the child (shared parameters counted once, at first use).
        macs: multiply-accumulates of one sample through the child.
    """

    name: str
    kind: str
    output_shape: tuple | None
    params: int
    macs: int


@dataclass(frozen=True)
class Profile:
    """Totals and per-module rows of one model at one input size (batch 1).

    ``params`` counts every parameter (what the weights file holds); ``inference_params`` leaves out the
    children the eval-mode forward pass does not call (GoogLeNet's and Inception v3's auxiliary classifiers, used
    in training only), which is what the papers' tables count.
    """

    input_size: tuple[int, ...]
    params: int
    macs: int
    layers: list[LayerProfile] = field(default_factory=list)

    @property
    def unused(self) -> list[LayerProfile]:
        """Rows of the children the eval-mode forward pass did not call (training-only heads)."""
        return [r for r in self.layers if r.output_shape is None and r.name != OTHER]

    @property
    def inference_params(self) -> int:
        """Parameters of the test-time network: ``params`` less those of :attr:`unused`."""
        return self.params - sum(r.params for r in self.unused)

    def to_dict(self) -> dict:
        """A JSON-ready dict (shapes as lists), with ``inference_params`` and ``training_only`` (the unused
        children's names) beside the totals."""
        return {
            **asdict(self),
            "inference_params": self.inference_params,
            "training_only": [r.name for r in self.unused],
        }


def _shape_of(output) -> tuple | None:
    # Per-sample shape: drop the batch dimension of every tensor in the output.
    if isinstance(output, torch.Tensor):
        return tuple(output.shape[1:])
    if isinstance(output, (tuple, list)):
        shapes = tuple(s for s in (_shape_of(o) for o in output) if s is not None)
        return shapes or None
    return None


def profile(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224)) -> Profile:
    """Count parameters and MACs of `model` for one sample of shape `input_size`.

    Args:
        model: any ``nn.Module`` taking a ``(N, *input_size)`` tensor; its training mode is restored afterwards.
        input_size: per-sample input shape, ``(C, H, W)`` for images.

    Returns:
        A :class:`Profile` whose rows (one per top-level child, in call order) sum to ``params`` and ``macs``.
    """
    params_total = sum(p.numel() for p in model.parameters())
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros((1, *input_size), device=device, dtype=dtype)

    children = dict(model.named_children())
    order: list[str] = []
    macs: dict[str, int] = {name: 0 for name in children}
    shapes: dict[str, tuple | None] = {name: None for name in children}
    counter = FlopCounterMode(display=False)
    start: dict[str, int] = {}
    depth: dict[str, int] = {name: 0 for name in children}

    # Hooks go on every module below a child, not only on the child: a model may call a child in pieces
    # (VGG's head runs `classifier[:-1]` then `classifier[-1]`, which never calls `classifier` itself). The
    # outermost active call of a child's subtree opens and closes its count; its output is the child's output.
    def pre_hook(name):
        def hook(module, args):
            if depth[name] == 0:
                start[name] = counter.get_total_flops()
            depth[name] += 1

        return hook

    def post_hook(name):
        def hook(module, args, output):
            depth[name] -= 1
            if depth[name] == 0:
                macs[name] += (counter.get_total_flops() - start.pop(name)) // 2
                shapes[name] = _shape_of(output)
                if name not in order:
                    order.append(name)

        return hook

    handles = []
    owner: dict[int, str] = {}
    for name, child in children.items():
        for module in child.modules():
            if id(module) in owner:  # shared with an earlier child: counted there
                continue
            owner[id(module)] = name
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    macs_total = counter.get_total_flops() // 2

    rows: list[LayerProfile] = []
    seen: set[int] = set()  # a parameter shared by two children counts once, where it is first used

    def own_params(module: nn.Module) -> int:
        n = 0
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n

    for name in order + [n for n in children if n not in order]:
        child = children[name]
        rows.append(LayerProfile(name, type(child).__name__, shapes[name], own_params(child), macs[name]))
    rest_params = params_total - sum(r.params for r in rows)
    rest_macs = macs_total - sum(r.macs for r in rows)
    if rest_params or rest_macs:
        rows.append(LayerProfile(OTHER, type(model).__name__, None, rest_params, rest_macs))
    return Profile(tuple(input_size), params_total, macs_total, rows)


@contextmanager
def norms_skipped(model: nn.Module):
    """Within the block, `model`'s batch-norm layers pass their input through unchanged.

    For shape and MAC counting on the meta device only: batch norm keeps the shape and is not counted, and on the
    meta device it runs through a Python decomposition (~30 ms per call, most of the time of a meta pass through
    Inception v3).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.forward = _identity
    try:
        yield model
    finally:
        for m in norms:
            del m.forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def profile_model(name: str, input_size: tuple[int, int, int] | None = None, **kw) -> tuple[nn.Module, Profile]:
    """Build registered model `name` on the meta device and profile it (no weights allocated, no arithmetic).

    Args:
        name: a registered model name.
        input_size: ``(C, H, W)``; default: the model's native input size.
        **kw: passed to ``create_model`` (``num_classes``...).

    Returns:
        ``(model, profile)``. Falls back to a CPU model when the meta device cannot run the model.
    """
    from imgcls.errors import UserError
    from imgcls.models._registry import create_model, model_entry

    entry = model_entry(name)
    size = tuple(input_size) if input_size is not None else entry.input_size
    kw.setdefault("in_chans", size[0])
    last_error: Exception | None = None
    for device in ("meta", "cpu"):
        with torch.device(device):
            model = create_model(name, **kw)
        try:
            with norms_skipped(model):
                return model, profile(model, size)
        except NotImplementedError as exc:  # an operator without a meta kernel: count on the CPU instead
            last_error = exc
        except RuntimeError as exc:  # e.g. the input shrinks to nothing inside the network
            raise UserError(f"input size {'x'.join(map(str, size))} does not fit {name}: {_first_line(exc)}") from None
    raise UserError(f"cannot profile {name}: {_first_line(last_error)}")


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def format_count(n: int | float) -> str:
    """Human-readable count: 1.8G, 11.7M, 2.7K, 64."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def format_shape(shape: tuple | None, paper: bool = False) -> str:
    """``(64, 56, 56)`` as ``64×56×56``, or paper-style ``56×56×64`` (H×W×C, as in Szegedy et al., Table 1)."""
    if shape is None:
        return "-"
    if shape and isinstance(shape[0], tuple):
        return ", ".join(format_shape(s, paper) for s in shape)
    dims = list(shape)
    if paper and len(dims) == 3:
        dims = [dims[1], dims[2], dims[0]]
    return "×".join(str(d) for d in dims)


def _first(module: nn.Module, kinds: tuple[type, ...]) -> nn.Module | None:
    return next((m for m in module.modules() if isinstance(m, kinds)), None)


def _pair(v) -> str:
    v = v if isinstance(v, tuple) else (v, v)
    return f"{v[0]}×{v[1]}"


def describe(name: str, module: nn.Module) -> str:
    """The "type" column of a paper-style table: ``convolution 7×7/2``, ``max pool 3×3/2``, ``inception (3a)``."""
    kind = type(module).__name__
    if "inception" in kind.lower() or name.startswith("inception"):
        suffix = name[len("inception") :] if name.startswith("inception") else ""
        return f"inception ({suffix})" if suffix else "inception"
    pool = module if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) else None
    if pool is not None:
        stride = pool.stride if pool.stride is not None else pool.kernel_size
        label = "max pool" if isinstance(pool, nn.MaxPool2d) else "avg pool"
        return f"{label} {_pair(pool.kernel_size)}/{stride if isinstance(stride, int) else stride[0]}"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return "avg pool (global)" if isinstance(module, nn.AdaptiveAvgPool2d) else "max pool (global)"
    if "globalpool" in kind.lower():  # our layers.GlobalPool2d keeps its kind ("avg" or "max")
        return f"{getattr(module, 'kind', 'avg')} pool (global)"
    if isinstance(module, nn.LocalResponseNorm):
        return f"local response norm ({module.size})"
    if isinstance(module, nn.Dropout):
        return f"dropout ({module.p:.0%})"
    if isinstance(module, nn.Linear):
        return "linear"
    conv = _first(module, (nn.Conv2d,))
    linear = _first(module, (nn.Linear,))
    if conv is not None and len(list(module.modules())) <= 6:  # a conv wrapper (conv + norm + activation)
        return f"convolution {_pair(conv.kernel_size)}/{conv.stride[0]}"
    if conv is None and linear is not None:
        return "linear"
    return kind


def format_table(prof: Profile, model: nn.Module | None = None, paper: bool = False) -> str:
    """A plain-text table of `prof`: one row per top-level module, then the totals.

    Args:
        prof: the result of :func:`profile`.
        model: the profiled model; needed for ``paper=True`` (the "type" column reads its modules).
        paper: lay the table out like Szegedy et al. 2014, Table 1 (type, output size H×W×C, params, ops).
    """
    modules = dict(model.named_children()) if model is not None else {}
    if paper:
        header = ("type", "layer", "output size", "params", "ops")
        body = [
            (
                describe(r.name, modules[r.name]) if r.name in modules else r.kind,
                r.name,
                format_shape(r.output_shape, paper=True),
                format_count(r.params) if r.params else "",
                format_count(r.macs) if r.macs else "",
            )
            for r in prof.layers
        ]
    else:
        header = ("layer", "type", "output shape", "params", "MACs")
        body = [
            (r.name, r.kind, format_shape(r.output_shape), f"{r.params:,}", format_count(r.macs)) for r in prof.layers
        ]
    count = format_count if paper else (lambda n: f"{n:,}")
    unused = prof.unused
    shape_in = "" if paper else format_shape(prof.input_size) + " in"
    if unused:
        # The test-time network first (the papers' figure), then what training adds (Szegedy et al. 2014: the
        # auxiliary classifiers are discarded at inference time).
        names = ", ".join(r.name for r in unused)
        totals = [
            ("total (test time)", "", shape_in, count(prof.inference_params), format_count(prof.macs)),
            (f"+ training only ({names})", "", "", count(prof.params - prof.inference_params), ""),
            ("total with training-only heads", "", "", count(prof.params), ""),
        ]
    else:
        totals = [("total", "", shape_in, count(prof.params), format_count(prof.macs))]
    rows = [header, *body, *totals]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {3, 4}

    def line(row):
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body), rule, *(line(r) for r in totals)])


__all__ = [
    "LayerProfile",
    "Profile",
    "describe",
    "format_count",
    "format_shape",
    "format_table",
    "norms_skipped",
    "profile",
    "profile_model",
]
