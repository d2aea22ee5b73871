"""vsml_train.data: datasets, synthetic tasks, augmentations and episode streams (numpy only).

docs/model.md §6.5 (meta-training data, augmentations) and §7 (evaluation
streams). Dimension letters: T steps, S streams, I examples (instances) of a dataset, A features,
B classes.

Typical use::

    data = load_dataset("fashion-mnist", "test")
    streams = sample_streams(data.images, data.labels, n_streams=32, n_steps=2000, seed=0)
    streams.x  # float32 [T, S, A], standardised with the MNIST scalar mean / std
    streams.y  # int64 [T, S]

    sampler = EpisodeSampler(load_dataset("mnist", "train"), n_streams=16, n_steps=200, seed=1,
                             augment=(RandomProjection(32), LabelPermutation()))
    batch = sampler.episodes(iteration)
"""

from .augment import (
    Augmentation,
    ClassSubset,
    EpisodeTransform,
    LabelPermutation,
    PixelPermutation,
    RandomProjection,
    Resize,
    apply_augmentations,
    area_weights,
    draw_episode,
)
from .datasets import (
    DATASETS,
    Dataset,
    DatasetInfo,
    DatasetNotFoundError,
    DownloadError,
    dataset_info,
    download_dataset,
    find_dataset,
    load_dataset,
    search_places,
    user_cache_dir,
)
from .idx import IDXFormatError, read_idx, read_image_label_pair, read_images, read_labels, write_idx
from .sampler import (
    MNIST_MEAN,
    MNIST_STD,
    PIXEL_STATS,
    EpisodeSampler,
    Streams,
    sample_streams,
    sample_synthetic_streams,
    stream_generators,
)
from .synthetic import (
    SYNTHETIC_FAMILIES,
    LinearTask,
    NonlinearTask,
    SumSignTask,
    TabularTask,
    TabularTeacher,
    TaskFamily,
    Teacher,
    make_family,
)

__all__ = [
    "DATASETS",
    "MNIST_MEAN",
    "MNIST_STD",
    "PIXEL_STATS",
    "SYNTHETIC_FAMILIES",
    "Augmentation",
    "ClassSubset",
    "Dataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DownloadError",
    "EpisodeSampler",
    "EpisodeTransform",
    "IDXFormatError",
    "LabelPermutation",
    "LinearTask",
    "NonlinearTask",
    "PixelPermutation",
    "RandomProjection",
    "Resize",
    "Streams",
    "SumSignTask",
    "TabularTask",
    "TabularTeacher",
    "TaskFamily",
    "Teacher",
    "apply_augmentations",
    "area_weights",
    "dataset_info",
    "download_dataset",
    "draw_episode",
    "find_dataset",
    "load_dataset",
    "make_family",
    "read_idx",
    "read_image_label_pair",
    "read_images",
    "read_labels",
    "sample_streams",
    "sample_synthetic_streams",
    "search_places",
    "stream_generators",
    "user_cache_dir",
    "write_idx",
]
