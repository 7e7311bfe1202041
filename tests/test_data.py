"""Datasets, Fix-set download safety, own folders, sampler and batch layout."""

import io
import logging
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from mcl_core import data as D
from mcl_core.augment import TrainAugment
from mcl_core.data import (
    DATASET_NAMES,
    RotationBatchSampler,
    build_train_batch,
    data_root,
    iter_batches,
    load_dataset,
)

LSUN_IDS = D._FIX_SETS["lsun_fix"].file_ids


# ---------------------------------------------------------------------------
# names and roots


def test_unknown_name_lists_accepted_names():
    with pytest.raises(ValueError) as err:
        load_dataset("cifar11", image_size=32)
    for name in DATASET_NAMES:
        assert name in str(err.value)
    assert "folder:PATH" in str(err.value)


def test_data_root_prefers_argument_then_env_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MCL_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("MCL_DATA")
    assert data_root() == Path.home() / ".cache" / "mcl" / "data"


def test_missing_cifar_without_download_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("cifar10", image_size=32, root=tmp_path, download=False)


# ---------------------------------------------------------------------------
# offline sets


def test_digits_split_is_fixed_stratified_and_complete():
    train = load_dataset("digits", "train", image_size=8)
    test = load_dataset("digits", "test", image_size=8)
    assert len(train) + len(test) == 1797
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64

    # per class: round(30 %) of the class in test
    counts = np.bincount(np.concatenate([train.labels, test.labels]), minlength=10)
    np.testing.assert_array_equal(
        np.bincount(test.labels, minlength=10), np.rint(0.3 * counts)
    )
    # grey replicated to 3 channels, 0..16 scaled to 0..255
    assert_close(train.images[:, 0], train.images[:, 2], rtol=0, atol=0)
    assert int(train.images.max()) == 255

    again = load_dataset("digits", "test", image_size=8)
    assert_close(again.images, test.images, rtol=0, atol=0)


