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

from .data_errors import NamedRows, fetch_rows

logger = logging.get_logger(__name__)

PAIR_PREFIX = "pair_"
"""Pair inputs travel under the anchor's names with this prefix (`pair_pixel_values`, ...)."""

DEFAULT_LABEL_COLUMNS = ("label", "labels", "label_ids")

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """A fast, well-mixed 64-bit hash (Steele et al.), so pairs need no shared RNG state."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def is_iterable(dataset: Any) -> bool:
    """A stream (torch or `datasets` `IterableDataset`): no random access, no length."""
    import datasets

    return isinstance(dataset, (torch.utils.data.IterableDataset, datasets.IterableDataset))


def require_map_style(dataset: Any) -> None:
    """`ClassPairedDataset` needs random access by index: reject streams with the fix."""
    if is_iterable(dataset):
        raise TypeError(
            "ClassPairedDataset needs a map-style dataset (random access by index). For a streaming/iterable "
            "training set, pass the stream to CSKDTrainer as it is: it pairs it with a StreamPairedDataset "
            "(`cskd_mode='pairs'`) or needs no pairs at all (`cskd_mode='queue'`)."
        )


def _column_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    return list(names) if isinstance(names, list) else None


def _resolve_label_column(dataset: Any, label_column: str | None) -> str:
    names = _column_names(dataset)
    if names is None:
        first = dataset[0]
        if not isinstance(first, Mapping):
            raise TypeError(
                f"ClassPairedDataset needs examples that are dicts (like Trainer does); example 0 is a "
                f"{type(first).__name__}. Return a dict such as {{'pixel_values': ..., 'label': ...}} from __getitem__."
            )
        names = list(first.keys())
    if label_column is not None:
        if label_column not in names:
            raise ValueError(
                f"Label column {label_column!r} not found; the dataset has {names}. "
                "Pass the name of the column that holds the class index (`label_column=...`, "
                "or `--cskd_label_column` / `CSKDConfig(cskd_label_column=...)`)."
            )
        return label_column
    for candidate in DEFAULT_LABEL_COLUMNS:
        if candidate in names:
            return candidate
    raise ValueError(
        f"No label column found: CS-KD pairs examples by class and looked for one of "
        f"{list(DEFAULT_LABEL_COLUMNS)}, but the dataset has {names}. Rename the column holding the class "
        "index (e.g. `dataset.rename_column('fine_label', 'label')`) or pass `cskd_label_column`."
    )


def _check_label_feature(dataset: Any, label_column: str) -> None:
    """Reject string, float and multi-label columns of a `datasets.Dataset` from its schema alone."""
    features = getattr(dataset, "features", None)
    if not features or label_column not in features:
        return
    import datasets

    feature = features[label_column]
    if isinstance(feature, (datasets.Sequence, datasets.List, list)):
        raise ValueError(
            f"Column {label_column!r} holds a list per example (multi-label targets). CS-KD pairs examples "
            "of one class, so it needs one integer class index per example."
        )
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            raise ValueError(
                f"Column {label_column!r} holds strings. Encode it as class indices first: "
                f"`dataset = dataset.class_encode_column({label_column!r})`."
            )
        if feature.dtype.startswith("float"):
            raise ValueError(
                f"Column {label_column!r} holds floats (dtype {feature.dtype}): CS-KD needs integer class "
                "indices, not regression or soft targets. Cast it with "
                f"`dataset.cast_column({label_column!r}, datasets.Value('int64'))` if the values are classes."
            )


def check_stream_features(stream: Any, label_column: str | None) -> None:
    """A stream's label column, checked from its features (no example read): the map-style errors."""
    if not getattr(stream, "features", None):
        return
    _check_label_feature(stream, _resolve_label_column(stream, label_column))


def read_labels(dataset: Any, label_column: str) -> np.ndarray:
    """Read the class index of every example without decoding images or running transforms."""
    import datasets

    while isinstance(dataset, NamedRows):  # rows map one-to-one onto the wrapped dataset's
        dataset = dataset.dataset
    if isinstance(dataset, datasets.Dataset):
        # Straight from the Arrow table: a `set_transform`/`with_transform` never runs and the
        # image column is never decoded. `select`/`shuffle` leave a lazy indices mapping.
        column = dataset.data.column(label_column)
        indices = getattr(dataset, "_indices", None)
        if indices is not None:
            column = column.take(indices.column(0))
        return column.to_numpy(zero_copy_only=False)
    for attribute in ("targets", "labels"):
        values = getattr(dataset, attribute, None)
        if values is not None and not callable(values) and len(values) == len(dataset):
            return np.asarray(values)
    from tqdm.auto import tqdm

    logger.warning(
        "Reading labels one example at a time (this decodes every example once). Pass `labels=` to "
        "ClassPairedDataset, or give the dataset a `targets` attribute, to skip this."
    )
    return np.asarray([dataset[i][label_column] for i in tqdm(range(len(dataset)), desc="Reading labels")])


LABEL_RANGE_FIX = (
    "Drop unlabeled examples (e.g. label -1) or build the model with `num_labels` equal to the number of classes."
)
"""The fix named by every out-of-range label error (map-style sets, streams, queue batches)."""


def allowed_labels(num_labels: int | None) -> str:
    return f"[0, {num_labels})" if num_labels is not None else ">= 0"


def validate_labels(labels: np.ndarray, label_column: str, num_labels: int | None = None) -> np.ndarray:
    """Return `labels` as int64 class indices or raise an error that says how to fix the data."""
    if labels.ndim != 1:
        raise ValueError(
            f"Labels in {label_column!r} have shape {labels.shape[1:]} per example (multi-label or one-hot "
            "targets). CS-KD needs one integer class index per example."
        )
    if labels.dtype.kind in "fc":
        raise ValueError(
            f"Labels in {label_column!r} are floats ({labels.dtype}): CS-KD needs integer class indices, not "
            "regression or soft targets."
        )
    if labels.dtype.kind not in "iub":
        raise ValueError(
            f"Labels in {label_column!r} are of type {labels.dtype}, not integer class indices. Encode them "
            f"first, e.g. `dataset = dataset.class_encode_column({label_column!r})`."
        )
    labels = labels.astype(np.int64, copy=False)
    upper = num_labels if num_labels is not None else np.iinfo(np.int64).max
    bad = (labels < 0) | (labels >= upper)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} label(s) in {label_column!r} fall outside {allowed_labels(num_labels)} (example {first} "
            f"has label {int(labels[first])}). {LABEL_RANGE_FIX}"
        )
    return labels


def class_labels(
    dataset: Any, label_column: str | None = None, num_labels: int | None = None, decode: bool = True
) -> tuple[str, np.ndarray | None]:
    """The label column of a map-style training set and its validated class indices.

    With `decode=False`, labels that cannot be read without decoding every example (a torch
    `Dataset` with no `targets` attribute) are not read: `None` is returned for them.
    """
    import datasets

    if len(dataset) == 0:
        raise ValueError("The training dataset is empty: CS-KD needs at least two examples of some class.")
    column = _resolve_label_column(dataset, label_column)
    _check_label_feature(dataset, column)
    if not (decode or isinstance(dataset, datasets.Dataset) or hasattr(dataset, "targets")):
        return column, None
    return column, validate_labels(read_labels(dataset, column), column, num_labels)


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
