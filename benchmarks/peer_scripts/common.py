"""What the peer scripts share: argument parsing, threads, the model, evaluation, the JSON result line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

T_START = time.perf_counter()


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--train", help="training folder (class subfolders)")
    p.add_argument("--val", help="evaluation folder (class subfolders)")
    p.add_argument("--model", default="resnet18_cifar", help="resnet18_cifar (CIFAR stem) or resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument(
        "--warmup-epochs", type=int, default=0, help="linear warm-up from lr/10 over these epochs, then cosine to 0"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (used where the CPU has bf16 units)")
    return p


def setup_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    """torch's schedulers for a linear warm-up from lr/10 over ``warmup_steps``, then cosine from the peak to 0
    over the remaining steps, stepped per update: the schedule of the imgcls and timm sides."""
    import torch

    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps)
    if not warmup_steps:
        return cosine
    rise = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [rise, cosine], milestones=[warmup_steps])


def add_repo_to_path() -> None:
    """The same network definition as imgcls (its model zoo imports only torch)."""
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    sys.path.insert(0, os.path.abspath(src))


def evaluate(model, loader, channels_last: bool, bf16: bool) -> float:
    import torch

    model.eval()
    hits = total = 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for x, y in loader:
            x = x.float()
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            hits += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * hits / max(1, total)


def emit(**values) -> None:
    values["process_seconds"] = time.perf_counter() - T_START
    print(json.dumps(values), flush=True)
