"""Reading and checking class labels (without decoding images or running transforms)."""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from .errors import NamedRows

logger = logging.get_logger(__name__)


DEFAULT_LABEL_COLUMNS = ("label", "labels", "label_ids")


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
        # The label column alone, as Arrow (public API): a `set_transform`/`with_transform` never runs, the image
        # column is never decoded, and the lazy row mapping of `select`/`shuffle` is applied.
        table = dataset.select_columns([label_column]).with_format("arrow")[:]
        return table.column(label_column).to_numpy(zero_copy_only=False)
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
