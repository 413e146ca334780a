import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from edgeskip.data import imagefolder, load_splits
from edgeskip.data.batches import cutout, iterate, random_crop_flip
from edgeskip.data.cifar import load_cifar
from edgeskip.errors import EdgeskipError


def _batch(n, rng, label_key=b"labels", classes=10):
    return {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: list(rng.integers(0, classes, n)),
        b"batch_label": b"synthetic",
    }


def write_cifar10(root, as_archive=True, per_batch=30, corrupt_member=None):
    """A small data set in the official cifar-10-python format (5 train batches, 1 test batch, meta)."""
    rng = np.random.default_rng(0)
    files = {f"data_batch_{i}": _batch(per_batch, rng) for i in range(1, 6)}
    files["test_batch"] = _batch(per_batch, rng)
    files["batches.meta"] = {
        b"label_names": [n.encode() for n in "plane car bird cat deer dog frog horse ship truck".split()],
        b"num_cases_per_batch": per_batch,
    }
    blobs = {k: pickle.dumps(v) for k, v in files.items()}
    if corrupt_member:
        blobs[corrupt_member] = b"not a pickle"
    if as_archive:
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, raw in blobs.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    else:
        (root / "cifar-10-batches-py").mkdir()
        for name, raw in blobs.items():
            (root / "cifar-10-batches-py" / name).write_bytes(raw)
    return files


@pytest.mark.parametrize("as_archive", [True, False])
def test_cifar10_real_format(tmp_path, as_archive):
    files = write_cifar10(tmp_path, as_archive)
    train, test = load_cifar("cifar10", tmp_path)
    assert train.x.shape == (150, 3, 32, 32) and train.x.dtype == np.uint8 and test.x.shape == (30, 3, 32, 32)
    # row-major 3072 = 1024 R, 1024 G, 1024 B
    first = files["data_batch_1"][b"data"][0]
    assert np.array_equal(train.x[0, 1].ravel(), first[1024:2048])
    assert train.y[:30].tolist() == list(files["data_batch_1"][b"labels"])
    assert train.class_names[1] == "car"


def test_cifar100_real_format(tmp_path):
    rng = np.random.default_rng(1)
    blobs = {
        "train": _batch(40, rng, b"fine_labels", 100),
        "test": _batch(20, rng, b"fine_labels", 100),
        "meta": {b"fine_label_names": [f"c{i}".encode() for i in range(100)]},
    }
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for k, v in blobs.items():
        (d / k).write_bytes(pickle.dumps(v))
    splits = load_splits("cifar100", tmp_path, val_fraction=0.25)
    assert len(splits.class_names) == 100 and len(splits.test) == 20 and len(splits.train) + len(splits.val) == 40


