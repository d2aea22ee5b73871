"""Stream sampling: shapes, standardisation, reproducibility, replacement rules, augmentations, EpisodeSampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vsml_train.data.augment import ClassSubset, LabelPermutation, RandomProjection, Resize
from vsml_train.data.datasets import Dataset, DatasetNotFoundError, load_dataset
from vsml_train.data.sampler import (
    MNIST_MEAN,
    MNIST_STD,
    PIXEL_STATS,
    EpisodeSampler,
    Streams,
    sample_streams,
    sample_synthetic_streams,
)
from vsml_train.data.synthetic import LinearTask, SumSignTask

N, A, B = 50, 6, 5


def _indexed_set(n: int = N, a: int = A, b: int = B) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first column is the example index (so a stream reveals what it drew); labels i % b."""
    features = np.zeros((n, a), dtype=np.float32)
    features[:, 0] = np.arange(n)
    features[:, 1:] = np.random.default_rng(0).random((n, a - 1))
    return features, np.arange(n, dtype=np.int64) % b


def _raw(features, labels, **kwargs) -> Streams:
    return sample_streams(features, labels, mean=None, std=None, **kwargs)


def test_shapes_and_dtypes():
    features, labels = _indexed_set()
    streams = sample_streams(features, labels, n_streams=3, n_steps=7, seed=0)
    assert streams.x.shape == (7, 3, A) and streams.x.dtype == np.float32
    assert streams.y.shape == (7, 3) and streams.y.dtype == np.int64
    assert streams.n_classes == B and (streams.n_steps, streams.n_streams, streams.n_features) == (7, 3, A)
    assert streams.x.flags.c_contiguous
    assert "T=7, S=3, A=6" in repr(streams)


def test_labels_follow_their_examples():
    features, labels = _indexed_set()
    streams = _raw(features, labels, n_streams=4, n_steps=20, seed=1)
    index = streams.x[..., 0].astype(int)  # [T, S]
    np.testing.assert_array_equal(streams.y, labels[index])
    np.testing.assert_array_equal(streams.x, features[index])


def test_without_replacement_when_possible():
    features, labels = _indexed_set()
    streams = _raw(features, labels, n_streams=5, n_steps=N, seed=2)
    for s in range(5):
        assert sorted(streams.x[:, s, 0].astype(int).tolist()) == list(range(N))


def test_more_steps_than_examples_uses_full_passes():
    features, labels = _indexed_set()
    streams = _raw(features, labels, n_streams=2, n_steps=2 * N + 10, seed=3)
    for s in range(2):
        index = streams.x[:, s, 0].astype(int)
        counts = np.bincount(index, minlength=N)
        assert counts.min() >= 2 and counts.max() <= 3 and counts.sum() == 2 * N + 10
        assert sorted(index[:N].tolist()) == list(range(N))  # the first pass is a permutation


