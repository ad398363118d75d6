#!/usr/bin/env python
"""`hf-cskd calibrate` on a classifier hf-cskd did not train: a small ViT trained by plain `transformers.Trainer`
on the embedded digits, written as imagefolders, then calibrated in one command.

    python recipes/calibrate_plain_trainer.py                 # ~2 min on 2 CPU cores
    python recipes/calibrate_plain_trainer.py --epochs 60     # longer training: a more over-confident model

The training half imports nothing from hf_cskd (it stands for any checkpoint of the Hub); the second half is
exactly `hf-cskd calibrate MODEL --validation_dir DIR --test_dir DIR --output_dir DIR`.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from datasets import Array3D, Features, Value, load_dataset
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification, ViTImageProcessorPil

DIGITS = Path(__file__).parent / "data" / "digits"


def write_digits_imagefolders(root: Path, validation_fraction: float = 0.2, seed: int = 0) -> dict[str, Path]:
    """The embedded digits as imagefolders `root/{train,validation,test}/<digit>/<i>.png` (validation: a stratified
    part of the training file; test: the test file)."""
    raw = load_dataset("parquet", data_files={s: str(DIGITS / f"{s}.parquet") for s in ("train", "test")})
    split = raw["train"].train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column="label")
    folders = {"train": split["train"], "validation": split["test"], "test": raw["test"]}
    names = raw["train"].features["label"].names
    for name, dataset in folders.items():
        for i, row in enumerate(dataset):
            folder = root / name / names[row["label"]]
            folder.mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / f"{i}.png")
    return {name: root / name for name in folders}


def train_with_plain_trainer(train_dir: Path, output_dir: Path, epochs: int, seed: int = 0, hidden: int = 64) -> Path:
    """A ViT trained from scratch by `transformers.Trainer` (cross-entropy, nothing of hf-cskd), saved with its
    processor: what a user would download from the Hub."""
    data = load_dataset("imagefolder", data_dir=str(train_dir), split="train")
    names = data.features["label"].names
    processor = ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=hidden, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=2 * hidden, num_labels=len(names),
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})  # fmt: skip
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)

    def transform(batch):
        pixels = processor([image.convert("RGB") for image in batch["image"]], return_tensors="np")["pixel_values"]
        return {"pixel_values": pixels, "labels": batch["label"]}

    # Processed once, not in every epoch. A fixed-shape `Array3D` column reads back as tensors quickly; a plain
    # nested-list column was slower to read than processing the images in every epoch.
    features = Features({"pixel_values": Array3D((3, 16, 16), "float32"), "labels": Value("int64")})
    data = data.map(transform, batched=True, remove_columns=data.column_names, features=features).with_format("torch")

    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, learning_rate=1e-3, per_device_train_batch_size=64,
        save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), seed=seed,
        remove_unused_columns=False, disable_tqdm=True, logging_strategy="no",
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=data).train()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/calibrate_plain_trainer")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    root = Path(args.output_dir)
    folders = write_digits_imagefolders(root / "digits")
    start = time.perf_counter()
    model = train_with_plain_trainer(folders["train"], root / "plain-vit", args.epochs)
    print(f"Trained by plain Trainer in {time.perf_counter() - start:.0f} s: {model}")
    command = ["hf-cskd", "calibrate", str(model), "--validation_dir", str(folders["validation"]),
               "--test_dir", str(folders["test"]), "--output_dir", str(root / "plain-vit-calibrated")]  # fmt: skip
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command)
    print(f"hf-cskd calibrate: {time.perf_counter() - start:.1f} s wall (exit {done.returncode})")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
