"""Datasets, the rotation batch sampler and training-batch assembly.

Every dataset is held in memory as ``uint8`` images ``(N, 3, H, W)`` with
``int64`` labels ``(N,)``; out-of-distribution sets without labels carry -1.
Names accepted by :func:`load_dataset` are in :data:`DATASET_NAMES`, plus
``"folder:PATH"`` for a user's own images.

Training batches follow the released pipeline (SPEC §9.7): each image
becomes 4 adjacent entries ``(rot90^k(image), class, k)``, k = 0..3, and
each entry is augmented twice, the two views of entry ``e`` being rows
``2e`` and ``2e+1`` of the view batch (SPEC §0).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

log = logging.getLogger(__name__)

DATASET_NAMES = (
    "cifar10",
    "cifar100",
    "svhn",
    "lsun_fix",
    "imagenet_fix",
    "digits",
    "photos",
    "noise",
    "synthetic",
)
FOLDER_PREFIX = "folder:"
SPLITS = ("train", "test")
AUX_MODES = ("aux", "none", "da")
NUM_ROTATIONS = 4
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
)

# the fixed split and sizes of the offline sets (documented in load_dataset)
DIGITS_TEST_FRACTION = 0.3
DIGITS_SEED = 0
PHOTOS_COUNT = 500
NOISE_COUNT = 500
SYNTHETIC_PER_CLASS = {"train": 120, "test": 60}
SYNTHETIC_CLASSES = ("tee", "ell", "triangle", "half_disc", "ring", "cross")

# LSUN-Fix / ImageNet-Fix (CSI, Tack et al. 2020): 10,000 PNGs of 32x32
FIX_SET_COUNT = 10_000
FIX_SET_SIZE = 32
MANIFEST_NAME = "SHA256SUMS"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass(frozen=True)
class _FixSet:
    folder: str
    file_ids: tuple[str, ...]


# The first id of each set is the one named by the project's issue as the
# CSI authors' upload; the second is the copy linked from public READMEs of
# the CSI repository and its derivatives. No checksum was published, so it
# is unknown whether the two copies of a set hold byte-identical content;
# the per-file manifest written on first success pins whichever arrived.
_FIX_SETS = {
    "lsun_fix": _FixSet(
        "LSUN_fix",
        ("1N8jogMg4C7zaqy5lLKVfRnBF5L0L9_oD", "1KVWj9xpHfVwGcErH5huVujk9snhEGOxE"),
    ),
    "imagenet_fix": _FixSet(
        "Imagenet_fix",
        ("13DTPdXOpW2t6FQ0XdUDYRPDjBb43HgKr", "1sO_-noq10mmziB1ECDyNhD5T4u5otyKA"),
    ),
}

Fetch = Callable[[str, Path, str], None]


class DataIntegrityError(RuntimeError):
    """Raised when files on disk do not match what was verified before."""


@dataclass
class ImageSet:
    """An in-memory image set: uint8 images and int64 labels (-1 = none)."""

    images: Tensor  # (N, 3, H, W) uint8
    labels: Tensor  # (N,) int64
    class_names: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class TrainBatch:
    """Augmented views of a training batch, interleaved (SPEC §0)."""

    views: Tensor  # (2E, 3, S, S) float in [0, 1]; rows 2e, 2e+1 = entry e
    labels: Tensor  # (E,) int64 class of each entry
    aux: Tensor | None  # (E,) int64 rotation index, or None


# ---------------------------------------------------------------------------
# names and locations


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Data folder: the argument, else $MCL_DATA, else ~/.cache/mcl/data."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MCL_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mcl" / "data"


def _check_name(name: str) -> None:
    if name.startswith(FOLDER_PREFIX) and len(name) > len(FOLDER_PREFIX):
        return
    if name not in DATASET_NAMES:
        raise ValueError(
            f"dataset name must be one of {list(DATASET_NAMES)} or "
            f"'{FOLDER_PREFIX}PATH', got {name!r}"
        )


def load_dataset(
    name: str,
    split: str = "train",
    *,
    image_size: int,
    root: str | os.PathLike | None = None,
    classes: Sequence[int | str] | None = None,
    download: bool = True,
) -> ImageSet:
    """Load a named dataset split as uint8 images resized to image_size.

    Offline sets: ``digits`` (scikit-learn's 1,797 8x8 digits, per-class
    split with a 30 % test share drawn with seed 0), ``photos`` (500 patches
    cut from scikit-learn's two sample photographs), ``noise`` (250 Gaussian
    and 250 uniform noise images) and ``synthetic`` (six classes of
    coloured shapes). ``photos``, ``noise``, ``lsun_fix`` and
    ``imagenet_fix`` are unlabelled (labels -1); ``photos`` and ``noise``
    draw different images for the two splits, the Fix sets have one set.

    Args:
        classes: keep only these classes (indices or names) of a labelled
            set; labels are re-indexed 0..k-1 in the order given.
        download: fetch missing CIFAR/SVHN/Fix files; when False a missing
            set raises FileNotFoundError.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    image_size = int(image_size)

    if name.startswith(FOLDER_PREFIX):
        path = Path(name[len(FOLDER_PREFIX):]).expanduser()
        out = load_image_folder(path, split, image_size=image_size)
    elif name in ("cifar10", "cifar100", "svhn"):
        out = _load_torchvision(name, split, data_root(root), download)
    elif name in _FIX_SETS:
        folder = fetch_fix_set(name, root, download=download)
        out = _load_fix_folder(name, folder)
    else:
        maker = {
            "digits": _make_digits,
            "photos": _make_photos,
            "noise": _make_noise,
            "synthetic": _make_synthetic,
        }[name]
        out = maker(split, image_size)

    if classes is not None:
        out = select_classes(out, classes)
    out.images = resize_images(out.images, image_size)
    return out


