"""The data pipeline alone, imgcls's way: `build_data` on the same JPEG folder with RandomResizedCrop 224 + flip,
the same workers; times every batch from the first one. Runs in the product's venv.

``--cache auto`` (the default) decodes each file once into a uint8 cache of shorter-side-256 centre squares and
crops from it; ``--cache never`` decodes every file in every epoch and crops the full image, as torchvision does."""

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
    p.add_argument("--cache", default="auto", help="data.cache: auto (the default) or never (stream every file)")
    args = p.parse_args()
    setup_threads(args.threads)
    from imgcls.data import DataConfig, build_data
    from imgcls.data.transforms import AugmentConfig

    cfg = DataConfig(batch_size=args.batch_size, workers=args.workers, val_fraction=0.0, cache=args.cache)
    aug = AugmentConfig(random_resized_crop=True, hflip=0.5)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    data = build_data(args.folder, cfg, aug, image_size=224, in_chans=3, seed=0, mean=mean, std=std, require_val=False)
    batches, t_start = [], time.perf_counter()
    for epoch in range(args.passes):
        data.train.set_epoch(epoch)
        t = time.perf_counter()
        for x, _ in data.train.iterate():
            assert x.shape[1:] == (3, 224, 224)
            now = time.perf_counter()
            batches.append(now - t)
            t = now
    emit(batch_seconds=batches, batch_size=args.batch_size, seconds=time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
