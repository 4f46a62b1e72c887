"""Datasets as table rows: every dataset yields (row index, sample in [-1, 1]).

With ``flip`` on, a dataset of N images has 2N rows and row ``i + N`` is image
``i`` mirrored, which is how the coupling table treats flips (each mirrored
image keeps noise slots of its own, as in the authors' code).

Minibatches are a pure function of (seed, step): ``BatchPlan.global_rows(step)``
walks a fresh permutation of the rows every epoch, and each rank takes its
slice. That makes a resumed run, a replay, and the coupling service all agree
on which rows a step trains on, with no sampler state to save.

``contract``: the dataset contract, the batch plan and the registry of kinds; one
module per kind (``images``: CIFAR-10, ImageNet batches, image folders; ``digits``,
``mnist``, ``toy2d``, ``synthetic``, ``latents``, ``pairs``) registers itself on import.
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
