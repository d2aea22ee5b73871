"""Named datasets: search order, missing-dataset message, download with checksums, caching, real data."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from vsml_train.data import datasets
from vsml_train.data.datasets import (
    DatasetNotFoundError,
    DownloadError,
    dataset_info,
    load_dataset,
    search_places,
)
from vsml_train.data.idx import write_idx


def _write_split(directory: Path, split: str, n: int, *, gz: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    prefix = {"train": "train", "test": "t10k"}[split]
    suffix = ".gz" if gz else ""
    rng = np.random.default_rng(n)
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8))


def _write_dataset(directory: Path, n: int) -> Path:
    """A fake dataset in ``directory``: ``n`` train and ``n + 1`` test examples (N identifies the place)."""
    _write_split(directory, "train", n)
    _write_split(directory, "test", n + 1)
    return directory


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Every search location points into tmp_path; nothing real is visible."""
    monkeypatch.delenv(datasets.ENV_DATA_DIR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", (tmp_path / "system",))
    monkeypatch.setattr(datasets, "PACKAGE_DIR", tmp_path / "elsewhere" / "main" / "train" / "data")
    work = tmp_path / "work" / "sub" / "dir"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)

    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be touched")

    monkeypatch.setattr(datasets.urllib.request, "urlopen", no_network)
    return tmp_path


def test_search_order(sandbox, monkeypatch):
    places = {
        "explicit": _write_dataset(sandbox / "explicit" / "mnist", 1),
        "env": _write_dataset(sandbox / "env" / "mnist", 2),
        "cache": _write_dataset(sandbox / "home" / ".cache" / "vsml" / "datasets" / "mnist", 3),
        "system": _write_dataset(sandbox / "system" / "mnist", 4),
        "shared-cwd": _write_dataset(sandbox / "work" / "shared" / "datasets" / "mnist", 5),
        "shared-pkg": _write_dataset(sandbox / "elsewhere" / "shared" / "datasets" / "mnist", 6),
    }
    monkeypatch.setenv(datasets.ENV_DATA_DIR, str(sandbox / "env"))
    for n, (key, directory) in enumerate(places.items(), start=1):
        data = load_dataset("mnist", "train", data_dir=sandbox / "explicit")
        assert (len(data), data.source) == (n, directory.resolve()), key
        assert len(load_dataset("mnist", "test", data_dir=sandbox / "explicit")) == n + 1
        for path in directory.iterdir():
            path.unlink()
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", "train", data_dir=sandbox / "explicit")


def test_directory_itself_and_name_subfolder(sandbox):
    _write_dataset(sandbox / "flat", 2)
    assert load_dataset("mnist", "train", data_dir=sandbox / "flat").source == (sandbox / "flat").resolve()
    _write_dataset(sandbox / "flat" / "mnist", 3)
    assert len(load_dataset("mnist", "train", data_dir=str(sandbox / "flat"))) == 3


def test_env_var_with_several_dirs_and_flat_layout(sandbox, monkeypatch):
    _write_dataset(sandbox / "b", 2)
    monkeypatch.setenv(datasets.ENV_DATA_DIR, os.pathsep.join([str(sandbox / "a"), str(sandbox / "b")]))
    assert len(load_dataset("mnist", "train")) == 2
    _write_dataset(sandbox / "a" / "mnist", 1)
    assert len(load_dataset("mnist", "train")) == 1


def test_xdg_cache_home_overrides_home(sandbox, monkeypatch):
    _write_dataset(sandbox / "home" / ".cache" / "vsml" / "datasets" / "mnist", 3)
    _write_dataset(sandbox / "xdg" / "vsml" / "datasets" / "mnist", 4)
    assert len(load_dataset("mnist", "train")) == 3
    monkeypatch.setenv("XDG_CACHE_HOME", str(sandbox / "xdg"))
    assert len(load_dataset("mnist", "train")) == 4


def test_shared_found_walking_up_from_package_dir(sandbox):
    # The package dir is sandbox/elsewhere/main/train/data; shared/ sits beside the checkout "main".
    _write_dataset(sandbox / "elsewhere" / "shared" / "datasets" / "fashion-mnist", 5)
    data = load_dataset("fashion-mnist", "test")
    assert len(data) == 6 and data.name == "fashion-mnist"


