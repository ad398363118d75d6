"""Examples that cannot be loaded: errors that name the row, its file and the fix.

Labels are read from Arrow without decoding anything (fast, and right), so a truncated image is
only met when a batch needs it, maybe hours in. Then the error must say which row of which split,
from which file, and how to find every such row at once.
"""

import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch.utils.data import Dataset
from tqdm.auto import tqdm

MEDIA_FEATURES = ("Image", "Audio", "Video")


class ExampleLoadError(RuntimeError):
    """An example of a dataset could not be loaded (decoded or transformed)."""


USER_ERRORS = (ValueError, OSError, ImportError, ExampleLoadError)
"""Bad arguments or data: their message says what to do."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """For commands (the main job, `hf-cskd calibrate`): a `USER_ERRORS` ends the run with its message on one line
    and exit status 1, since a traceback adds nothing to a message that names the fix (HF_CSKD_TRACEBACK=1 shows it)."""
    try:
        yield
    except USER_ERRORS as error:
        if os.environ.get("HF_CSKD_TRACEBACK") == "1":
            raise
        print(f"\nerror: {error}\n(HF_CSKD_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def _media_columns(dataset: Any) -> list[str]:
    features = getattr(dataset, "features", None) or {}
    return [name for name, feature in features.items() if type(feature).__name__ in MEDIA_FEATURES]


def source_file(dataset: Any, index: int) -> str | None:
    """The file a row's image/audio came from, read from Arrow without decoding (None if unknown)."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return None
    media = _media_columns(dataset)
    row = dataset.select_columns(media).with_format("arrow")[index : index + 1] if media else None  # undecoded
    for name in media:
        value = row.column(name)[0].as_py()
        if isinstance(value, dict) and value.get("path"):
            return value["path"]
    return None


def describe_failure(dataset: Any, split: str, index: int, error: BaseException) -> str:
    path = source_file(dataset, index)
    where = f"row {index} of the {split} split" + (f" (file {path})" if path else "")
    return (
        f"Could not load {where}: {type(error).__name__}: {error}. Fix or remove that file, or drop every unreadable "
        "row at once: `bad = hf_cskd.data.errors.unreadable_rows(dataset)`, then "
        "`dataset = dataset.select(sorted(set(range(len(dataset))) - set(bad)))`. Training can then go on from the "
        "last checkpoint (`resume_from_checkpoint=True`)."
    )


def fetch_rows(dataset: Any, indices: Sequence[int], split: str = "train") -> list[Any]:
    """`dataset`'s rows (in one batched call when it has `__getitems__`); a row that fails raises
    `ExampleLoadError` naming it."""
    fetch = getattr(dataset, "__getitems__", None)
    try:
        return fetch(list(indices)) if fetch is not None else [dataset[i] for i in indices]
    except Exception as error:
        for index in dict.fromkeys(indices):  # find the culprit, one row at a time
            try:
                dataset[index]
            except Exception as row_error:
                raise ExampleLoadError(describe_failure(dataset, split, index, row_error)) from row_error
        raise error


class NamedRows(Dataset):
    """A map-style dataset whose rows that cannot be loaded raise `ExampleLoadError` naming them."""

    def __init__(self, dataset: Any, split: str):
        self.dataset, self.split = dataset, split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return fetch_rows(self.dataset, [index], self.split)[0]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        return fetch_rows(self.dataset, indices, self.split)

    def __getattr__(self, name: str) -> Any:  # `column_names`, `features`, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def transformed_rows(dataset: Any, split: str) -> Any:
    """A `datasets.Dataset` with an on-the-fly transform (`with_transform`, `set_transform`) as `NamedRows`, so that
    `Trainer` removes unused columns from the transformed rows (its collator route) rather than from the dataset,
    before the transform has read them. Any other dataset is returned as it is."""
    import datasets

    if isinstance(dataset, datasets.Dataset) and dataset.format.get("type") == "custom":
        return NamedRows(dataset, split)
    return dataset


def unreadable_rows(dataset: Any, columns: Sequence[str] | None = None) -> list[int]:
    """Indices of the rows of a `datasets.Dataset` whose image/audio cannot be decoded (progress bar).

    Decodes each media value once, without the dataset's transform; labels and other columns are
    not touched.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError("unreadable_rows needs a datasets.Dataset (for other datasets, load each row in a try block).")
    columns = list(columns or _media_columns(dataset))
    if not columns:
        raise ValueError("The dataset has no Image/Audio/Video column to check; name the columns to check.")
    features = {name: dataset.features[name] for name in columns}
    raw = dataset.with_format(None).select_columns(columns)
    for name, feature in features.items():
        raw = raw.cast_column(name, dataclasses.replace(feature, decode=False))
    bad = []
    for index, row in enumerate(tqdm(raw, desc="Decoding to find unreadable rows")):
        try:
            for name, feature in features.items():
                feature.decode_example(row[name])
        except Exception:  # noqa: BLE001 - any decoding failure makes the row unreadable
            bad.append(index)
    return bad
