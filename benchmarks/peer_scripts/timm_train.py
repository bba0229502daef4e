"""The baseline of timm's `train.py`, built from the timm wheel's own API as `train.py` builds it: `create_model`,
`create_dataset`, `create_loader` (its prefetcher, workers, RandomResizedCrop/flip pipeline; colour jitter off, as
on the other sides), `create_optimizer_v2`, `create_scheduler_v2` stepped per update, `--channels-last`, `--amp
--amp-dtype bfloat16` (where asked). For the CIFAR-stem model the ImageNet stem of timm's resnet18 is replaced by
the 3x3 stride-1 conv without max-pool, which makes it the same network as imgcls's `resnet18_cifar` (same
compute)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import partial

from common import emit, evaluate, parser, setup_threads


def main() -> None:
    args = parser(__doc__).parse_args()
    setup_threads(args.threads)
    import timm
    import torch
    from timm.data import create_dataset, create_loader
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    torch.manual_seed(args.seed)
    cifar = args.model == "resnet18_cifar"
    train_set = create_dataset("", root=args.train, is_training=True, batch_size=args.batch_size)
    val_set = create_dataset("", root=args.val, is_training=False, batch_size=args.batch_size)
    num_classes = len(set(train_set.reader.class_to_idx.values()))
    model = timm.create_model("resnet18", num_classes=num_classes)
    if cifar:
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    else:
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model.to(memory_format=torch.channels_last)
    device = torch.device("cpu")
    common = dict(mean=mean, std=std, num_workers=args.workers, device=device, use_prefetcher=True)
    # train.py's RandomResizedCrop + hflip 0.5, with the scale the other sides use (as its users pass --scale)
    # and --color-jitter 0: the other sides do no colour jitter, so timm's loader does not do more work.
    scale = (0.35, 1.0)
    loader = create_loader(
        train_set,
        (3, args.size, args.size),
        args.batch_size,
        is_training=True,
        scale=scale,
        color_jitter=0.0,
        **common,
    )
    val_loader = create_loader(
        val_set, (3, args.size, args.size), 256, is_training=False, crop_pct=1.0 if cifar else 0.875, **common
    )
    optimizer = create_optimizer_v2(model, "sgd", lr=args.lr, weight_decay=5e-4, momentum=0.9)
    updates = len(loader)
    # --warmup-epochs as a prefix (warmup_prefix: the cosine then spans the remaining epochs), from lr/10.
    scheduler, epochs = create_scheduler_v2(
        optimizer,
        "cosine",
        num_epochs=args.epochs - args.warmup_epochs,
        warmup_epochs=args.warmup_epochs,
        warmup_lr=args.lr * 0.1,
        warmup_prefix=True,
        step_on_epochs=False,
        updates_per_epoch=updates,
    )
    amp = partial(torch.autocast, device_type="cpu", dtype=torch.bfloat16) if args.bf16 else nullcontext
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    epoch_seconds = []
    num_updates = 0
    for epoch in range(epochs):
        model.train()
        te = time.perf_counter()
        for x, y in loader:
            x = x.contiguous(memory_format=torch.channels_last)
            with amp():
                loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
        scheduler.step(epoch + 1)
        epoch_seconds.append(time.perf_counter() - te)
    top1 = evaluate(model, val_loader, True, args.bf16)
    emit(train_seconds=time.perf_counter() - t0, epoch_seconds=epoch_seconds, top1=top1, images=len(train_set))


if __name__ == "__main__":
    main()
