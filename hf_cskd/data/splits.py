"""Where labelled images come from: one set of data arguments for the main job and `hf-cskd calibrate`.

A Hub dataset (`--dataset_name`, its splits picked by name) or imagefolders (`--train_dir`,
`--validation_dir`, `--test_dir`; or one folder with `train/`, `validation/`, `test/` inside) become a
`DatasetDict` with the splits named `train` / `validation` / `test` and a `ClassLabel` label column.
What `datasets` would get wrong quietly (a single class folder has no labels; a folder mixing splits
and classes trains on its test images) is refused here with the fix.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, DatasetDict, IterableDatasetDict, load_dataset


@dataclass
class DataArguments:
    """The labelled data: a Hub dataset (or local dataset folder) or imagefolders, and its columns."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id (or local dataset folder). Default: the embedded digits."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder of training images (class/img)."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder of validation images."})
    test_dir: str | None = field(default=None, metadata={"help": "An imagefolder of test images (reported on)."})
    validation_split: str = field(
        default="validation", metadata={"help": "With --dataset_name: the split used as validation."}
    )
    test_split: str = field(default="test", metadata={"help": "With --dataset_name: the split reported on."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Truncate the validation and test sets (debugging)."}
    )


SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test", "testing": "test", "eval": "test",
               "evaluation": "test"}  # fmt: skip
"""Sub-folder names `datasets`' imagefolder reads as splits (and the split each becomes)."""


def split_folders(path: str) -> list[str]:
    """The split sub-folders (`train/`, `validation/`, `test/`, ...) of an imagefolder, [] when it has none; a folder
    mixing split and class sub-folders is refused (its test images would be trained on as a class)."""
    root = Path(path)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    splits = [name for name in folders if name.lower() in SPLIT_NAMES]
    if splits and len(splits) < len(folders):
        raise ValueError(
            f"{path} mixes split sub-folders ({', '.join(splits)}) with class sub-folders "
            f"({', '.join(sorted(set(folders) - set(splits)))}): put every class folder inside {path}/train/."
        )
    if splits and "train" not in {SPLIT_NAMES[name.lower()] for name in splits}:
        raise ValueError(
            f"{path} holds split sub-folders ({', '.join(splits)}) but no train/: add {path}/train/<class>/."
        )
    return splits


def check_image_folder(path: str, flag: str) -> None:
    """An imagefolder that is missing, empty, without class sub-folders or with a single one (`datasets` then
    drops the label column, and the error it leads to asks for a column name), named with the layout expected."""
    layout = f"one sub-folder per class holding its images: {path}/<class name>/<image> (e.g. {path}/cat/001.jpg)"
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such folder. Expected {layout}.")
    if next((p for p in root.rglob("*") if p.is_file()), None) is None:
        raise ValueError(f"{flag} {path} holds no files. Expected {layout}.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(
            f"{flag} {path} holds files but no class sub-folders, so there are no labels. Expected {layout}."
        )
    if len(classes) == 1:
        raise ValueError(
            f"{flag} {path} holds a single class folder ({classes[0]}/), and an imagefolder with one class has no "
            f"labels: add the other classes' folders beside it ({layout})."
        )


