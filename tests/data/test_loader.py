"""build_data and BatchLoader: determinism, resume, sharding, eval parity with load_for_eval, streaming."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data import DataConfig, build_data, load_for_eval
from imgcls.data.augment import AugmentConfig, sample_resized_crop
from imgcls.data.loader import ArraySamples, BatchLoader, FileSamples, FileView, convert_channels, generator

AUG = AugmentConfig(crop_padding=2, hflip=0.5, cutout=3)


def _identity(x, generator):
    return x.float()


def _photos(root, per_class=6, size=(40, 30)):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(a).save(root / split / c / f"{i}.jpg", quality=90)
    return root


def _loader(n=10, **kw):
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
    kw.setdefault("batch_size", 3)
    kw.setdefault("train", True)
    return BatchLoader(ArraySamples(images, np.arange(n), 1), seed=kw.pop("seed", 0), transform=_identity, **kw)


def _ids(loader):
    return [y.tolist() for _, y in loader]


def test_order_is_seeded_per_epoch_and_resumable():
    a, b = _loader(), _loader()
    assert _ids(a) == _ids(b)
    assert len(a) == 3 and sum(map(len, _ids(a))) == 9  # last incomplete batch dropped
    a.set_epoch(1)
    first_epoch = _ids(b)
    assert _ids(a) != first_epoch
    b.set_epoch(1)
    assert [y.tolist() for _, y in b.iterate(start_batch=1)] == _ids(a)[1:]
    assert _ids(_loader(seed=1)) != first_epoch


def test_augmentation_draws_replay_on_resume():
    data = build_data("digits", DataConfig(batch_size=256), AUG, image_size=8, in_chans=1, seed=5)
    data.train.set_epoch(2)
    full = list(data.train.iterate())
    resumed = list(data.train.iterate(start_batch=4))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(full[4:], resumed))
    again = build_data("digits", DataConfig(batch_size=256), AUG, image_size=8, in_chans=1, seed=5)
    again.train.set_epoch(2)
    assert torch.equal(next(iter(again.train))[0], full[0][0])
    state = torch.random.get_rng_state()
    list(data.train.iterate(start_batch=len(data.train) - 1))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is never touched


def test_shards_are_disjoint_and_equal():
    shards = [_ids(_loader(n=11, rank=r, world_size=3, batch_size=1)) for r in range(3)]
    flat = [[i for batch in s for i in batch] for s in shards]
    assert len({len(f) for f in flat}) == 1 and len(flat[0]) == 3
    assert len({i for f in flat for i in f}) == 9
    val = [i for r in range(3) for batch in _ids(_loader(n=11, rank=r, world_size=3, train=False)) for i in batch]
    assert sorted(val) == list(range(11))  # every sample evaluated exactly once overall


def test_small_training_set_keeps_its_partial_batch():
    loader = _loader(n=2, batch_size=8)
    assert len(loader) == 1 and loader.num_samples == 2


def test_channel_conversion():
    rgb = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    assert convert_channels(rgb, 1).item() == 76  # 0.299 * 255, as Pillow's convert("L")
    gray = torch.full((2, 1, 2, 2), 9, dtype=torch.uint8)
    assert convert_channels(gray, 3).shape == (2, 3, 2, 2)
    data = build_data("digits", DataConfig(batch_size=16), None, image_size=8, in_chans=3, seed=0)
    x, _ = next(iter(data.train))
    assert x.shape == (16, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    assert len(data.mean) == 3 and data.mean[0] == data.mean[2]


def test_folder_build_issues_and_eval_parity(tmp_path):
    root = _photos(tmp_path / "photos")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"")
    (root / "train" / "dog" / "text.png").write_text("nope")
    cfg = DataConfig(batch_size=4, cache_dir=str(tmp_path / "cache"), workers=1)
    data = build_data(root, cfg, AUG, image_size=24, in_chans=3, seed=0)
    assert data.classes == ["cat", "dog"] and data.num_classes == 2 and data.storage == "cache"
    assert data.resize == 27  # 30 px photos are larger than 24 / 0.875: the ImageNet-style 0.875 crop
    assert sorted(p.rsplit("/", 1)[1] for p, _ in data.issues) == ["broken.jpg", "text.png"]
    out = data.write_issues(tmp_path / "data_issues.csv")
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "reason"] and len(rows) == 3
    assert data.train.num_samples == 12
    x, y = next(iter(data.train))
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64

    # The validation loader preprocesses exactly as predict/serve do.
    xs = torch.cat([x for x, _ in data.val])
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    files = sorted((root / "val").glob("*/*.jpg"))
    ref = torch.stack([load_for_eval(f, 24, data.resize, 3) for f in files]).float()
    assert torch.allclose(xs * std * 255 + mean * 255, ref, atol=1e-3)

    big = build_data(
        root, DataConfig(cache_dir=str(tmp_path / "cache"), crop_pct=0.875), None, image_size=16, in_chans=3, seed=0
    )
    assert big.resize == 18


def test_no_usable_image_is_an_error(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "x.jpg").write_bytes(b"")
    from imgcls.errors import UserError

    with pytest.raises(UserError, match="none of the 2 training image files"):
        build_data(
            tmp_path,
            DataConfig(cache_dir=str(tmp_path / "c"), val_fraction=0),
            None,
            image_size=8,
            in_chans=3,
            seed=0,
            require_val=False,
        )


@pytest.mark.parametrize("rrc", [False, True])
def test_streaming_is_independent_of_workers(tmp_path, rrc):
    root = _photos(tmp_path / "p", per_class=5, size=(64, 48))
    aug = AugmentConfig(hflip=0.5, random_resized_crop=rrc)
    out = []
    for workers in (0, 2):
        cfg = DataConfig(batch_size=4, cache="never", workers=workers)
        data = build_data(root, cfg, aug, image_size=32, in_chans=3, seed=1)
        assert data.storage == "stream" and data.mean != pytest.approx([0.485, 0.456, 0.406])  # its own
        data.train.set_epoch(3)
        out.append([(x, y) for x, y in data.train])
        assert len(out[-1]) == 2 and out[-1][0][0].shape == (4, 3, 32, 32)
        assert torch.cat([y for _, y in data.val]).tolist() == [0, 0, 1, 1]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*out))


def test_streaming_without_rrc_matches_cache(tmp_path):
    root = _photos(tmp_path / "p", per_class=4, size=(50, 40))
    aug = AugmentConfig(crop_padding=2, hflip=0.5)
    stats = {"mean": [0.5] * 3, "std": [0.25] * 3}
    cached = build_data(
        root, DataConfig(batch_size=4, cache_dir=str(tmp_path / "c")), aug, image_size=32, in_chans=3, seed=2, **stats
    )
    streamed = build_data(
        root, DataConfig(batch_size=4, cache="never", workers=0), aug, image_size=32, in_chans=3, seed=2, **stats
    )
    for (xa, ya), (xb, yb) in zip(cached.train, streamed.train):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert torch.equal(torch.cat([x for x, _ in cached.val]), torch.cat([x for x, _ in streamed.val]))


@pytest.mark.parametrize("stats_images", [1000, 5])
def test_cached_and_streamed_normalise_alike(tmp_path, stats_images):
    # Issue 11 item 4: the same command must train the same model whatever the cache size. Before the fix the
    # streamed path used ImageNet's mean/std and the cached one the data's own.
    root = _photos(tmp_path / "p", per_class=6, size=(50, 40))
    aug = AugmentConfig(crop_padding=2, hflip=0.5)
    built = {}
    for cache in ("auto", "never"):
        cfg = DataConfig(batch_size=4, cache=cache, cache_dir=str(tmp_path / cache), stats_images=stats_images)
        built[cache] = build_data(root, cfg, aug, image_size=32, in_chans=3, seed=2)
    cached, streamed = built["auto"], built["never"]
    assert (cached.storage, streamed.storage) == ("cache", "stream")
    assert cached.mean == streamed.mean and cached.std == streamed.std  # bit for bit
    if stats_images >= 12:  # all 12 training images: the exact statistics of the stored view
        ref = np.stack([np.asarray(cached.train.samples.images)]).reshape(12, 3, -1) / 255
        assert cached.mean == pytest.approx(ref.transpose(1, 0, 2).reshape(3, -1).mean(1).tolist(), abs=1e-6)
    assert cached.mean != pytest.approx([0.485, 0.456, 0.406], abs=0.01)
    (xa, ya), (xb, yb) = next(iter(cached.train)), next(iter(streamed.train))
    assert torch.equal(ya, yb) and torch.equal(xa, xb)
    again = build_data(root, DataConfig(cache="never", cache_dir=str(tmp_path / "never"), stats_images=stats_images),
                       None, image_size=32, in_chans=3, seed=0)  # fmt: skip
    assert again.mean == streamed.mean  # kept in the cache folder, not decoded again


def test_eval_data_reads_only_the_evaluated_split(tmp_path):
    # Issue 11 item 5: a folder of class subfolders is evaluated entirely, and nothing of training is decoded.
    rng = np.random.default_rng(0)
    for c, n in (("cat", 7), ("dog", 5)):
        (tmp_path / "flat" / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "flat" / c / f"{i}.png")
    from imgcls.data.loader import build_eval_data

    cache = tmp_path / "cache"
    cfg = DataConfig(cache_dir=str(cache), batch_size=4)
    ev = build_eval_data(tmp_path / "flat", cfg, image_size=24, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3, resize=27)
    assert ev.split == "all" and ev.loader.num_samples == 12 and ev.classes == ["cat", "dog"]
    assert torch.cat([y for _, y in ev.loader]).tolist() == [0] * 7 + [1] * 5
    assert len(list(cache.glob("*.u8"))) == 1  # one cache: the evaluated images only
    xs = torch.cat([x for x, _ in ev.loader]) * 0.25 * 255 + 0.5 * 255
    files = sorted((tmp_path / "flat").glob("*/*.png"))
    ref = torch.stack([load_for_eval(f, 24, 27, 3) for f in files]).float()
    assert torch.allclose(xs, ref, atol=1e-3)

    # split="val" is training's own seeded validation split, still without decoding the training images.
    val = build_eval_data(tmp_path / "flat", DataConfig(cache_dir=str(tmp_path / "c2")), split="val", image_size=24,
                          in_chans=3, mean=[0.5] * 3, std=[0.25] * 3, resize=27)  # fmt: skip
    trained = build_data(tmp_path / "flat", DataConfig(cache_dir=str(tmp_path / "c3")), None, image_size=24,
                         in_chans=3, seed=0)  # fmt: skip
    assert val.split == "val" and val.loader.samples.targets.tolist() == trained.val.samples.targets.tolist()
    assert len(list((tmp_path / "c2").glob("*.u8"))) == 1
    # a run's class map with more classes: the folder's classes take the run's indices
    sub = build_eval_data(tmp_path / "flat", cfg, image_size=24, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3,
                          resize=27, classes=["ant", "cat", "dog"])  # fmt: skip
    assert torch.cat([y for _, y in sub.loader]).tolist() == [1] * 7 + [2] * 5
    from imgcls.errors import UserError

    with pytest.raises(UserError, match="does not know: dog"):
        build_eval_data(tmp_path / "flat", cfg, image_size=24, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3,
                        classes=["ant", "cat"])  # fmt: skip


def test_train_val_test_layout_has_a_separate_test_split(tmp_path):
    root = _photos(tmp_path / "p", per_class=4)
    rng = np.random.default_rng(5)
    for c in ("cat", "dog"):
        (root / "test" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "test" / c / f"t{i}.png")
    cfg = DataConfig(cache_dir=str(tmp_path / "c"), batch_size=4)
    data = build_data(root, cfg, None, image_size=24, in_chans=3, seed=0)
    assert data.val.num_samples == 4 and data.test.num_samples == 6 and data.train.num_samples == 8
    assert torch.cat([y for _, y in data.test]).tolist() == [0, 0, 0, 1, 1, 1]
    two_way = build_data(_photos(tmp_path / "q", per_class=4), cfg, None, image_size=24, in_chans=3, seed=0)
    assert two_way.test is None and two_way.val.num_samples == 4  # train/ and val/ only: no separate test split
    from imgcls.data.loader import build_eval_data

    ev = build_eval_data(root, cfg, image_size=24, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3)
    assert ev.split == "test" and ev.loader.num_samples == 6  # "auto" on a layout: its test split


def test_multilabel_csv_targets(tmp_path):
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(tmp_path / f"{i}.png")
    lines = [f"{i}.png,{'a b' if i % 2 else 'b'}" for i in range(6)]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    data = build_data(
        tmp_path / "l.csv",
        DataConfig(batch_size=2, cache_dir=str(tmp_path / "c"), val_fraction=0.34),
        None,
        image_size=8,
        in_chans=3,
        seed=0,
    )
    assert data.task == "multilabel" and data.classes == ["a", "b"]
    _, y = next(iter(data.train))
    assert y.dtype == torch.float32 and y.shape == (2, 2) and (y[:, 1] == 1).all()


@pytest.mark.slow
def test_shared_cifar10_folders(cifar10_folder, tmp_path):
    cfg = DataConfig(batch_size=500, cache_dir=str(tmp_path / "cache"))
    data = build_data(cifar10_folder, cfg, AUG, image_size=32, in_chans=3, seed=0)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert data.train.num_samples == 50_000 and data.val.num_samples == 10_000 and not data.issues
    assert data.resize == 32
    assert data.mean == pytest.approx([0.491, 0.482, 0.447], abs=0.01)  # the published CIFAR-10 means
    x, y = next(iter(data.train))
    assert x.shape == (500, 3, 32, 32) and len(torch.unique(y)) == 10


def test_gather_is_numpy_indexing_for_memory_maps_and_views(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (50, 3, 5, 4), dtype=np.uint8)
    path = tmp_path / "images.u8"
    images.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=images.shape)
    index = np.array([7, 3, 49, 0, 3])
    for array in (images, mapped, images[:, :, ::-1]):  # the last one is not contiguous
        x, y = ArraySamples(array, np.arange(50), 3).gather(index)
        assert x.shape == (5, 3, 5, 4) and np.array_equal(x.numpy(), np.asarray(array)[index])
        assert y.tolist() == index.tolist()
    grey, _ = ArraySamples(images[:, :1], np.arange(50), 3).gather(index)
    assert grey.shape == (5, 3, 5, 4) and torch.equal(grey[:, 0], grey[:, 2])


def test_resized_crop_of_a_file_follows_pillow(tmp_path):
    # The streamed RandomResizedCrop resizes the box with torch's uint8 kernel; Pillow's box resize differs only
    # near the box edges, where its filter reads a pixel or two beyond the box.
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:90, 0:120]
    smooth = np.stack([np.sin(xx / 9.0), np.cos(yy / 7.0), np.sin((xx + yy) / 13.0)], -1)
    Image.fromarray(((smooth + 1) * 120 + rng.normal(0, 3, smooth.shape)).clip(0, 255).astype(np.uint8)).save(
        tmp_path / "a.png"
    )
    view = FileView("rrc", 32, 32, 3, 10**8, 10**9)
    samples = FileSamples([str(tmp_path / "a.png")], np.zeros(1, dtype=np.int64), view)
    for seed in range(6):
        x = samples.load(0, seed)
        top, left, h, w = sample_resized_crop(90, 120, view.rrc_scale, view.rrc_ratio, generator(seed))
        with Image.open(tmp_path / "a.png") as im:
            ref = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR, box=(left, top, left + w, top + h)))
        diff = np.abs(x.numpy().transpose(1, 2, 0).astype(int) - ref.astype(int))
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
        assert diff.mean() < 1.0 and np.median(diff) <= 1
