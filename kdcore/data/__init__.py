"""Data layer: registered datasets, fixed splits, device-side batching and augmentation.

In-memory datasets (digits, mnist, fashion_mnist, cifar10, cifar100) are held as
normalized tensors; imagefolder is streamed from disk. Every loader yields
(x, y, idx) batches on the training device, idx indexing into the split.
"""
from kdcore.data.augment import augment_batch
from kdcore.data.loaders import BatchLoader, make_loader
from kdcore.data.sources import DATASETS, data_root, data_roots, dataset_info, dataset_status, load_dataset
from kdcore.data.types import DatasetError, DatasetInfo, DatasetStatus, DataSplits, Split

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataSplits",
    "DatasetError",
    "DatasetInfo",
    "DatasetStatus",
    "Split",
    "augment_batch",
    "data_root",
    "data_roots",
    "dataset_info",
    "dataset_status",
    "load_dataset",
    "make_loader",
]