def test_a_place_needs_both_files_of_the_split(sandbox):
    explicit = sandbox / "explicit"
    _write_split(explicit, "train", 1)
    (explicit / "train-labels-idx1-ubyte.gz").unlink()
    _write_split(explicit, "test", 7)
    _write_dataset(sandbox / "system" / "mnist", 4)
    assert len(load_dataset("mnist", "train", data_dir=explicit)) == 4
    assert len(load_dataset("mnist", "test", data_dir=explicit)) == 7


def test_uncompressed_files_accepted(sandbox):
    _write_split(sandbox / "raw", "train", 3, gz=False)
    data = load_dataset("mnist", "train", data_dir=sandbox / "raw")
    assert data.images.shape == (3, 28, 28) and data.labels.dtype == np.int64


def test_dataset_fields_and_features(sandbox):
    data = load_dataset("MNIST", "train", data_dir=_write_dataset(sandbox / "d", 5))
    assert data.name == "mnist" and data.split == "train" and data.n_classes == 10
    assert data.images.dtype == np.uint8 and data.images.shape == (5, 28, 28)
    assert data.labels.dtype == np.int64 and data.labels.shape == (5,)
    features = data.features
    assert features.dtype == np.float32 and features.shape == (5, 784)
    assert features.min() >= 0.0 and features.max() <= 1.0
    np.testing.assert_allclose(features * 255, data.images.reshape(5, -1), atol=1e-4)
    assert "images" not in repr(data)


def test_loads_are_cached_and_reloaded_when_files_change(sandbox):
    directory = _write_dataset(sandbox / "d", 5)
    first = load_dataset("mnist", "train", data_dir=directory)
    second = load_dataset("mnist", "train", data_dir=directory)
    assert first.images is second.images and first.labels is second.labels
    assert not first.images.flags.writeable and not first.labels.flags.writeable
    _write_split(directory, "train", 9)
    assert len(load_dataset("mnist", "train", data_dir=directory)) == 9


def test_missing_dataset_message_lists_places_and_fixes(sandbox, monkeypatch):
    monkeypatch.setenv(datasets.ENV_DATA_DIR, str(sandbox / "env"))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", "test", data_dir=sandbox / "explicit")
    err = info.value
    assert isinstance(err, DatasetNotFoundError)
    message = str(err)
    expected = search_places("fashion-mnist", sandbox / "explicit")
    assert [place.path for place in err.places] == [place.path for place in expected]
    for place in expected:
        assert str(place.path) in message
    for must in (
        str(sandbox / "explicit" / "fashion-mnist"),
        str(sandbox / "env"),
        str(sandbox / "home" / ".cache" / "vsml" / "datasets" / "fashion-mnist"),
        str(sandbox / "system" / "fashion-mnist"),
        str(sandbox / "work" / "shared" / "datasets" / "fashion-mnist"),
        str(sandbox / "elsewhere" / "shared" / "datasets" / "fashion-mnist"),
        "t10k-images-idx3-ubyte.gz",
        "VSML_DATA_DIR",
        "data_dir=",
        "download=True",
        "apt install dataset-fashion-mnist",
    ):
        assert must in message, must


def test_unknown_name_and_split(sandbox):
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*fashion-mnist, mnist"):
        load_dataset("cifar", "train")
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        load_dataset("mnist", "valid")  # type: ignore[arg-type]
    assert dataset_info("Fashion_MNIST").name == "fashion-mnist"