def load_labelled_splits(
    data: DataArguments,
    cache_dir: str | None = None,
    streaming: bool = False,
    need_train: bool = True,
    default_files: dict[str, str] | None = None,
) -> DatasetDict | IterableDatasetDict:
    """The splits `train` (when `need_train`), `validation` and `test` (where the data has them), with a `ClassLabel`
    label column; `default_files` (split -> parquet file) when no data flag is given."""
    folders = {"train": data.train_dir, "validation": data.validation_dir, "test": data.test_dir}
    if data.dataset_name is not None:
        if any(folders.values()):
            raise ValueError("Pass either --dataset_name or the --*_dir imagefolders, not both.")
        raw = load_dataset(data.dataset_name, data.dataset_config_name, cache_dir=cache_dir, streaming=streaming)
        raw = rename_splits(raw, {data.validation_split: "validation", data.test_split: "test"})
    elif data.train_dir is not None and split_folders(data.train_dir):
        if data.validation_dir is not None or data.test_dir is not None:
            raise ValueError(
                f"--train_dir {data.train_dir} holds split sub-folders ({', '.join(split_folders(data.train_dir))}), "
                "read as those splits, and --validation_dir/--test_dir name others: drop them."
            )
        raw = load_dataset("imagefolder", data_dir=data.train_dir, cache_dir=cache_dir, streaming=streaming)
    elif any(folders.values()):
        for split, folder in folders.items():
            if folder is not None:
                check_image_folder(folder, f"--{split}_dir")
        files = {split: os.path.join(folder, "**") for split, folder in folders.items() if folder is not None}
        raw = load_dataset("imagefolder", data_files=files, cache_dir=cache_dir, streaming=streaming)
    elif default_files is not None:
        raw = load_dataset("parquet", data_files=default_files, streaming=streaming)
    else:
        raise ValueError("No data given: pass --validation_dir DIR (an imagefolder), or --dataset_name NAME.")
    needed = "train" if need_train else "validation"
    if not isinstance(raw, DatasetDict | IterableDatasetDict) or needed not in raw:
        found = list(raw) if isinstance(raw, dict) else type(raw).__name__
        flag = "" if need_train else " (--validation_split names it)"
        raise ValueError(f"The dataset has no {needed!r} split (found {found}){flag}. Name the split {needed!r}.")
    first = raw[needed]
    columns = list(first.features or {}) if streaming else first.column_names
    for flag, column in (("--image_column_name", data.image_column_name), ("--label_column_name", data.label_column_name)):
        if column not in columns:
            raise ValueError(f"Column {column!r} not found in the dataset; it has {columns}. Pass {flag} <column>.")
    if not isinstance(first.features[data.label_column_name], ClassLabel):
        if streaming:
            raise ValueError(
                f"--streaming needs the label column {data.label_column_name!r} to be a ClassLabel (the class "
                f"names cannot be collected from a stream); it is {first.features[data.label_column_name]}. Cast it "
                "first, or drop --streaming."
            )
        raw = raw.class_encode_column(data.label_column_name)
    if not streaming:
        for name, split in raw.items():
            if len(split) == 0:
                raise ValueError(f"The {name} split is empty: give it labelled examples.")
        if data.max_eval_samples is not None:
            for name in ("validation", "test"):
                if name in raw:
                    raw[name] = raw[name].select(range(min(data.max_eval_samples, len(raw[name]))))
    return raw


def rename_splits(raw: Any, names: dict[str, str]) -> Any:
    """`raw` with the split `old` of each `names` item (old -> new) renamed `new`; asking for a split the dataset
    does not have is refused (its default name may be missing: the caller then makes that split)."""
    if not isinstance(raw, DatasetDict | IterableDatasetDict):
        return raw
    for old, new in names.items():
        if old not in raw and old != new:
            raise ValueError(f"The dataset has no split {old!r} (it has {list(raw)}): pass another split name.")
    chosen = {new: raw[old] for old, new in names.items() if old in raw}
    others = {name: split for name, split in raw.items() if name not in chosen and name not in names}
    return type(raw)({**others, **chosen})


def class_index_map(data_labels: list[str], model_labels: list[str]) -> np.ndarray:
    """For each dataset class (its index), the model's index of the class of the same name; refuses names the model
    does not have (never reorders silently). Names compare as written, then ignoring case and ' ', '_', '-'."""
    if list(data_labels) == list(model_labels):
        return np.arange(len(data_labels))

    def key(name: str) -> str:
        return "".join(c for c in str(name).lower() if c not in " _-")

    exact = {str(name): i for i, name in enumerate(model_labels)}
    loose = {key(name): i for i, name in enumerate(model_labels)}
    mapping = [exact.get(str(name), loose.get(key(name), -1)) for name in data_labels]
    missing = [name for name, index in zip(data_labels, mapping) if index < 0]
    if missing:
        shown = ", ".join(map(str, model_labels[:10])) + (", ..." if len(model_labels) > 10 else "")
        raise ValueError(
            f"The data's classes {missing[:10]} are not among the model's {len(model_labels)} labels ({shown}): name "
            "the class folders (or ClassLabel names) as the model's config.json id2label does."
        )
    return np.asarray(mapping)