_CACHE: dict[tuple, ImageSet] = {}


def load_dataset_cached(
    name: str,
    split: str = "train",
    *,
    image_size: int,
    root: str | os.PathLike | None = None,
    classes: Sequence[int | str] | None = None,
    download: bool = True,
) -> ImageSet:
    """Like load_dataset, but keeps each result in memory for reuse."""
    key = (
        name, split, int(image_size), str(data_root(root)),
        None if classes is None else tuple(classes), download,
    )
    if key not in _CACHE:
        _CACHE[key] = load_dataset(
            name, split, image_size=image_size, root=root,
            classes=classes, download=download,
        )
    return _CACHE[key]


def clear_cache() -> None:
    """Drop every set held by load_dataset_cached."""
    _CACHE.clear()


def select_classes(data: ImageSet, classes: Sequence[int | str]) -> ImageSet:
    """Keep the given classes (indices or names), re-indexed 0..k-1."""
    if not data.class_names:
        raise ValueError(
            f"classes can only select from a labelled set; {data.name!r} has "
            f"no classes, got classes={list(classes)!r}"
        )
    idx = []
    for c in classes:
        if isinstance(c, str):
            if c not in data.class_names:
                raise ValueError(
                    f"classes: {c!r} is not a class of {data.name!r}; accepted: "
                    f"{data.class_names}"
                )
            c = data.class_names.index(c)
        if not 0 <= int(c) < len(data.class_names):
            raise ValueError(
                f"classes: index {c!r} out of range for {data.name!r} with "
                f"{len(data.class_names)} classes"
            )
        idx.append(int(c))
    if len(set(idx)) != len(idx) or not idx:
        raise ValueError(f"classes must be non-empty and distinct, got {classes!r}")

    remap = torch.full((len(data.class_names),), -1, dtype=torch.int64)
    remap[idx] = torch.arange(len(idx))
    keep = remap[data.labels] >= 0  # (N,)
    return ImageSet(
        images=data.images[keep],
        labels=remap[data.labels[keep]],
        class_names=[data.class_names[i] for i in idx],
        name=data.name,
    )


