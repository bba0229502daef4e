"""The data pipeline alone, torchvision's way: ImageFolder of JPEG photos, transforms.v2 RandomResizedCrop 224 +
flip + ToDtype + Normalize, DataLoader workers. Times every batch from the first one (worker start included)."""

from __future__ import annotations

import argparse
import time

from common import emit, setup_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--folder", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args()
    setup_threads(args.threads)
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    torch.manual_seed(0)
    tf = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(224, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dataset = datasets.ImageFolder(args.folder, tf)
    loader = DataLoader(
        dataset,
        args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=True,
    )
    batches, t_start = [], time.perf_counter()
    for _ in range(args.passes):
        t = time.perf_counter()
        for x, _ in loader:
            assert x.shape[1:] == (3, 224, 224)
            now = time.perf_counter()
            batches.append(now - t)
            t = now
    emit(batch_seconds=batches, batch_size=args.batch_size, seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
