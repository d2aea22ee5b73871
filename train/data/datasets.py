"""Named image datasets: where they are found, how they are fetched, how they load.

Evaluation (docs/model.md §7) and meta-training (§6.5) read MNIST and
Fashion-MNIST in the IDX layout ``NAME/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
(uncompressed files without ``.gz`` are accepted too).

A dataset is searched, in order, in:

1. the ``data_dir`` argument (``DIR/NAME`` and ``DIR`` itself),
2. ``$VSML_DATA_DIR`` (``DIR/NAME`` and ``DIR``; several directories may be
   separated by ``os.pathsep``),
3. the per-user cache ``$XDG_CACHE_HOME/vsml/datasets/NAME`` (default
   ``~/.cache/vsml/datasets/NAME``), where downloads go,
4. system locations: Debian's ``/usr/share/datasets/NAME``,
5. a developer convenience: ``shared/datasets/NAME`` in the current working
   directory or any parent, then in the package's source folder or any parent
   (so a ``shared/`` beside a checkout is found). Nothing requires it.

Only ``download=True`` goes to the network: it fetches the split's two files
from the canonical mirror into the user cache and verifies their checksums.

Dimension letters (docs/model.md §8): I examples (instances) of a dataset, A = rows * cols
features of an image of rows x cols pixels.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from ..files import new_file_mode
from .idx import read_image_label_pair

log = logging.getLogger(__name__)

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")
_FILE_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}

ENV_DATA_DIR = "VSML_DATA_DIR"
# System-wide dataset roots (Debian's dataset-* packages install under the first).
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
# Where the developer-convenience walk up for ``shared/datasets`` starts besides the cwd.
PACKAGE_DIR = Path(__file__).resolve().parent
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a named dataset.

    Attributes:
        name: the registry name (also the folder name).
        n_classes: B, labels lie in [0, B).
        image_shape: (H, W).
        mirrors: base URLs tried in order by ``download_dataset``.
        checksums: file name -> ``"md5:<hex>"`` or ``"sha256:<hex>"`` of the
            canonical compressed file.
        debian_package: the Debian package that installs it under
            ``/usr/share/datasets``, if any.
    """

    name: str
    n_classes: int
    image_shape: tuple[int, int]
    mirrors: tuple[str, ...]
    checksums: Mapping[str, str] = field(hash=False)
    debian_package: str | None = None

    def file_names(self, split: Split) -> tuple[str, str]:
        """The (images, labels) file names of ``split``, compressed form."""
        prefix = _FILE_PREFIX[split]
        return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        n_classes=10,
        image_shape=(28, 28),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        checksums={
            "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        n_classes=10,
        image_shape=(28, 28),
        # The S3 website endpoint serves plain HTTP only; the checksum guards the content.
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        checksums={
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
        debian_package="dataset-fashion-mnist",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name`` (case-insensitive, ``_`` = ``-``); ValueError lists known names."""
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a named dataset, loaded in memory.

    Attributes:
        name: registry name (``"mnist"``, ``"fashion-mnist"``).
        split: ``"train"`` or ``"test"`` (the ``t10k`` files).
        images: uint8 [I, rows, cols], read-only (shared with the load cache).
        labels: int64 [N] in [0, n_classes), read-only.
        n_classes: B.
        source: the directory the files were read from.
    """

    name: str
    split: Split
    images: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    n_classes: int
    source: Path

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def features(self) -> np.ndarray:
        """float32 [N, A] with A = H * W, pixel values scaled to [0, 1]; a new array per call."""
        return self.images.reshape(len(self.images), -1).astype(np.float32) / np.float32(255.0)


class Place(NamedTuple):
    """A directory searched for a dataset, with why it is searched."""

    path: Path
    origin: str


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is in none of the searched places; the message lists them and the fixes."""

    def __init__(self, info: DatasetInfo, split: Split, places: list[Place]) -> None:
        self.name = info.name
        self.split = split
        self.places = places
        images, labels = info.file_names(split)
        lines = [
            f"dataset {info.name!r} ({split} split) not found: looked for {images} and {labels}"
            " (or the same without .gz) in:"
        ]
        lines += [f"  - {place.path}  [{place.origin}]" for place in places]
        lines += [
            "Fix it in one of these ways:",
            f"  - set {ENV_DATA_DIR} to a directory that holds {info.name}/ (or the files themselves),",
            "  - pass data_dir=... to load_dataset,",
            f"  - pass download=True to fetch it from {info.mirrors[0]} into {user_cache_dir() / info.name},",
        ]
        if info.debian_package:
            lines.append(
                f"  - on Debian/Ubuntu: apt install {info.debian_package}  (installs /usr/share/datasets/{info.name})"
            )
        super().__init__("\n".join(lines))


class DownloadError(OSError):
    """Every mirror failed to deliver a file with the right checksum."""


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vsml/datasets`` or ``~/.cache/vsml/datasets`` (relative XDG values are ignored)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "vsml" / "datasets"


def _walk_up(start: Path) -> list[Path]:
    start = start.resolve()
    return [start, *start.parents]


def search_places(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Place]:
    """Every directory ``load_dataset`` looks in for ``name``, in order, without duplicates."""
    info = dataset_info(name)
    places: list[Place] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        places += [Place(root / info.name, "data_dir argument"), Place(root, "data_dir argument")]
    for entry in os.environ.get(ENV_DATA_DIR, "").split(os.pathsep):
        if entry:
            root = Path(entry).expanduser()
            places += [Place(root / info.name, f"${ENV_DATA_DIR}"), Place(root, f"${ENV_DATA_DIR}")]
    places.append(Place(user_cache_dir() / info.name, "user cache"))
    places += [Place(root / info.name, "system") for root in SYSTEM_DIRS]
    for start, origin in (
        (Path.cwd(), "shared/ above the working directory"),
        (PACKAGE_DIR, "shared/ above the package"),
    ):
        places += [Place(parent / "shared" / "datasets" / info.name, origin) for parent in _walk_up(start)]
    seen: set[Path] = set()
    unique = []
    for place in places:
        if place.path not in seen:
            seen.add(place.path)
            unique.append(place)
    return unique


def _split_files(directory: Path, info: DatasetInfo, split: Split) -> tuple[Path, Path] | None:
    """The (images, labels) paths of ``split`` in ``directory``, gzip preferred, or None if either is missing."""
    found = []
    for name in info.file_names(split):
        for candidate in (directory / name, directory / name.removesuffix(".gz")):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found[0], found[1]


def find_dataset(name: str, split: Split, *, data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """The (images, labels) files of the first searched place that holds the split.

    Raises:
        DatasetNotFoundError: in no searched place.
    """
    info = dataset_info(name)
    _check_split(split)
    places = search_places(info.name, data_dir)
    for place in places:
        files = _split_files(place.path, info, split)
        if files is not None:
            return files
    raise DatasetNotFoundError(info, split, places)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: str) -> None:
    """Raise ValueError unless ``path`` has the checksum ``"md5:<hex>"`` or ``"sha256:<hex>"``."""
    algorithm, _, want = expected.partition(":")
    if algorithm not in ("md5", "sha256") or not want:
        raise ValueError(f"bad checksum spec {expected!r}; expected 'md5:<hex>' or 'sha256:<hex>'")
    got = _file_digest(path, algorithm)
    if got != want.lower():
        raise ValueError(f"{path}: {algorithm} checksum mismatch: got {got}, expected {want}")


def _fetch(url: str, dest: Path) -> None:
    """Stream ``url`` into ``dest`` (``urllib.request.urlopen``, which tests replace)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def download_dataset(
    name: str, *, splits: tuple[Split, ...] = SPLITS, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Download the files of ``splits`` that are not yet in the cache, verifying each checksum.

    Each file goes to a temporary name first and is renamed only after its
    checksum matched, so the cache never holds a partial or wrong file.

    Args:
        name: a registry name.
        splits: which splits to fetch.
        cache_dir: the root to download into (default ``user_cache_dir()``);
            files land in ``cache_dir/NAME``.

    Returns:
        The directory holding the files.

    Raises:
        DownloadError: a file could not be fetched with the right checksum from any mirror.
    """
    info = dataset_info(name)
    target = Path(cache_dir) if cache_dir is not None else user_cache_dir()
    target = target / info.name
    target.mkdir(parents=True, exist_ok=True)
    for split in splits:
        _check_split(split)
        for file_name in info.file_names(split):
            dest = target / file_name
            if dest.is_file():
                continue
            failures = []
            for mirror in info.mirrors:
                url = mirror + file_name
                fd, tmp_name = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".part", dir=target)
                os.close(fd)
                tmp = Path(tmp_name)
                try:
                    log.info("downloading %s", url)
                    _fetch(url, tmp)
                    verify_checksum(tmp, info.checksums[file_name])
                    os.chmod(tmp, new_file_mode(dest))
                    os.replace(tmp, dest)
                    break
                except (OSError, http.client.HTTPException, ValueError) as err:
                    failures.append(f"{url}: {err}")
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                raise DownloadError(f"could not download {file_name} of {info.name!r}:\n  " + "\n  ".join(failures))
    return target


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _read_cached(
    images_path: Path,
    labels_path: Path,
    stamps: tuple[tuple[int, int], tuple[int, int]],
    n_classes: int,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    # ``stamps`` (mtime, size) is part of the key so a replaced file is read again.
    del stamps
    return read_image_label_pair(images_path, labels_path, n_classes=n_classes, shape=shape)


def clear_cache() -> None:
    """Forget every array loaded so far."""
    _read_cached.cache_clear()


def load_dataset(
    name: str,
    split: Split,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Dataset:
    """Load one split of a named dataset (see the module docstring for the search order).

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        split: ``"train"`` or ``"test"``.
        data_dir: searched first (``data_dir/NAME`` and ``data_dir``).
        download: when found nowhere, fetch the split into the user cache
            (network; checksums verified) instead of raising.

    Returns:
        A ``Dataset`` with images uint8 [N, 28, 28] and labels int64 [N].
        Repeated loads of the same files return the same cached arrays.

    Raises:
        ValueError: unknown name or split; corrupt files (the message names the file).
        DatasetNotFoundError: found nowhere and ``download`` is False.
        DownloadError: ``download`` is True and the download failed.
    """
    info = dataset_info(name)
    _check_split(split)
    try:
        images_path, labels_path = find_dataset(info.name, split, data_dir=data_dir)
    except DatasetNotFoundError:
        if not download:
            raise
        directory = download_dataset(info.name, splits=(split,))
        files = _split_files(directory, info, split)
        assert files is not None, "download_dataset returned without the files"
        images_path, labels_path = files
    images_path, labels_path = images_path.resolve(), labels_path.resolve()
    stamps = (_stamp(images_path), _stamp(labels_path))
    images, labels = _read_cached(images_path, labels_path, stamps, info.n_classes, info.image_shape)
    return Dataset(
        name=info.name,
        split=split,
        images=images,
        labels=labels,
        n_classes=info.n_classes,
        source=images_path.parent,
    )
