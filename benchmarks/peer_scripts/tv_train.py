"""A torchvision training loop as its tutorials write it: ImageFolder, transforms.v2, DataLoader workers, SGD with
cosine steps, channels_last, bf16 autocast where asked; imgcls's network definition (the same model)."""

from __future__ import annotations

import time

from common import add_repo_to_path, emit, evaluate, parser, setup_threads, warmup_cosine


def main() -> None:
    args = parser(__doc__).parse_args()
    setup_threads(args.threads)
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    add_repo_to_path()
    from imgcls.models import create_model

    torch.manual_seed(args.seed)
    mean, std = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)) if args.size <= 64 else IMAGENET
    if args.size <= 64:
        train_tf = [v2.RandomCrop(args.size, padding=4), v2.RandomHorizontalFlip()]
        eval_tf = [v2.CenterCrop(args.size)]
    else:
        train_tf = [v2.RandomResizedCrop(args.size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        eval_tf = [v2.Resize(round(args.size / 0.875), antialias=True), v2.CenterCrop(args.size)]
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train_set = datasets.ImageFolder(args.train, v2.Compose([v2.ToImage(), *train_tf, *tail[1:]]))
    val_set = datasets.ImageFolder(args.val, v2.Compose([v2.ToImage(), *eval_tf, *tail[1:]]))
    loader = DataLoader(
        train_set,
        args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=True,
    )
    val_loader = DataLoader(val_set, 256, num_workers=args.workers)
    model = create_model(args.model, num_classes=len(train_set.classes)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = warmup_cosine(opt, args.warmup_epochs * len(loader), args.epochs * len(loader))
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    epoch_seconds = []
    for _ in range(args.epochs):
        model.train()
        te = time.perf_counter()
        for x, y in loader:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        epoch_seconds.append(time.perf_counter() - te)
    top1 = evaluate(model, val_loader, True, args.bf16)
    emit(train_seconds=time.perf_counter() - t0, epoch_seconds=epoch_seconds, top1=top1, images=len(train_set))


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

if __name__ == "__main__":
    main()
