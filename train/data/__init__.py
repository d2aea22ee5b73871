"""vsml_train.data: datasets, synthetic tasks, augmentations and episode streams (numpy only).

Reference sections 6 (meta-training data, augmentations) and 7 (evaluation
streams). Dimension letters: T steps, S streams, N examples, A features,
B classes.
"""

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

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DownloadError",
    "IDXFormatError",
    "dataset_info",
    "download_dataset",
    "find_dataset",
    "load_dataset",
    "read_idx",
    "read_image_label_pair",
    "read_images",
    "read_labels",
    "search_places",
    "user_cache_dir",
    "write_idx",
]