def test_standardisation_and_uint8_scaling():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.arange(30, dtype=np.int64) % 10
    features = images.reshape(30, -1).astype(np.float32) / 255
    from_images = sample_streams(images, labels, n_streams=2, n_steps=10, seed=5)
    from_features = sample_streams(features, labels, n_streams=2, n_steps=10, seed=5)
    np.testing.assert_allclose(from_images.x, from_features.x, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(from_images.y, from_features.y)
    raw = _raw(images, labels, n_streams=2, n_steps=10, seed=5)
    np.testing.assert_allclose(from_images.x, (raw.x - MNIST_MEAN) / MNIST_STD, rtol=1e-5, atol=1e-5)
    assert raw.x.min() >= 0 and raw.x.max() <= 1
    centred = sample_streams(images, labels, n_streams=2, n_steps=10, seed=5, mean=0.5, std=None)
    np.testing.assert_allclose(centred.x, raw.x - 0.5, atol=1e-6)


def test_stats_table():
    assert PIXEL_STATS["mnist"] == (0.1307, 0.3081)
    assert PIXEL_STATS["fashion-mnist"] == (0.2860, 0.3530)


def test_same_seed_same_streams_and_prefix_property():
    features, labels = _indexed_set()
    augment = (RandomProjection(4), LabelPermutation())
    first = sample_streams(features, labels, n_streams=6, n_steps=9, seed=11, augment=augment)
    again = sample_streams(features, labels, n_streams=6, n_steps=9, seed=11, augment=augment)
    other = sample_streams(features, labels, n_streams=6, n_steps=9, seed=12, augment=augment)
    np.testing.assert_array_equal(first.x, again.x)
    np.testing.assert_array_equal(first.y, again.y)
    assert not np.array_equal(first.x, other.x)
    fewer = sample_streams(features, labels, n_streams=2, n_steps=9, seed=11, augment=augment)
    np.testing.assert_array_equal(fewer.x, first.x[:, :2])  # stream s depends only on (seed, s)


def test_streams_get_their_own_augmentation():
    features, labels = _indexed_set()
    streams = _raw(features, labels, n_streams=6, n_steps=N, seed=6, augment=[LabelPermutation()])
    maps = []
    for s in range(6):
        original = labels[streams.x[:, s, 0].astype(int)]
        mapping = {int(o): int(n) for o, n in zip(original, streams.y[:, s], strict=True)}
        assert sorted(mapping.values()) == list(range(B))
        maps.append(tuple(mapping[c] for c in range(B)))
    assert len(set(maps)) > 1


def test_class_subset_streams():
    features, labels = _indexed_set()
    streams = _raw(features, labels, n_streams=4, n_steps=30, seed=7, augment=[ClassSubset(2)])
    assert streams.n_classes == 2 and set(np.unique(streams.y).tolist()) <= {0, 1}
    for s in range(4):
        original = labels[streams.x[:, s, 0].astype(int)]
        assert len(np.unique(original)) == 2  # 20 examples in the pool, so 30 steps repeat some
        np.testing.assert_array_equal(streams.y[:, s], (original == original.max()).astype(int))


def test_resize_and_projection_change_a():
    images = np.random.default_rng(8).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 10
    streams = sample_streams(images, labels, n_streams=2, n_steps=5, seed=0, augment=[Resize(7)])
    assert streams.x.shape == (5, 2, 49)
    streams = sample_streams(images, labels, n_streams=2, n_steps=5, seed=0, augment=[RandomProjection(3)])
    assert streams.x.shape == (5, 2, 3)


def test_input_validation():
    features, labels = _indexed_set()
    with pytest.raises(ValueError, match="labels must lie in"):
        sample_streams(features, labels, n_streams=1, n_steps=2, seed=0, n_classes=3)
    with pytest.raises(ValueError, match="matching"):
        sample_streams(features, labels[:-1], n_streams=1, n_steps=2, seed=0)
    with pytest.raises(ValueError, match=">= 1"):
        sample_streams(features, labels, n_streams=0, n_steps=2, seed=0)
    with pytest.raises(ValueError, match="seed"):
        sample_streams(features, labels, n_streams=1, n_steps=2, seed=-1)
    with pytest.raises(ValueError, match="keeps no example"):
        zeros = np.zeros(N, np.int64)
        sample_streams(features, zeros, n_streams=1, n_steps=2, seed=0, n_classes=5, augment=[ClassSubset(1)])


def test_synthetic_streams():
    streams = sample_synthetic_streams(LinearTask(8, 4), n_streams=3, n_steps=25, seed=0)
    assert streams.x.shape == (25, 3, 8) and streams.y.shape == (25, 3) and streams.n_classes == 4
    again = sample_synthetic_streams(LinearTask(8, 4), n_streams=3, n_steps=25, seed=0)
    np.testing.assert_array_equal(streams.x, again.x)
    subset = sample_synthetic_streams(SumSignTask(5), n_streams=2, n_steps=40, seed=1, augment=[ClassSubset(1)])
    assert subset.n_classes == 1 and (subset.y == 0).all() and subset.x.shape == (40, 2, 5)


def _toy_dataset() -> Dataset:
    images = np.random.default_rng(9).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    return Dataset("toy", "train", images, np.arange(40, dtype=np.int64) % 10, 10, Path("."))


@pytest.mark.parametrize("source", [_toy_dataset(), LinearTask(8, 3)], ids=["dataset", "synthetic"])
def test_episode_sampler_is_a_function_of_seed_and_iteration(source):
    def make():
        return EpisodeSampler(source, n_streams=3, n_steps=6, seed=5, augment=[LabelPermutation()])

    sampler = make()
    batch = sampler.episodes(7)
    resumed = make().episodes(7)  # a fresh sampler, as after a restart
    np.testing.assert_array_equal(batch.x, resumed.x)
    np.testing.assert_array_equal(batch.y, resumed.y)
    assert not np.array_equal(sampler.episodes(8).x, batch.x)
    assert not np.array_equal(EpisodeSampler(source, n_streams=3, n_steps=6, seed=6).episodes(7).x, batch.x)
    stream = sampler.iterate(start=7)
    np.testing.assert_array_equal(next(stream).x, batch.x)
    np.testing.assert_array_equal(next(stream).x, sampler.episodes(8).x)
    np.testing.assert_array_equal(next(iter(sampler)).x, sampler.episodes(0).x)
    assert batch.x.shape[:2] == (6, 3) and batch.x.dtype == np.float32


def test_episode_sampler_dataset_matches_sample_streams():
    data = _toy_dataset()
    sampler = EpisodeSampler(data, n_streams=2, n_steps=4, seed=1, mean=0.5, std=0.25)
    batch = sampler.episodes(3)
    seed = sampler.seed_of(3)
    direct = sample_streams(data.features, data.labels, n_streams=2, n_steps=4, seed=seed, mean=0.5, std=0.25)
    np.testing.assert_allclose(batch.x, direct.x, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch.y, direct.y)
    assert "toy" in repr(sampler)


def test_real_mnist_streams_are_standardised():
    try:
        data = load_dataset("mnist", "test")
    except DatasetNotFoundError:
        pytest.skip("real mnist not present (../shared/datasets)")
    streams = sample_streams(data.images, data.labels, n_streams=4, n_steps=500, seed=0)
    assert streams.x.shape == (500, 4, 784)
    assert abs(float(streams.x.mean())) < 0.1 and abs(float(streams.x.std()) - 1.0) < 0.1
    assert set(np.unique(streams.y).tolist()) == set(range(10))
