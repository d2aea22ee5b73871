"""Augmentations: reproducibility, shapes, projection scale, area resize, class subsets, composition."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vsml_train.data.augment import (
    ClassSubset,
    EpisodeTransform,
    LabelPermutation,
    PixelPermutation,
    RandomProjection,
    Resize,
    apply_augmentations,
    area_weights,
    draw_episode,
    identity_transform,
)

RANDOM_SPECS = [
    RandomProjection(16),
    RandomProjection(16, pool_size=4),
    PixelPermutation(),
    ClassSubset(3),
    LabelPermutation(),
]


def _data(n: int = 60, a: int = 784, b: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    return rng.standard_normal((n, a), dtype=np.float32), np.arange(n, dtype=np.int64) % b


def _run(specs, seed):
    x, y = _data()
    return apply_augmentations(x, y, n_classes=10, augment=specs, rng=np.random.default_rng(seed))


@pytest.mark.parametrize("spec", RANDOM_SPECS, ids=repr)
def test_same_seed_same_output_different_seed_different(spec):
    x1, y1, b1 = _run([spec], 0)
    x2, y2, b2 = _run([spec], 0)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert b1 == b2
    outputs = [_run([spec], seed) for seed in range(1, 6)]
    assert any(not (np.array_equal(x1, x) and np.array_equal(y1, y)) for x, y, _ in outputs)


def test_projection_shape_and_unit_variance():
    x, y = _data(n=400, a=300)
    rng = np.random.default_rng(0)
    out, y_out, b = apply_augmentations(x, y, n_classes=10, augment=[RandomProjection(64)], rng=rng)
    assert out.shape == (400, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(y_out, y)
    assert b == 10
    assert 0.8 < float(out.var()) < 1.2


def test_projection_pool_is_fixed_and_small():
    spec = RandomProjection(8, pool_size=3, pool_seed=5)
    matrices = set()
    for seed in range(40):
        transform = spec.draw(np.random.default_rng(seed), 20, 2)
        matrices.add(transform.apply_x(np.eye(20, dtype=np.float32)).tobytes())
    assert len(matrices) == 3
    eye = np.eye(20, dtype=np.float32)
    fixed = RandomProjection(8, pool_size=1)
    single = {fixed.draw(np.random.default_rng(s), 20, 2).apply_x(eye).tobytes() for s in range(5)}
    assert len(single) == 1
    other_seed = RandomProjection(8, pool_size=1, pool_seed=6).draw(np.random.default_rng(0), 20, 2)
    assert other_seed.apply_x(eye).tobytes() not in single


def test_fresh_projection_differs_per_episode():
    rng = np.random.default_rng(0)
    eye = np.eye(20, dtype=np.float32)
    first, second = (RandomProjection(8).draw(rng, 20, 2).apply_x(eye) for _ in range(2))
    assert not np.array_equal(first, second)


def test_area_weights_rows_sum_to_one():
    for out in (1, 5, 7, 10, 14, 28, 40):
        weights = area_weights(28, out)
        assert weights.shape == (out, 28)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(weights.sum(axis=0), out / 28, rtol=1e-5)  # every pixel counted fully


@pytest.mark.parametrize("size", [14, 7, 4])
def test_resize_divisors_are_block_means(size):
    images = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    block = 28 // size
    expected = images.reshape(3, size, block, size, block).mean(axis=(2, 4)).reshape(3, -1)
    out, _, _ = apply_augmentations(
        images.reshape(3, -1), np.zeros(3, np.int64), n_classes=2, augment=[Resize(size)], rng=np.random.default_rng(0)
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_resize_non_divisor_keeps_mean_and_constants():
    images = np.random.default_rng(1).random((2, 784), dtype=np.float32)
    transform = Resize(10).draw(np.random.default_rng(0), 784, 2)
    out = transform.apply_x(images)
    assert out.shape == (2, 100) and transform.n_features == 100
    np.testing.assert_allclose(out.mean(axis=1), images.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(transform.apply_x(np.full((1, 784), 0.3, np.float32)), 0.3, rtol=1e-5)
    with pytest.raises(ValueError, match="28x28 = 784 features"):
        Resize(10).draw(np.random.default_rng(0), 100, 2)


def test_pixel_permutation_is_one_permutation_per_episode():
    x, y = _data(n=5, a=30)
    out, _, _ = apply_augmentations(x, y, n_classes=10, augment=[PixelPermutation()], rng=np.random.default_rng(0))
    index = np.array([np.flatnonzero(x[0] == value)[0] for value in out[0]])  # where each output pixel came from
    assert sorted(index.tolist()) == list(range(30)) and (index != np.arange(30)).any()
    np.testing.assert_array_equal(out, x[:, index])  # the same permutation for every example


def test_class_subset_relabels_and_drops():
    n_examples = 100
    x = np.arange(n_examples, dtype=np.float32)[:, None]  # x encodes the example index
    y = np.arange(n_examples, dtype=np.int64) % 10
    for seed in range(5):
        rng = np.random.default_rng(seed)
        out, y_out, b = apply_augmentations(x, y, n_classes=10, augment=[ClassSubset(4)], rng=rng)
        assert b == 4
        original = y[out[:, 0].astype(int)]
        chosen = np.unique(original)
        assert len(chosen) == 4 and len(out) == 40  # every example of the chosen classes, no other
        np.testing.assert_array_equal(y_out, np.searchsorted(chosen, original))  # sorted classes -> 0..3


def test_class_subset_too_large():
    with pytest.raises(ValueError, match="only 3 classes"):
        ClassSubset(4).draw(np.random.default_rng(0), 5, 3)


def test_label_permutation_is_a_bijection():
    x, y = _data(n=100)
    _, y_out, b = apply_augmentations(x, y, n_classes=10, augment=[LabelPermutation()], rng=np.random.default_rng(3))
    assert b == 10
    mapping = {int(old): int(new) for old, new in zip(y, y_out, strict=True)}
    assert sorted(mapping.values()) == list(range(10))
    for old, new in zip(y, y_out, strict=True):
        assert mapping[int(old)] == new


def test_composition_chains_sizes_and_label_maps():
    specs = [Resize(14), ClassSubset(3), RandomProjection(20), PixelPermutation(), LabelPermutation()]
    transform = draw_episode(specs, np.random.default_rng(0), 784, 10)
    assert (transform.n_features_in, transform.n_features) == (784, 20)
    assert (transform.n_classes_in, transform.n_classes) == (10, 3)
    kept = transform.label_map[transform.label_map >= 0]
    assert sorted(kept.tolist()) == [0, 1, 2]
    x, y = _data(n=200)
    out, y_out, b = apply_augmentations(x, y, n_classes=10, augment=specs, rng=np.random.default_rng(0))
    assert out.shape == (60, 20) and b == 3 and set(y_out.tolist()) == {0, 1, 2}


def test_mismatched_composition_and_dropped_labels_raise():
    with pytest.raises(ValueError, match="cannot compose"):
        identity_transform(5, 3).then(identity_transform(6, 3))
    transform = ClassSubset(1).draw(np.random.default_rng(0), 2, 3)
    assert isinstance(transform, EpisodeTransform) and transform.drops_classes
    with pytest.raises(ValueError, match="dropped"):
        transform.apply_y(np.arange(3))


def test_invalid_specs():
    with pytest.raises(ValueError):
        RandomProjection(0)
    with pytest.raises(ValueError):
        RandomProjection(4, pool_size=0)
    with pytest.raises(ValueError):
        ClassSubset(0)
    with pytest.raises(ValueError):
        Resize(0)


def test_class_contrast_scales_each_classes_pixels_by_its_own_factor() -> None:
    """With the pivot at a black pixel, class y's pixels become f_y times brighter; labels are untouched."""
    from vsml_train.data.augment import ClassContrast

    mean, std = 0.1307, 0.3081
    spec = ClassContrast(3.0, pivot=-mean / std)
    t = spec.draw(np.random.default_rng(0), 6, 4)
    assert t.label_gain is not None and t.label_gain.shape == (4,)
    assert np.all((t.label_gain >= 1 / 3 - 1e-6) & (t.label_gain <= 3 + 1e-6)) and np.ptp(t.label_gain) > 0
    pixels = np.random.default_rng(1).random((8, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    out = t.apply_x((pixels - mean) / std, y) * std + mean
    np.testing.assert_allclose(out, pixels * t.label_gain[y][:, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(t.apply_y(y), y)
    with pytest.raises(ValueError, match="needs the labels"):
        t.apply_x(pixels)


def test_class_contrast_composes_only_as_the_first_augmentation() -> None:
    from vsml_train.data.augment import ClassContrast, LabelPermutation, RandomProjection, draw_episode

    rng = np.random.default_rng(2)
    t = draw_episode([ClassContrast(2.0, pivot=0.0), LabelPermutation(), RandomProjection(5)], rng, 6, 3)
    x, y = np.ones((4, 6), np.float32), np.array([0, 1, 2, 0])
    assert t.apply_x(x, y).shape == (4, 5)
    with pytest.raises(ValueError, match="must come first"):
        draw_episode([LabelPermutation(), ClassContrast(2.0, pivot=0.0)], rng, 6, 3)
    with pytest.raises(ValueError, match="max_factor"):
        ClassContrast(0.5, pivot=0.0)


def test_task_mix_class_contrast_changes_the_images_only() -> None:
    """``TaskOptions.class_contrast``: the dataset's episodes differ, the synthetic family's do not."""
    from vsml_train.methods.tasks import TaskMix, TaskOptions

    base = TaskOptions(datasets=("mnist",), synthetic=("tabular",), synthetic_classes=2, steps=5, block=2)
    contrast = dataclasses.replace(base, class_contrast=3.0)
    plain_mix, contrast_mix = TaskMix(base, seed=0), TaskMix(contrast, seed=0)
    seen = set()
    for it in range(8):
        src, _ = plain_mix.choice(it)
        a, b = plain_mix.sample(it, 0, 2), contrast_mix.sample(it, 0, 2)
        same = torch.equal(a.x, b.x)
        assert same == (plain_mix.names[src] == "tabular"), (it, plain_mix.names[src])
        seen.add(plain_mix.names[src])
    assert seen == {"mnist", "tabular"}
    with pytest.raises(ValueError, match="class_contrast"):
        TaskOptions(class_contrast=0.5)
