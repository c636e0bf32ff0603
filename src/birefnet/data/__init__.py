"""Training data: datasets in the official layout, augmentations, the sampler, synthetic data."""

from __future__ import annotations

from birefnet.data.dataset import (
    IMAGE_EXTENSIONS,
    BadPair,
    DataReport,
    EmptyDatasetError,
    Pair,
    SegmentationDataset,
    class_name_from_stem,
    find_pairs,
    read_image,
    read_mask,
    resolve_dataset_dirs,
)
from birefnet.data.sampler import GlobalBatchSampler, epoch_permutation
from birefnet.data.synthetic import make_sample, write_synthetic_dataset
from birefnet.data.transforms import (
    AUGMENTATIONS,
    DEFAULT_AUGMENTATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    apply_augmentations,
    dynamic_batch_size,
    resize_batch,
)

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "BadPair",
    "DataReport",
    "EmptyDatasetError",
    "GlobalBatchSampler",
    "Pair",
    "SegmentationDataset",
    "apply_augmentations",
    "class_name_from_stem",
    "dynamic_batch_size",
    "epoch_permutation",
    "find_pairs",
    "make_sample",
    "read_image",
    "read_mask",
    "resize_batch",
    "resolve_dataset_dirs",
    "write_synthetic_dataset",
]