def test_cifar_errors(tmp_path):
    with pytest.raises(EdgeskipError, match="does not exist"):
        load_cifar("cifar10", tmp_path / "nope")
    with pytest.raises(EdgeskipError, match="--download"):
        load_cifar("cifar10", tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(EdgeskipError, match="corrupt archive"):
        load_cifar("cifar10", tmp_path)
    other = tmp_path / "x"
    other.mkdir()
    write_cifar10(other, corrupt_member="data_batch_3")
    with pytest.raises(EdgeskipError, match="corrupt CIFAR file"):
        load_cifar("cifar10", other)


def _write_tree(root, n_per_class=6, size=(10, 12), fmt="PNG"):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog", "eel"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / f"{i}.{fmt.lower()}", fmt)


def test_imagefolder_with_cache(tmp_path, monkeypatch):
    _write_tree(tmp_path / "imgs")
    cache = tmp_path / "cache"
    splits = load_splits("imagefolder", tmp_path / "imgs", val_fraction=0.34, cache_dir=cache)
    assert splits.class_names == ["cat", "dog", "eel"]
    assert splits.shape == (3, 10, 12) and len(splits.test) == 18 and len(splits.train) + len(splits.val) == 18
    assert len(list(cache.glob("imagefolder-*.npz"))) == 2
    img = np.asarray(Image.open(tmp_path / "imgs/test/cat/0.png"))
    assert np.array_equal(splits.test.x[0], img.transpose(2, 0, 1))

    def boom(*a, **k):
        raise AssertionError("decoded again despite cache")

    monkeypatch.setattr(imagefolder, "_decode", boom)
    again = load_splits("imagefolder", tmp_path / "imgs", val_fraction=0.34, cache_dir=cache)
    assert np.array_equal(again.test.x, splits.test.x)


def test_imagefolder_jpeg_and_resize(tmp_path):
    _write_tree(tmp_path / "imgs", size=(20, 20), fmt="JPEG")
    splits = load_splits(
        "imagefolder", tmp_path / "imgs", val_fraction=0.34, cache_dir=tmp_path / "c", image_size=(8, 8)
    )
    assert splits.shape == (3, 8, 8)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(EdgeskipError, match="does not exist"):
        load_splits("imagefolder", tmp_path / "missing", cache_dir=tmp_path)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(EdgeskipError, match="no images"):
        load_splits("imagefolder", tmp_path / "empty", cache_dir=tmp_path)
    _write_tree(tmp_path / "bad")
    (tmp_path / "bad/train/cat/9.png").write_bytes(b"not a png")
    with pytest.raises(EdgeskipError, match="cannot decode image .*9.png"):
        load_splits("imagefolder", tmp_path / "bad", cache_dir=tmp_path / "c")
    # the train tree failed to decode: no cache file and no temporary left behind
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_digits_splits_are_disjoint_stratified_and_seeded(digits_splits):
    s = digits_splits
    assert s.shape == (1, 8, 8) and len(s.class_names) == 10
    assert len(s.train) + len(s.val) + len(s.test) == 1797

    def rows(ds):
        return {r.tobytes() for r in ds.x}

    assert not rows(s.val) & rows(s.test)
    assert np.bincount(s.val.y, minlength=10).min() >= 10  # stratified
    again = load_splits("digits")
    assert np.array_equal(again.val.y, s.val.y)
    other = load_splits("digits", seed=5)
    assert not np.array_equal(other.val.y, s.val.y)
    # normalisation statistics come from the training split
    t = torch.from_numpy(s.train.x)
    assert s.norm.mean[0] == pytest.approx(float(t.mean()), abs=1e-5)


def test_augmentation_crop_flip():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    # every output row is a (possibly flipped, shifted, zero-padded) run of one input row
    for i in range(2):
        vals = set(a[i, 0].flatten().tolist()) - {0.0}
        assert vals <= set(x[i, 0].flatten().tolist())


def test_crop_flip_equals_a_per_image_reference():
    # the diagnosis candidate "the crop/flip implementation": the batched gather must equal the textbook
    # per-image version (zero-pad 4, crop 32x32 at the drawn offset, then mirror if drawn)
    x = torch.rand(16, 3, 32, 32)
    g = torch.Generator().manual_seed(7)
    out = random_crop_flip(x, g)
    g = torch.Generator().manual_seed(7)
    oy, ox = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    for i in range(16):
        padded = torch.zeros(3, 40, 40)
        padded[:, 4:36, 4:36] = x[i]
        ref = padded[:, oy[i] : oy[i] + 32, ox[i] : ox[i] + 32]
        assert torch.equal(out[i], ref.flip(2) if flip[i] else ref)
    assert 0 < int(flip.sum()) < 16 and len(set(oy.tolist())) > 1


def test_cutout_zeroes_one_square_per_image():
    x = torch.rand(64, 3, 32, 32) + 1.0  # no zeros before
    out = cutout(x, torch.Generator().manual_seed(1), 16, 64)
    holes = out == 0
    assert torch.equal(holes[:, :1].expand_as(holes), holes)  # the same square in every channel
    for i in range(64):
        ys, xs = holes[i, 0].nonzero(as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert len(ys) == h * w and 8 <= h <= 16 and 8 <= w <= 16  # a rectangle, clipped at most to half
        assert torch.equal(out[i][~holes[i]], x[i][~holes[i]])
    assert (holes[:, 0].sum((1, 2)) == 256).sum() > 5  # whole 16x16 squares where the centre is inside
    assert torch.equal(out, cutout(x, torch.Generator().manual_seed(1), 16, 64))


def test_cutout_shards_union_to_the_whole_batch():
    # a data-parallel rank draws what the single-process run draws and keeps its rows
    x = torch.rand(8, 3, 32, 32) + 1.0
    whole = cutout(x, torch.Generator().manual_seed(5), 16, 8)
    parts = [cutout(x[r], torch.Generator().manual_seed(5), 16, 8, r) for r in (slice(0, 4), slice(4, None))]
    assert torch.equal(torch.cat(parts), whole)


def test_iterate_with_cutout(digits_splits):
    s = digits_splits
    plain = next(iterate(s.train, s.norm, 64, shuffle=True, augment=True, seed=2))[0]
    cut = next(iterate(s.train, s.norm, 64, shuffle=True, augment=True, seed=2, cutout_size=4))[0]
    differ = cut != plain
    assert torch.equal(cut[differ], torch.zeros_like(cut[differ]))  # only zeroed pixels differ
    assert 0 < differ.float().mean() < 0.5


def test_iterate_is_seeded(digits_splits):
    s = digits_splits
    first = [y for _, y in iterate(s.train, s.norm, 100, shuffle=True, seed=3)]
    second = [y for _, y in iterate(s.train, s.norm, 100, shuffle=True, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert sum(len(y) for y in first) == len(s.train)


def test_cifar_pickles_cannot_run_code(tmp_path):
    """A crafted CIFAR batch naming os.system is refused by the restricted unpickler before anything runs."""
    import os

    from edgeskip.data.cifar import _unpickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2], b"batch_label": b"x", b"filenames": [b"a"]}
    for protocol in (2, 3, 4, 5):
        assert _unpickle(pickle.dumps(good, protocol=protocol), "ok")[b"data"].shape == (2, 3072)
    with pytest.raises(EdgeskipError, match="posix.system is not allowed in a CIFAR file"):
        _unpickle(pickle.dumps({b"data": Evil()}), "evil")
    assert not marker.exists()