def resize_images(images: Tensor, image_size: int) -> Tensor:
    """Resize uint8 (N, 3, H, W) to (N, 3, S, S), antialiased, if needed."""
    h, w = images.shape[-2:]
    if (h, w) == (image_size, image_size) or len(images) == 0:
        return images
    if h != w:
        # shorter side to S, then a centred S x S crop (torchvision habit)
        images = TF.resize(images, [image_size], antialias=True)
        return TF.center_crop(images, [image_size, image_size])
    return TF.resize(images, [image_size, image_size], antialias=True)


def iter_batches(
    data: ImageSet | Tensor,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> Iterator[Tensor]:
    """Yield float [0, 1] image batches (n, 3, H, W) on device, in order."""
    images = data.images if isinstance(data, ImageSet) else data
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].to(device, non_blocking=True)
        yield chunk.float().div_(255)  # (n, 3, H, W)


# ---------------------------------------------------------------------------
# torchvision sets


def _load_torchvision(name: str, split: str, root: Path, download: bool) -> ImageSet:
    from torchvision import datasets

    train = split == "train"
    try:
        if name == "svhn":
            ds = datasets.SVHN(root, split=split, download=download)
            images = torch.from_numpy(ds.data)  # (N, 3, 32, 32)
            labels = torch.as_tensor(ds.labels, dtype=torch.int64)
            class_names = [str(d) for d in range(10)]
        else:
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            ds = cls(root, train=train, download=download)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # (N, 3, H, W)
            labels = torch.as_tensor(ds.targets, dtype=torch.int64)
            class_names = list(ds.classes)
    except RuntimeError as err:
        if download:
            raise
        raise FileNotFoundError(
            f"{name} {split} not found under {root} and download=False; "
            f"call load_dataset({name!r}, download=True) once ({err})"
        ) from err
    return ImageSet(images.contiguous(), labels, class_names, name)


# ---------------------------------------------------------------------------
# LSUN-Fix and ImageNet-Fix


def _google_drive_fetch(file_id: str, folder: Path, filename: str) -> None:
    from torchvision.datasets.utils import download_file_from_google_drive

    download_file_from_google_drive(file_id, folder, filename)