def test_digits_class_selection_reindexes_in_given_order():
    ind = load_dataset("digits", "train", image_size=16, classes=range(6))
    ind_test = load_dataset("digits", "test", image_size=16, classes=range(6))
    ood = load_dataset("digits", "test", image_size=16, classes=(9, 6, 7, 8))
    assert (len(ind), len(ind_test), len(ood)) == (758, 325, 214)
    assert ind.images.shape[1:] == (3, 16, 16)
    assert ind.class_names == ["0", "1", "2", "3", "4", "5"]
    assert ood.class_names == ["9", "6", "7", "8"]

    # label 0 of the OOD selection is digit 9
    full = load_dataset("digits", "test", image_size=16)
    nines = full.images[full.labels == 9]
    assert_close(ood.images[ood.labels == 0], nines, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out of range"):
        load_dataset("digits", image_size=8, classes=(3, 12))


@pytest.mark.parametrize("name", ["photos", "noise"])
def test_unlabelled_offline_sets_are_deterministic(name):
    a = load_dataset(name, "test", image_size=16)
    b = load_dataset(name, "test", image_size=16)
    other = load_dataset(name, "train", image_size=16)
    assert a.images.shape == (500, 3, 16, 16) and a.images.dtype == torch.uint8
    assert (a.labels == -1).all() and a.class_names == []
    assert_close(a.images, b.images, rtol=0, atol=0)
    assert not torch.equal(a.images, other.images)


def test_noise_is_half_gaussian_half_uniform():
    x = load_dataset("noise", "test", image_size=32).images.double() / 255
    gauss, unif = x[:250], x[250:]
    assert abs(gauss.mean() - 0.5) < 0.01 and abs(unif.mean() - 0.5) < 0.01
    assert abs(unif.std() - 1 / np.sqrt(12)) < 0.01
    assert gauss.std() < unif.std() - 0.02


def test_synthetic_is_labelled_balanced_and_learnable():
    from sklearn.neighbors import KNeighborsClassifier

    train = load_dataset("synthetic", "train", image_size=8)
    test = load_dataset("synthetic", "test", image_size=8)
    assert train.images.shape == (720, 3, 8, 8)
    assert list(np.bincount(test.labels)) == [60] * 6
    assert_close(train.images, load_dataset("synthetic", image_size=8).images)

    # nearest neighbours on grey 8x8 pixels already separate the shapes
    def grey(s):
        return s.images.double().mean(1).flatten(1).numpy() / 255

    clf = KNeighborsClassifier(3).fit(grey(train), train.labels.numpy())
    assert clf.score(grey(test), test.labels.numpy()) > 0.9


def test_load_dataset_cached_returns_the_same_object():
    D.clear_cache()
    a = D.load_dataset_cached("noise", "test", image_size=8)
    assert D.load_dataset_cached("noise", "test", image_size=8) is a
    D.clear_cache()


def test_iter_batches_yields_unit_floats_in_order():
    s = load_dataset("synthetic", "test", image_size=8)
    chunks = list(iter_batches(s, batch_size=100))
    assert [len(c) for c in chunks] == [100, 100, 100, 60]
    assert_close(torch.cat(chunks), s.images.float() / 255, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# LSUN-Fix / ImageNet-Fix download


def _png_bytes(seed, size=32, mode="RGB"):
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _archive(path, count=5, kind="tar.gz", **png):
    """A small archive of PNGs in one top-level folder, as the Drive copies."""
    members = {f"LSUN_fix/img/{k:05d}.png": _png_bytes(k, **png) for k in range(count)}
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            for name, blob in members.items():
                z.writestr(name, blob)
    else:
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as t:
            for name, blob in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
    return path


def _url_fetch(urls):
    """A fetch that reads file:// URLs, one per Drive id."""

    def fetch(file_id, folder, filename):
        if file_id not in urls:
            raise OSError(f"network unreachable for {file_id}")
        with urllib.request.urlopen(urls[file_id]) as src:
            (Path(folder) / filename).write_bytes(src.read())

    return fetch


def _leftovers(root):
    return sorted(p.name for p in Path(root).iterdir() if p.name.startswith("."))


@pytest.fixture
def small_fix(monkeypatch):
    monkeypatch.setattr(D, "FIX_SET_COUNT", 5)


def test_fix_set_download_installs_verified_folder(tmp_path, small_fix, monkeypatch):
    src = _archive(tmp_path / "served.tar.gz")
    root = tmp_path / "data"
    fetch = _url_fetch({LSUN_IDS[0]: src.as_uri()})
    monkeypatch.setattr(D, "_google_drive_fetch", fetch)

    s = load_dataset("lsun_fix", "test", image_size=16, root=root)
    assert s.images.shape == (5, 3, 16, 16) and (s.labels == -1).all()
    manifest = (root / "LSUN_fix" / D.MANIFEST_NAME).read_text().splitlines()
    assert len(manifest) == 5 and manifest[0].endswith("img/00000.png")
    assert _leftovers(root) == []

    # the pixels are those of the archive
    first = np.asarray(Image.open(io.BytesIO(_png_bytes(0))))
    full = load_dataset("lsun_fix", image_size=32, root=root, download=False)
    np.testing.assert_array_equal(full.images[0].permute(1, 2, 0).numpy(), first)


def test_changed_file_fails_the_manifest_check(tmp_path, small_fix):
    src = _archive(tmp_path / "served.tar.gz")
    fetch = _url_fetch({LSUN_IDS[0]: src.as_uri()})
    folder = D.fetch_fix_set("lsun_fix", tmp_path, fetch=fetch)
    (folder / "img" / "00003.png").write_bytes(_png_bytes(99))
    with pytest.raises(D.DataIntegrityError, match="00003.png"):
        D.fetch_fix_set("lsun_fix", tmp_path, fetch=fetch)


def test_wrong_count_tries_every_copy_and_leaves_nothing(tmp_path, small_fix):
    src = _archive(tmp_path / "four.tar.gz", count=4)
    fetch = _url_fetch({i: src.as_uri() for i in LSUN_IDS})
    with pytest.raises(RuntimeError) as err:
        D.fetch_fix_set("lsun_fix", tmp_path / "data", fetch=fetch)
    message = str(err.value)
    assert "expected 5 images" in message
    assert all(i in message for i in LSUN_IDS)
    assert not (tmp_path / "data" / "LSUN_fix").exists()
    assert _leftovers(tmp_path / "data") == []


def test_wrong_image_size_is_rejected(tmp_path, small_fix):
    src = _archive(tmp_path / "big.zip", kind="zip", size=48)
    fetch = _url_fetch({LSUN_IDS[1]: src.as_uri()})
    with pytest.raises(RuntimeError, match="32x32 RGB"):
        D.fetch_fix_set("lsun_fix", tmp_path / "data", fetch=fetch)


def test_truncated_first_copy_falls_back_to_second(tmp_path, small_fix):
    good = _archive(tmp_path / "good.tar.gz")
    blob = good.read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    fetch = _url_fetch({LSUN_IDS[0]: bad.as_uri(), LSUN_IDS[1]: good.as_uri()})
    folder = D.fetch_fix_set("lsun_fix", tmp_path / "data", fetch=fetch)
    assert len(D._fix_image_files(folder)) == 5
    assert _leftovers(tmp_path / "data") == []


def test_interrupted_download_leaves_no_partial_folder(tmp_path, small_fix):
    def fetch(file_id, folder, filename):
        (Path(folder) / filename).write_bytes(b"\x1f\x8b partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        D.fetch_fix_set("lsun_fix", tmp_path, fetch=fetch)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_names_addresses_and_manual_path(tmp_path, small_fix):
    root = tmp_path / "data"
    with pytest.raises(RuntimeError) as err:
        D.fetch_fix_set("lsun_fix", root, fetch=_url_fetch({}))
    message = str(err.value)
    target = root / "LSUN_fix.tar.gz"
    assert str(target) in message
    assert all(f"https://drive.google.com/file/d/{i}" in message for i in LSUN_IDS)

    # the archive placed there by hand is picked up, even without download
    _archive(target)
    s = load_dataset("lsun_fix", image_size=32, root=root, download=False)
    assert len(s) == 5


def test_missing_fix_set_without_download_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="Imagenet_fix.tar.gz"):
        load_dataset("imagenet_fix", image_size=32, root=tmp_path, download=False)


# ---------------------------------------------------------------------------
# own folders


def _save(path, mode, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(len(str(path))).integers(0, 256, (*size[::-1], 4))
    Image.fromarray(arr.astype(np.uint8), "RGBA").convert(mode).save(path)


def test_own_folder_reads_classes_modes_and_warns_once(tmp_path, caplog):
    _save(tmp_path / "train" / "cat" / "a.png", "L")
    _save(tmp_path / "train" / "cat" / "b.png", "RGBA")
    _save(tmp_path / "train" / "dog" / "c.jpg", "RGB")
    _save(tmp_path / "train" / "dog" / "sub" / "d.bmp", "RGB")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / "fake.png").write_text("not a png either")

    with caplog.at_level(logging.WARNING, logger="mcl_core.data"):
        s = load_dataset(f"folder:{tmp_path}", "train", image_size=8)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 file(s)" in warnings[0].getMessage()
    assert s.images.shape == (4, 3, 8, 8) and s.images.dtype == torch.uint8
    assert s.class_names == ["cat", "dog"]
    assert s.labels.tolist() == [0, 0, 1, 1]
    # the greyscale file comes back with three equal channels
    assert_close(s.images[0, 0], s.images[0, 2], rtol=0, atol=0)


def test_ood_folder_is_flat_or_nested_and_unlabelled(tmp_path):
    _save(tmp_path / "x.png", "RGB")
    _save(tmp_path / "deep" / "er" / "y.webp", "RGB")
    s = load_dataset(f"folder:{tmp_path}", "test", image_size=8)
    assert len(s) == 2 and (s.labels == -1).all()


def test_own_folder_errors_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        load_dataset(f"folder:{tmp_path}", "train", image_size=8)
    (tmp_path / "readme.md").write_text("no images")
    with pytest.raises(ValueError, match="no readable images"):
        load_dataset(f"folder:{tmp_path}", "test", image_size=8)


# ---------------------------------------------------------------------------
# sampler and batch layout


@pytest.fixture
def odd_labels():
    # class sizes 7, 10, 5, 1, 9: odd counts and a class with one image
    sizes = [7, 10, 5, 1, 9]
    labels = np.repeat(np.arange(5), sizes)
    return torch.from_numpy(np.random.default_rng(0).permutation(labels))


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_pairs_every_class_and_uses_images_once(odd_labels, drop_last):
    sampler = RotationBatchSampler(odd_labels, 8, seed=0, drop_last=drop_last)
    for epoch in range(6):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        seen = [i for b in batches for i in b]
        assert len(seen) == len(set(seen))
        if drop_last:
            assert all(len(b) == 8 for b in batches)
            assert len(batches) >= 3
        else:
            assert sorted(seen) == list(range(len(odd_labels)))
        for b in batches:
            counts = np.bincount(odd_labels[b].numpy())
            lonely = [c for c in np.flatnonzero(counts == 1)]
            # only the class with a single image may appear alone
            assert lonely in ([], [3])
            assert drop_last is False or lonely == []


def test_sampler_reshuffles_each_epoch_deterministically(odd_labels):
    a = RotationBatchSampler(odd_labels, 8, seed=3)
    b = RotationBatchSampler(odd_labels, 8, seed=3)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        orders.append(list(a))
    assert orders[0] != orders[1] != orders[2]
    assert list(RotationBatchSampler(odd_labels, 8, seed=4)) != orders[0]
    with pytest.raises(ValueError, match="even"):
        RotationBatchSampler(odd_labels, 7, seed=0)


def test_batch_has_rotations_adjacent_and_views_interleaved():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 6, 6), generator=g, dtype=torch.uint8)
    labels = torch.tensor([2, 0, 2])
    batch = build_train_batch(images, labels, aux_mode="aux", augment=None)
    assert batch.views.shape == (24, 3, 6, 6)
    assert batch.labels.tolist() == [2] * 4 + [0] * 4 + [2] * 4
    assert batch.aux.tolist() == [0, 1, 2, 3] * 3
    for e in range(12):
        i, k = divmod(e, 4)
        expected = torch.rot90(images[i].float() / 255, k, dims=(-2, -1))
        assert_close(batch.views[2 * e], expected, rtol=0, atol=0)
        assert_close(batch.views[2 * e + 1], expected, rtol=0, atol=0)