class _FakeMirror:
    """Replaces ``urllib.request.urlopen``: serves a dict url -> bytes, records requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requested: list[str] = []

    def __call__(self, url, timeout=None):
        self.requested.append(url)
        if url not in self.files:
            raise urllib.error.URLError(f"no route to {url}")
        return io.BytesIO(self.files[url])


def _fake_mnist_files(tmp: Path) -> dict[str, bytes]:
    _write_dataset(tmp, 4)
    return {path.name: path.read_bytes() for path in tmp.iterdir()}


def _use_fake_registry(monkeypatch, payloads: dict[str, bytes], mirrors: tuple[str, ...], algorithm: str) -> None:
    checksums = {name: f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}" for name, data in payloads.items()}
    info = dataclasses.replace(datasets.DATASETS["mnist"], mirrors=mirrors, checksums=checksums)
    monkeypatch.setitem(datasets.DATASETS, "mnist", info)


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_download_fetches_split_into_cache_and_verifies(sandbox, monkeypatch, algorithm):
    payloads = _fake_mnist_files(sandbox / "origin")
    _use_fake_registry(monkeypatch, payloads, ("https://mirror.test/mnist/",), algorithm)
    mirror = _FakeMirror({f"https://mirror.test/mnist/{name}": data for name, data in payloads.items()})
    monkeypatch.setattr(datasets.urllib.request, "urlopen", mirror)
    monkeypatch.setenv("XDG_CACHE_HOME", str(sandbox / "xdg"))

    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", "train")
    assert mirror.requested == []

    data = load_dataset("mnist", "train", download=True)
    cache = sandbox / "xdg" / "vsml" / "datasets" / "mnist"
    assert data.source == cache.resolve() and len(data) == 4
    assert sorted(mirror.requested) == [
        "https://mirror.test/mnist/train-images-idx3-ubyte.gz",
        "https://mirror.test/mnist/train-labels-idx1-ubyte.gz",
    ]
    assert sorted(p.name for p in cache.iterdir()) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    load_dataset("mnist", "train", download=True)  # now found in the cache: no new request
    assert len(mirror.requested) == 2


def test_download_rejects_checksum_mismatch_and_leaves_no_file(sandbox, monkeypatch):
    payloads = _fake_mnist_files(sandbox / "origin")
    _use_fake_registry(monkeypatch, payloads, ("https://bad.test/", "https://down.test/"), "sha256")
    corrupted = {f"https://bad.test/{name}": data[:-1] + b"!" for name, data in payloads.items()}
    monkeypatch.setattr(datasets.urllib.request, "urlopen", _FakeMirror(corrupted))
    with pytest.raises(DownloadError) as info:
        load_dataset("mnist", "test", download=True)
    message = str(info.value)
    assert "checksum mismatch" in message and "https://down.test/t10k-" in message
    cache = sandbox / "home" / ".cache" / "vsml" / "datasets" / "mnist"
    assert list(cache.iterdir()) == []


def test_download_falls_back_to_next_mirror(sandbox, monkeypatch):
    payloads = _fake_mnist_files(sandbox / "origin")
    _use_fake_registry(monkeypatch, payloads, ("https://bad.test/", "https://good.test/"), "md5")
    served = {f"https://bad.test/{name}": b"garbage" for name in payloads}
    served |= {f"https://good.test/{name}": data for name, data in payloads.items()}
    mirror = _FakeMirror(served)
    monkeypatch.setattr(datasets.urllib.request, "urlopen", mirror)
    assert len(load_dataset("mnist", "test", download=True)) == 5
    assert [url.split("/")[2] for url in mirror.requested] == ["bad.test", "good.test"] * 2


def test_registry_mirrors_are_the_canonical_ones():
    assert dataset_info("mnist").mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert dataset_info("fashion-mnist").mirrors[0].startswith("http://fashion-mnist.s3-website.eu-central-1")
    for info in datasets.DATASETS.values():
        for split in ("train", "test"):
            for name in info.file_names(split):
                assert info.checksums[name].startswith("md5:")


def _real(name: str, split: str):
    try:
        return load_dataset(name, split)
    except DatasetNotFoundError:
        pytest.skip(f"real {name} not present (../shared/datasets)")


def test_real_mnist():
    train, test = _real("mnist", "train"), _real("mnist", "test")
    assert (len(train), len(test)) == (8000, 2000)
    for data in (train, test):
        assert data.images.shape[1:] == (28, 28)
        assert sorted(np.unique(data.labels)) == list(range(10))


def test_real_fashion_mnist_test_split():
    data = _real("fashion-mnist", "test")
    assert data.images.shape == (10000, 28, 28)
    assert np.bincount(data.labels).tolist() == [1000] * 10
