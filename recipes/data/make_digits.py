"""Build `digits/{train,test}.parquet`, the embedded default data of the recipes (run once; committed).

scikit-learn's `load_digits()`: 1,797 real 8x8 handwritten digits (BSD-3-Clause; the UCI "Optical
Recognition of Handwritten Digits" test set), stored as `datasets` parquet files with a PNG `image`
column and a `ClassLabel` `label` column, split once, stratified (train 1,297 / test 500), so they
load with `load_dataset("parquet", data_files=...)` exactly like a Hub dataset.

    pip install scikit-learn && python recipes/data/make_digits.py
"""

import io
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from sklearn.datasets import load_digits

TEST_SIZE = 500


def main() -> None:
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # 17 gray levels -> 8-bit
    rng = np.random.default_rng(0)
    is_test = np.zeros(len(images), dtype=bool)
    for label in range(10):  # stratified: 50 test images per class
        members = np.flatnonzero(digits.target == label)
        is_test[rng.choice(members, TEST_SIZE // 10, replace=False)] = True

    def png(array: np.ndarray) -> dict:
        buffer = io.BytesIO()
        PILImage.fromarray(array, mode="L").save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    folder = Path(__file__).with_name("digits")
    folder.mkdir(exist_ok=True)
    for split, members in (("train", ~is_test), ("test", is_test)):
        data = Dataset.from_dict(
            {"image": [png(image) for image in images[members]], "label": digits.target[members].tolist()},
            features=features,
        )
        path = folder / f"{split}.parquet"
        data.to_parquet(path)
        print(f"wrote {path} ({path.stat().st_size} bytes, {len(data)} images)")


if __name__ == "__main__":
    main()