def test_aux_modes_none_and_da():
    images = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    labels = torch.arange(5)
    none = build_train_batch(images, labels, aux_mode="none", augment=None)
    da = build_train_batch(images, labels, aux_mode="da", augment=None)
    assert none.views.shape[0] == 10 and none.aux is None
    assert none.labels.tolist() == [0, 1, 2, 3, 4]
    assert da.views.shape[0] == 40 and da.aux is None and len(da.labels) == 20
    with pytest.raises(ValueError, match="aux_mode"):
        build_train_batch(images, labels, aux_mode="rot", augment=None)


def test_augmented_batch_is_reproducible_and_views_differ():
    s = load_dataset("synthetic", "train", image_size=16)
    sampler = RotationBatchSampler(s.labels, 16, seed=0)
    idx = next(iter(sampler))
    aug = TrainAugment(16)

    def build(seed):
        g = torch.Generator().manual_seed(seed)
        return build_train_batch(
            s.images[idx], s.labels[idx], aux_mode="aux", augment=aug, generator=g
        )

    a, b = build(1), build(1)
    assert a.views.shape == (128, 3, 16, 16)
    assert_close(a.views, b.views, rtol=0, atol=0)
    assert (a.views[0::2] - a.views[1::2]).abs().amax(dim=(1, 2, 3)).min() > 0
    # every (class, rotation) group of the batch has >= 2 entries
    groups = a.labels * 4 + a.aux
    assert torch.bincount(groups)[torch.unique(groups)].min() >= 2