def _drive_url(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view"


def fetch_fix_set(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    fetch: Fetch | None = None,
    expected_count: int | None = None,
) -> Path:
    """Return the verified folder of LSUN-Fix or ImageNet-Fix, fetching it.

    Order: an installed folder (checked against its SHA-256 manifest); an
    archive placed by hand at ``<root>/<Folder>.tar.gz`` (or .tgz, .tar,
    .zip); each known Google Drive copy in turn. Extraction happens in a
    temporary folder inside the root, which becomes ``<root>/<Folder>``
    only by an atomic rename after the content checks pass.

    Args:
        fetch: ``fetch(file_id, folder, filename)`` writing the download to
            ``folder / filename``; defaults to torchvision's Google Drive
            helper.
        expected_count: image count to demand (default FIX_SET_COUNT).
    """
    if name not in _FIX_SETS:
        raise ValueError(f"name must be one of {sorted(_FIX_SETS)}, got {name!r}")
    spec = _FIX_SETS[name]
    root = data_root(root)
    final = root / spec.folder
    count = FIX_SET_COUNT if expected_count is None else expected_count
    fetch = _google_drive_fetch if fetch is None else fetch

    if final.is_dir():
        _check_installed(final, count)
        return final

    manual = [root / f"{spec.folder}{s}" for s in ARCHIVE_SUFFIXES]
    placed = [p for p in manual if p.is_file()]
    if placed:
        _install_archive(placed[0], final, count)
        log.info("installed %s from hand-placed %s", name, placed[0])
        return final

    hint = (
        f"download one of {[_drive_url(i) for i in spec.file_ids]} by hand and "
        f"save it as {manual[0]} (a .tgz, .tar or .zip archive under the same "
        f"name also works), or extract its 32x32 PNGs into {final}"
    )
    if not download:
        raise FileNotFoundError(
            f"{name} not found at {final} and download=False; {hint}"
        )

    failures = []
    for file_id in spec.file_ids:
        try:
            _download_and_install(file_id, root, final, count, fetch)
            log.info("installed %s from Google Drive id %s", name, file_id)
            return final
        except Exception as err:  # noqa: BLE001 - try the next copy
            log.warning("%s copy %s failed: %s", name, file_id, err)
            failures.append(f"{_drive_url(file_id)}: {type(err).__name__}: {err}")
    raise RuntimeError(
        f"could not obtain {name}: every known copy failed "
        f"({'; '.join(failures)}). To install it offline, {hint}"
    )


def _download_and_install(
    file_id: str, root: Path, final: Path, count: int, fetch: Fetch
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}-dl-", dir=root) as tmp:
        tmp = Path(tmp)
        fetch(file_id, tmp, "download")
        raw = tmp / "download"
        if not raw.is_file():
            raise FileNotFoundError(f"fetch wrote no file at {raw}")
        archive = raw.rename(tmp / f"download{_archive_suffix(raw)}")
        _install_archive(archive, final, count)


def _archive_suffix(path: Path) -> str:
    """Guess an archive's type from its first bytes (Drive names are unknown)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:2] == b"\x1f\x8b":
        return ".tar.gz"
    if head[:4] == b"PK\x03\x04":
        return ".zip"
    if head[257:262] == b"ustar":
        return ".tar"
    raise ValueError(
        f"downloaded file {path} is not a gzip, tar or zip archive "
        f"(first bytes {head[:16]!r}); Google Drive may have returned a page"
    )


def _install_archive(archive: Path, final: Path, count: int) -> None:
    """Extract, verify and atomically rename an archive into final."""
    from torchvision.datasets.utils import extract_archive

    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}-x-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=final.parent) as tmp:
        out = Path(tmp) / "extract"
        extract_archive(archive, out)

        # an archive holding one top-level folder installs that folder
        entries = [p for p in out.iterdir() if p.name != "__MACOSX"]
        stage = entries[0] if len(entries) == 1 and entries[0].is_dir() else out

        files = _verify_fix_images(stage, count)
        _write_manifest(stage, files)
        os.rename(stage, final)


def _fix_image_files(folder: Path) -> list[Path]:
    files = [
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith("._") and "__MACOSX" not in p.parts
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _verify_fix_images(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    files = _fix_image_files(folder)
    if len(files) != count:
        raise ValueError(f"expected {count} images in the archive, found {len(files)}")
    for path in files:
        with Image.open(path) as img:
            if img.size != (FIX_SET_SIZE, FIX_SET_SIZE) or img.mode != "RGB":
                raise ValueError(
                    f"{path.name}: expected a {FIX_SET_SIZE}x{FIX_SET_SIZE} RGB "
                    f"image, got size {img.size} mode {img.mode}"
                )
    return files


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_manifest(folder: Path, files: list[Path]) -> None:
    lines = [f"{_sha256(p)}  {p.relative_to(folder).as_posix()}\n" for p in files]
    (folder / MANIFEST_NAME).write_text("".join(lines))


def _check_installed(folder: Path, count: int) -> None:
    """Compare an installed folder with its manifest (write one if absent)."""
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        # a folder extracted by hand: verify once, then pin it
        _write_manifest(folder, _verify_fix_images(folder, count))
        return

    expected = {}
    for line in manifest.read_text().splitlines():
        digest, rel = line.split("  ", 1)
        expected[rel] = digest
    found = {p.relative_to(folder).as_posix(): p for p in _fix_image_files(folder)}
    bad = sorted(set(expected) ^ set(found))
    bad += [
        rel for rel in sorted(expected)
        if rel in found and _sha256(found[rel]) != expected[rel]
    ]
    if bad:
        raise DataIntegrityError(
            f"{folder} does not match {manifest}: {len(bad)} file(s) missing, "
            f"extra or changed (first: {bad[:3]}); delete the folder to fetch "
            f"it again"
        )


def _load_fix_folder(name: str, folder: Path) -> ImageSet:
    files = _fix_image_files(folder)
    images = torch.stack([_read_rgb(p) for p in files])  # (N, 3, 32, 32)
    labels = torch.full((len(files),), -1, dtype=torch.int64)
    return ImageSet(images, labels, [], name)


# ---------------------------------------------------------------------------
# own folders


def _read_rgb(path: Path, image_size: int | None = None) -> Tensor:
    """Decode one file to uint8 (3, H, W) RGB (greyscale/RGBA converted)."""
    from PIL import Image

    with Image.open(path) as img:
        img.seek(0)  # first frame of an animated file
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, H, W)
    if image_size is not None:
        x = resize_images(x[None], image_size)[0]
    return x


def _read_files(paths: list[Path], image_size: int) -> tuple[Tensor, list[int]]:
    """Read image files; skipped (non-image) positions are left out."""
    from PIL import UnidentifiedImageError

    images, kept, skipped = [], [], []
    for k, path in enumerate(paths):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(path)
            continue
        try:
            images.append(_read_rgb(path, image_size))
            kept.append(k)
        except (UnidentifiedImageError, OSError):
            skipped.append(path)
    if skipped:
        log.warning(
            "skipped %d file(s) that are not readable images, e.g. %s",
            len(skipped), [str(p) for p in skipped[:3]],
        )
    if not images:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8), kept
    return torch.stack(images), kept


def _files_under(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sorted(f for f in files if not f.name.startswith("."))


def load_image_folder(path: Path, split: str, *, image_size: int) -> ImageSet:
    """Own images: ImageFolder layout PATH/<split>/<class>/*, else OOD.

    ``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` give labelled sets
    (class indices follow the sorted train class folders). For
    ``split="test"`` without ``PATH/test``, every image under PATH, flat or
    nested, is an unlabelled OOD set (labels -1). Images are converted to
    RGB, resized (shorter side) and centre-cropped to image_size.
    """
    path = Path(path)
    name = f"{FOLDER_PREFIX}{path}"
    if not path.is_dir():
        raise FileNotFoundError(f"folder dataset {path} does not exist")
    split_dir = path / split
    if split == "train" and not split_dir.is_dir():
        raise FileNotFoundError(
            f"{name}: split='train' expects the layout {path}/train/<class>/<image>"
            f" (and {path}/test/<class>/<image>); {split_dir} is missing"
        )

    if split_dir.is_dir():
        class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir())
        ref_dir = path / "train" if (path / "train").is_dir() else split_dir
        class_names = sorted(d.name for d in ref_dir.iterdir() if d.is_dir())
        unknown = [d.name for d in class_dirs if d.name not in class_names]
        if not class_dirs or unknown:
            raise ValueError(
                f"{name}: expected class folders {split_dir}/<class>/<image> "
                f"with classes among {class_names}, found "
                f"{[d.name for d in class_dirs]}"
            )
        paths, labels = [], []
        for d in class_dirs:
            files = _files_under(d)
            paths += files
            labels += [class_names.index(d.name)] * len(files)
    else:
        class_names, paths = [], _files_under(path)
        labels = [-1] * len(paths)

    images, kept = _read_files(paths, image_size)
    if not len(images):
        raise ValueError(
            f"{name}: no readable images (png/jpg/jpeg/bmp/gif/webp/tif) found "
            f"under {split_dir if split_dir.is_dir() else path}"
        )
    y = torch.as_tensor([labels[k] for k in kept], dtype=torch.int64)
    return ImageSet(images, y, class_names, name)


# ---------------------------------------------------------------------------
# offline sets


def _make_digits(split: str, image_size: int) -> ImageSet:
    """scikit-learn digits, 0..16 grey scaled to 0..255, split per class."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.rint(bunch.images * (255 / 16)).astype(np.uint8)  # (N, 8, 8)
    target = bunch.target.astype(np.int64)

    # per class: a seeded permutation, the first 30 % (rounded) go to test
    rng = np.random.default_rng(DIGITS_SEED)
    idx = []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(target == c))
        num_test = int(round(DIGITS_TEST_FRACTION * len(members)))
        idx.append(members[:num_test] if split == "test" else members[num_test:])
    idx = np.sort(np.concatenate(idx))

    x = torch.from_numpy(grey[idx])[:, None].expand(-1, 3, -1, -1)  # (N, 3, 8, 8)
    images = resize_images(x.contiguous(), image_size)
    labels = torch.from_numpy(target[idx])
    return ImageSet(images, labels, [str(d) for d in range(10)], "digits")


@functools.lru_cache(maxsize=1)
def _sample_photos() -> tuple[Tensor, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(
        torch.from_numpy(np.array(p)).permute(2, 0, 1)  # (3, H, W)
        for p in load_sample_images().images
    )


def _make_photos(split: str, image_size: int) -> ImageSet:
    """Square patches of scikit-learn's china.jpg and flower.jpg, seeded.

    Patch sides take one of 8 sizes from 24 to 160 photo pixels (log
    spaced); positions are uniform. Patches alternate between the photos.
    """
    photos = _sample_photos()
    sides = np.unique(np.geomspace(24, 160, 8).round().astype(int))
    rng = np.random.default_rng(1 if split == "train" else 2)
    side_of = rng.choice(sides, PHOTOS_COUNT)  # (N,)
    corner = []  # (top, left) of each patch
    for k in range(PHOTOS_COUNT):
        h, w = photos[k % 2].shape[-2:]
        room_h, room_w = h - side_of[k] + 1, w - side_of[k] + 1
        corner.append((int(rng.integers(room_h)), int(rng.integers(room_w))))

    # one antialiased resize per patch side
    images = torch.empty(PHOTOS_COUNT, 3, image_size, image_size, dtype=torch.uint8)
    for side in sides:
        idx = np.flatnonzero(side_of == side)
        patches = torch.stack([
            TF.crop(photos[k % 2], *corner[k], int(side), int(side)) for k in idx
        ])  # (n, 3, side, side)
        images[idx] = resize_images(patches, image_size)
    labels = torch.full((PHOTOS_COUNT,), -1, dtype=torch.int64)
    return ImageSet(images, labels, [], "photos")


def _make_noise(split: str, image_size: int) -> ImageSet:
    """Half N(0.5, 0.25^2) clipped to [0, 1], half U[0, 1], seeded."""
    g = torch.Generator().manual_seed(3 if split == "train" else 4)
    half = NOISE_COUNT // 2
    shape = (image_size, image_size)
    gauss = (0.5 + 0.25 * torch.randn(half, 3, *shape, generator=g)).clamp(0, 1)
    unif = torch.rand(NOISE_COUNT - half, 3, *shape, generator=g)
    x = torch.cat([gauss, unif])  # (N, 3, S, S)
    images = (x * 255).round().to(torch.uint8)
    labels = torch.full((NOISE_COUNT,), -1, dtype=torch.int64)
    return ImageSet(images, labels, [], "noise")


def _shape_masks(u: Tensor, v: Tensor, size: Tensor) -> dict[str, Tensor]:
    """Boolean masks (n, S, S) of each synthetic shape; u right, v down."""
    a = size[:, None, None]  # (n, 1, 1) half extent
    bar = 0.3 * a
    inside = (u.abs() <= a) & (v.abs() <= a)
    r = (u**2 + v**2).sqrt()
    return {
        "tee": inside & ((v <= -a + 2 * bar) | (u.abs() <= bar)),
        "ell": inside & ((u <= -a + 2 * bar) | (v >= a - 2 * bar)),
        "triangle": inside & (u.abs() <= (v + a) / 2),
        "half_disc": (r <= a) & (v <= 0),
        "ring": (r <= a) & (r >= 0.55 * a),
        "cross": inside & ((u.abs() <= bar) | (v.abs() <= bar)),
    }


def _make_synthetic(split: str, image_size: int) -> ImageSet:
    """Six classes of coloured shapes on noisy backgrounds, seeded per split.

    Every shape except the ring and the cross changes under a 90° turn, so
    the rotation task has signal; no shape is a rotation of another.
    """
    g = torch.Generator().manual_seed(5 if split == "train" else 6)
    per = SYNTHETIC_PER_CLASS[split]
    num_classes = len(SYNTHETIC_CLASSES)
    n = per * num_classes
    labels = torch.arange(num_classes).repeat_interleave(per)  # (N,)

    # coordinates in [-1, 1], shifted and scaled per image
    s = image_size
    grid = (torch.arange(s) + 0.5) / s * 2 - 1  # (S,)
    shift = (torch.rand(n, 2, generator=g) - 0.5) * 0.4  # (N, 2)
    size = 0.5 + 0.3 * torch.rand(n, generator=g)  # (N,)
    u = grid[None, None, :] - shift[:, 0, None, None]  # (N, 1, S)
    v = grid[None, :, None] - shift[:, 1, None, None]  # (N, S, 1)
    u, v = torch.broadcast_tensors(u, v)  # (N, S, S)
    masks = _shape_masks(u, v, size)
    shape = torch.stack([masks[c] for c in SYNTHETIC_CLASSES])  # (K, N, S, S)
    mask = shape[labels, torch.arange(n)]  # (N, S, S)

    # a bright random colour on a dark random background, plus pixel noise
    fg = 0.55 + 0.45 * torch.rand(n, 3, 1, 1, generator=g)
    bg = 0.35 * torch.rand(n, 3, 1, 1, generator=g)
    x = torch.where(mask[:, None], fg, bg)  # (N, 3, S, S)
    x = x + 0.08 * torch.randn(n, 3, s, s, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, list(SYNTHETIC_CLASSES), "synthetic")


# ---------------------------------------------------------------------------
# training batches


class RotationBatchSampler:
    """Image-index batches where every class present has >= 2 images.

    Each epoch (``set_epoch``) reshuffles deterministically from
    ``(seed, epoch)``. Images of a class are paired at random; a class with
    an odd count turns one pair into a triple. Units (pairs, triples) are
    shuffled and packed into batches of exactly ``images_per_batch``, so a
    class never has a lone image in a batch, and with 4 rotations per image
    every (class, rotation) group has >= 2 entries (an SPA partner).

    With ``drop_last=True`` each image appears at most once per epoch and
    every batch is full; left out are fewer than ``images_per_batch`` images
    plus at most one per class with an odd count (and classes of a single
    image), a different few each epoch. With ``drop_last=False`` every
    image appears exactly once, the leftovers forming smaller final batches.
    ``images_per_batch`` must be even (pairs fill it exactly).
    """

    def __init__(
        self,
        labels: Tensor | Sequence[int],
        images_per_batch: int,
        *,
        seed: int,
        drop_last: bool = True,
    ) -> None:
        self.labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        if images_per_batch < 2 or images_per_batch % 2:
            raise ValueError(
                f"images_per_batch must be an even number >= 2 (pairs per class), "
                f"got {images_per_batch!r}"
            )
        self.images_per_batch = int(images_per_batch)
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle the next iteration uses."""
        self.epoch = int(epoch)

    def _units(self, rng: np.random.Generator) -> list[np.ndarray]:
        units = []
        for c in np.unique(self.labels):
            members = rng.permutation(np.flatnonzero(self.labels == c))
            if len(members) == 1:
                # NOTE: a class with a single image can never have a partner.
                units.append(members)
                continue
            pairs = [members[k:k + 2] for k in range(0, len(members) - 1, 2)]
            if len(members) % 2:
                pairs[-1] = np.append(pairs[-1], members[-1])
            units += pairs
        return [units[k] for k in rng.permutation(len(units))]

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch (image indices)."""
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        queue = self._units(rng)
        size = self.images_per_batch

        # fill batches in queue order; triples enter two at a time, so every
        # unit placed has an even size and a batch of even size fills exactly
        batches, current, deferred, tail = [], [], [], []
        spare = None
        for unit in queue:
            if len(unit) == 1:
                tail.append(unit)
                continue
            if len(unit) == 3:
                if spare is None:
                    spare = unit
                    continue
                unit, spare = np.concatenate([spare, unit]), None
            if len(unit) > size and self.drop_last:
                # batches too small for triples: keep a pair of each
                deferred += [unit[:2], unit[3:5]]
                tail += [unit[2:3], unit[5:]]
            elif len(unit) > size:
                tail.append(unit)
            elif sum(map(len, current)) + len(unit) > size:
                deferred.append(unit)  # starts the next batch
            else:
                current.append(unit)
            while sum(map(len, current)) == size:
                batches.append(np.concatenate(current).tolist())
                current, deferred = self._take(deferred, size)

        # end of the queue: repack the open batch and deferred units, big
        # units first, while they still fill whole batches
        if spare is not None and self.drop_last:
            deferred.append(spare[:2])
            tail.append(spare[2:])
            spare = None
        pool = sorted(current + deferred, key=len, reverse=True)
        while sum(map(len, pool)) >= size:
            current, rest = self._take(pool, size)
            if sum(map(len, current)) < size:
                break
            batches.append(np.concatenate(current).tolist())
            pool = rest
        leftovers = pool + tail + ([] if spare is None else [spare])

        # the rest: smaller final batches made of whole units
        if not self.drop_last:
            while leftovers:
                current, leftovers = self._take(leftovers, size)
                if not current:  # a unit larger than the batch goes alone
                    current, leftovers = [leftovers[0]], leftovers[1:]
                batches.append(np.concatenate(current).tolist())
        self._cached = (self.epoch, batches)
        return batches

    @staticmethod
    def _take(units: list[np.ndarray], size: int) -> tuple[list, list]:
        """Units for a new batch of at most size images, and the rest."""
        current, rest, filled = [], [], 0
        for unit in units:
            if filled + len(unit) <= size:
                current.append(unit)
                filled += len(unit)
            else:
                rest.append(unit)
        return current, rest

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def build_train_batch(
    images: Tensor,
    labels: Tensor,
    *,
    aux_mode: str = "aux",
    augment: Callable[..., Tensor] | None,
    generator: torch.Generator | None = None,
) -> TrainBatch:
    """Two augmented views per entry, rotations adjacent (SPEC §9.7).

    ``aux``: entry ``e = 4i + k`` is image ``i`` turned ``k`` quarter turns
    counter-clockwise, with aux label ``k``; ``da``: the same entries
    without aux labels; ``none``: entry ``e`` is image ``e``. Rows ``2e``
    and ``2e+1`` of ``views`` are the two views of entry ``e``. With
    ``augment=None`` the views are the (rotated) images themselves.
    """
    if aux_mode not in AUX_MODES:
        raise ValueError(f"aux_mode must be one of {list(AUX_MODES)}, got {aux_mode!r}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be uint8 (n, 3, H, W), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} images")
    labels = torch.as_tensor(labels, dtype=torch.int64, device=images.device)

    # view a -> entry a // 2 -> image and rotation
    rot = aux_mode != "none"
    per_image = 2 * NUM_ROTATIONS if rot else 2
    view = torch.arange(n * per_image, device=images.device)  # (2E,)
    image_idx = view // per_image  # (2E,)
    rotation = (view // 2) % NUM_ROTATIONS if rot else None  # (2E,)

    x = images[image_idx].float().div_(255)  # (2E, 3, H, W)
    if augment is not None:
        views = augment(x, rotation, generator)
    elif rotation is not None:
        views = _rotate(x, rotation)
    else:
        views = x

    num_entries = n * (NUM_ROTATIONS if rot else 1)
    entry_labels = labels.repeat_interleave(num_entries // n)  # (E,)
    aux = None
    if aux_mode == "aux":
        aux = torch.arange(NUM_ROTATIONS, device=images.device).repeat(n)  # (E,)
    return TrainBatch(views, entry_labels, aux)


def _rotate(x: Tensor, k: Tensor) -> Tensor:
    """Turn row a of x by k[a] quarter turns counter-clockwise."""
    out = x.clone()
    for turns in range(1, NUM_ROTATIONS):
        rows = k == turns
        if rows.any():
            out[rows] = torch.rot90(x[rows], turns, dims=(-2, -1))
    return out
