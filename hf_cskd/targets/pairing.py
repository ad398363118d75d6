"""Class-wise pairs: for every training example, another example of the same class.

The pair of example `i` is a pure function of `(seed, epoch, i)`: every rank of a distributed
run computes the same pairs without communicating, a resumed run sees the pairs it would have
seen, and pairs change from one epoch to the next.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers.utils import logging

from ..data.errors import fetch_rows
from ..data.labels import class_labels, require_map_style, validate_labels
from ..data.seeded_rows import MASK64, splitmix64

logger = logging.get_logger(__name__)

PAIR_PREFIX = "pair_"
"""Pair inputs travel under the anchor's names with this prefix (`pair_pixel_values`, ...)."""


class ClassIndex:
    """Members of each class, built once in O(N log N) with numpy (well under 1 s for 1M labels)."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels
        self.order = np.argsort(labels, kind="stable")
        self.counts = np.bincount(labels)
        self.starts = np.cumsum(self.counts) - self.counts
        self.position = np.empty_like(self.order)
        self.position[self.order] = np.arange(len(labels)) - np.repeat(self.starts, self.counts)

    def pair(self, index: int, seed: int, epoch: int) -> int:
        """A different member of `index`'s class, drawn uniformly by a hash of (seed, epoch, index)."""
        label = self.labels[index]
        size = int(self.counts[label])
        if size == 1:
            return index
        draw = splitmix64(splitmix64(splitmix64(seed & MASK64) ^ epoch) ^ index)
        offset = (int(self.position[index]) + 1 + draw % (size - 1)) % size
        return int(self.order[self.starts[label] + offset])


class ClassPairedDataset(Dataset):
    """Wrap a map-style dataset so that item `i` is example `i` plus another example of its class.

    The anchor keeps its keys; the pair's keys get the `pair_` prefix (`pair_pixel_values`,
    `pair_label`, ...). `DataCollatorForClassPairs` turns a list of such items into one batch.

    Args:
        dataset: a `datasets.Dataset` (with or without `set_transform`/`with_transform`) or a torch
            `Dataset` whose items are dicts.
        label_column: the column holding the class index; by default the first of `label`,
            `labels`, `label_ids` that exists.
        labels: the class index of every example, when the dataset cannot give them cheaply.
        num_labels: the number of classes; labels outside `[0, num_labels)` are rejected.
        seed: with the epoch, determines every pair.
    """

    def __init__(
        self,
        dataset: Any,
        label_column: str | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        num_labels: int | None = None,
        seed: int = 0,
    ):
        require_map_style(dataset)
        if labels is None:
            self.label_column, labels = class_labels(dataset, label_column, num_labels)
        else:
            self.label_column = label_column or "labels"
            labels = np.asarray(labels)
            if len(labels) != len(dataset):
                raise ValueError(f"Got {len(labels)} labels for a dataset of {len(dataset)} examples.")
            labels = validate_labels(labels, self.label_column, num_labels)
        self.index = ClassIndex(labels)
        if self.index.counts.max() < 2:
            raise ValueError(
                "No class has two examples, so no example can be paired with another of its class. CS-KD needs "
                "several examples per class; check that the label column holds class indices, not example ids."
            )
        singletons = int((self.index.counts == 1).sum())
        if singletons:
            logger.warning(
                f"{singletons} class(es) have a single training example; those examples are paired with "
                "themselves (their CS-KD term is then a consistency term between two augmentations)."
            )
        self.dataset = dataset
        self.seed = seed
        # Shared memory, so that DataLoader workers (persistent ones too) see `set_epoch`.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Called by `CSKDTrainer` at the start of every epoch; pairs change with it (and so do the wrapped
        dataset's random transforms, when it takes an epoch: `SeededRows`)."""
        self._epoch.fill_(int(epoch))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def pair_index(self, index: int, epoch: int | None = None) -> int:
        return self.index.pair(index, self.seed, self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def _merge(anchor: Mapping[str, Any], pair: Mapping[str, Any]) -> dict[str, Any]:
        return {**anchor, **{PAIR_PREFIX + key: value for key, value in pair.items()}}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A whole batch in one call of the wrapped dataset's `__getitems__` (as DataLoader does).

        A `datasets.Dataset` then runs its batched transform once over anchors and pairs
        together, instead of once per example. A row that cannot be loaded is named in the error.
        """
        pairs = [self.pair_index(index) for index in indices]
        examples = fetch_rows(self.dataset, list(indices) + pairs)
        return [self._merge(a, p) for a, p in zip(examples[: len(indices)], examples[len(indices) :])]
