"""Datasets as table rows, one module per kind (``images``: CIFAR-10, ImageNet
batches, image folders; ``digits``, ``mnist``, ``toy2d``, ``synthetic``, ``latents``,
``pairs``), each registering itself on import with ``contract``: the dataset
contract, the batch plan and the registry of kinds.
"""

from loomray.data import digits, images, latents, mnist, pairs, synthetic, toy2d  # noqa: F401
from loomray.data.contract import (
    LOADERS,
    ArrayDataset,
    BatchPlan,
    DatasetError,
    RowDataset,
    build_dataset,
    iterate_batches,
    register,
)
from loomray.data.images import IMAGE_SUFFIXES, FolderDataset, load_cifar10, load_npz_batches
from loomray.data.mnist import mnist_5k
from loomray.data.toy2d import toy_points

__all__ = [
    "IMAGE_SUFFIXES",
    "LOADERS",
    "ArrayDataset",
    "BatchPlan",
    "DatasetError",
    "FolderDataset",
    "RowDataset",
    "build_dataset",
    "iterate_batches",
    "load_cifar10",
    "load_npz_batches",
    "mnist_5k",
    "register",
    "toy_points",
]
