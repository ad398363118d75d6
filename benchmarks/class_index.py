"""Time to build the class index of a 1,000,000-row label column (target: <= 1 s).

The dataset has an image column that must not be decoded, a `set_transform` that must not run,
and a shuffled indices mapping (as after `shuffle()`/`select()`), the slow case for Arrow reads.

    python benchmarks/class_index.py [--rows 1000000] [--classes 1000]
"""

import argparse
import json
import statistics
import time

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image

from hf_cskd import ClassPairedDataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    labels = np.random.default_rng(0).integers(0, args.classes, args.rows)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=args.classes)})
    data = Dataset.from_dict(
        {"image": [{"bytes": b"\x89PNG not decoded", "path": None}] * args.rows, "label": labels}, features=features
    )

    def forbidden(batch):
        raise AssertionError("building the class index must not run the transform")

    for name, dataset in (("contiguous", data), ("shuffled", data.shuffle(seed=0))):
        dataset.set_transform(forbidden)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            ClassPairedDataset(dataset, num_labels=args.classes)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"class index, {args.rows:,} rows, {args.classes} classes, {name}: median {median:.3f}s "
              f"(min {min(times):.3f}s) target <= 1 s: {'met' if median <= 1 else 'MISSED'}")  # fmt: skip
        print("JSON " + json.dumps({"benchmark": "class_index", "rows": args.rows, "layout": name,
                                    "median_s": round(median, 4), "min_s": round(min(times), 4)}))  # fmt: skip


if __name__ == "__main__":
    main()
