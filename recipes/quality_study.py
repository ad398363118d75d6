#!/usr/bin/env python
"""Does CS-KD beat cross-entropy and label smoothing here, and at equal compute? Several seeds, paired.

Real data, offline, on 2 CPU cores: the embedded scikit-learn digits (recipes/data/digits), with
only `--per_class` training images per class so that regularization matters (with all 1,297
images every method is near its ceiling). Per seed: a new random subset of the train split for
training, another disjoint one for validation (used only to fit the temperature), and the
untouched 500-image test split for every number reported. Same seed = same subset and the same
initialization for every arm. Every arm runs through `CSKDTrainer` (`cskd_lambda=0` for the
baselines).

Regimes (`--regime`):
- `scratch-cnn`: the paper's CIFAR ResNet (BatchNorm) narrowed to widths 32-64-128, from scratch;
  SGD Nesterov lr 0.05, weight decay 5e-4, batch 32, 50 warm-up steps then cosine, ±1 px shifts.
- `scratch-vit`: a 4-layer ViT (d = 64, 2x2 patches), from scratch; AdamW lr 1e-3, weight decay
  0.05, batch 32, 50 warm-up steps then cosine, ±1 px shifts.

Arms: cross-entropy, label smoothing 0.1, CS-KD in paper mode (pairs) and in queue mode, and the
two baselines at 1.35x the epochs (the measured cost of a paper-mode step: equal compute).
Results are appended to `results/<regime>.jsonl` as each run ends: an interrupted study resumes
where it stopped. The report replaces the regime's section of RESULTS.md.

    python recipes/quality_study.py --regime scratch-cnn          # ~25 min on 2 CPU cores
    python recipes/quality_study.py --regime scratch-vit
    python recipes/quality_study.py --regime scratch-cnn --seeds 2 --epochs 5 --results /tmp/r.jsonl --output /tmp/r.md
"""

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import ViTConfig, ViTForImageClassification

from hf_cskd import CifarResNetConfig, CifarResNetForImageClassification, CSKDConfig, CSKDTrainer
from hf_cskd.calibration import calibration_metrics
from hf_cskd.temperature_scaling import fit_temperature

DIGITS = Path(__file__).parent / "data" / "digits"
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
SENSITIVITY = [(1.0, 1.0), (1.0, 8.0), (0.5, 4.0), (2.0, 4.0)]  # (λ, T) of paper mode; (1, 4) is the main arm
REGIMES = {  # name -> (title, model and optimizer)
    "scratch-cnn": ("a small ResNet trained from scratch", "the paper's CIFAR ResNet with BatchNorm, narrowed to "
                    "widths 32-64-128 with one BasicBlock per stage, trained from scratch with SGD Nesterov lr 0.05, "
                    "weight decay 5e-4"),
    "scratch-vit": ("a small ViT trained from scratch", "a 4-layer ViT (d = 64, 4 heads, 2x2 patches), trained from "
                    "scratch with AdamW lr 1e-3, weight decay 0.05"),
}  # fmt: skip
NOTES_MARKER = "<!-- notes: kept when the tables above are regenerated -->"


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
        test = trainer.predict(ShiftedDigits(test_x, test_y, shift=False))
    temperature = fit_temperature(val.predictions, val.label_ids)
    return {
        **job,
        "train_seconds": round(seconds, 1),
        "temperature_fit": temperature,
        "raw": calibration_metrics(test.predictions, test.label_ids),
        "scaled": calibration_metrics(test.predictions / temperature, test.label_ids),
    }


def make_jobs(args: argparse.Namespace) -> list[dict]:
    common = {"regime": args.regime, "per_class": args.per_class, "val_per_class": args.val_per_class}

    def job(group: str, method: str, seed: int, lam: float, temperature: float = 4.0, label_smoothing: float = 0.0,
            mode: str = "pairs", epochs: float = 1.0) -> dict:  # fmt: skip
        return {**common, "group": group, "method": method, "seed": seed, "lambda": lam, "temperature": temperature,
                "label_smoothing": label_smoothing, "mode": mode, "epochs": round(args.epochs * epochs, 2)}  # fmt: skip

    jobs = [job("main", name, seed, **{"lam": arm["lambda"], **{k: v for k, v in arm.items() if k != "lambda"}})
            for seed in range(args.seeds) for name, arm in ARMS.items()]  # fmt: skip
    jobs += [job("sensitivity", f"CS-KD pairs (T={t:g}, λ={lam:g})", seed, lam, t)
             for seed in range(args.sensitivity_seeds) for lam, t in SENSITIVITY]  # fmt: skip
    return jobs


def job_key(job: dict) -> tuple:
    return tuple(job[k] for k in ("regime", "group", "method", "seed", "per_class", "val_per_class", "epochs"))


# ---- report ---------------------------------------------------------------------------------

METRICS = {  # column -> (value of a run, scale, digits)
    "error %": (lambda r: 1 - r["raw"]["accuracy"], 100, 2),
    "ECE %": (lambda r: r["raw"]["ece"], 100, 2),
    "NLL": (lambda r: r["raw"]["nll"], 1, 3),
    "ECE % (TS)": (lambda r: r["scaled"]["ece"], 100, 2),
    "NLL (TS)": (lambda r: r["scaled"]["nll"], 1, 3),
}


def table_head(title: str, columns: list[str]) -> list[str]:
    return ["", title, "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [scale * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def paired(runs: list[dict], baseline: list[dict], value, scale: float, digits: int) -> str:
    """Mean paired difference to the baseline ± its standard error, and the seeds where the arm is lower."""
    by_seed = {r["seed"]: value(r) for r in baseline}
    diffs = [scale * (value(r) - by_seed[r["seed"]]) for r in runs if r["seed"] in by_seed]
    if not diffs:
        return "-"
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    lower = sum(d < 0 for d in diffs)
    return f"{statistics.mean(diffs):+.{digits}f} ± {se:.{digits}f} ({lower}/{len(diffs)} lower)"


def report(results: list[dict], args: argparse.Namespace, command: str, minutes: float) -> str:
    main = [r for r in results if r["group"] == "main"]
    by_arm = {name: sorted((r for r in main if r["method"] == name), key=lambda r: r["seed"]) for name in ARMS}
    by_arm = {name: runs for name, runs in by_arm.items() if runs}
    seeds = max((len(runs) for runs in by_arm.values()), default=0)
    lines = [
        f"## Regime `{args.regime}`: {REGIMES[args.regime][0]}",
        "",
        f"Produced by `{command}` ({minutes:.1f} min of runs on {os.cpu_count()} CPU cores; hf-cskd `CSKDTrainer`).",
        "",
        f"Data: scikit-learn digits (real 8x8 handwritten digits), {args.per_class} training images per class "
        f"(a new random subset per seed), {args.val_per_class} per class held out from the train split to fit the "
        f"temperature, and the untouched 500-image test split for every number below. Model: {REGIMES[args.regime][1]}; "
        f"batch 32, 50 warm-up steps then cosine, {args.epochs} epochs (the `{PAIR_STEP_COST}x` arms: "
        f"{round(args.epochs * PAIR_STEP_COST, 2)}), ±1 px random shifts; T = 4, λ = 1 for CS-KD; ECE with 15 "
        "equal-width bins. Raw = the trained model; TS = after temperature scaling fitted on the validation subset.",
        *table_head(f"### Mean ± std over {seeds} seeds (test split)", ["arm", *METRICS, "fitted T", "train s"]),
    ]
    for name, runs in by_arm.items():
        cells = [mean_std([value(r) for r in runs], scale, digits) for value, scale, digits in METRICS.values()]
        cells += [mean_std([r["temperature_fit"] for r in runs]), mean_std([r["train_seconds"] for r in runs], 1, 1)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += table_head(
        f"### Paired difference to {BASELINE} (same seed): mean ± standard error, and seeds where the arm is lower",
        ["arm", *METRICS],
    )
    for name, runs in by_arm.items():
        if name != BASELINE and BASELINE in by_arm:
            cells = [paired(runs, by_arm[BASELINE], value, scale, digits) for value, scale, digits in METRICS.values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if {"CS-KD pairs", "CS-KD queue", BASELINE} <= set(by_arm):
        lines += ["", "Queue mode's gain over cross-entropy as a share of paper mode's (means over seeds):"]
        for label, value in (("raw", lambda r: 1 - r["raw"]["accuracy"]), ("after TS", lambda r: r["scaled"]["nll"])):
            base = statistics.mean(value(r) for r in by_arm[BASELINE])
            gains = [base - statistics.mean(value(r) for r in by_arm[arm]) for arm in ("CS-KD pairs", "CS-KD queue")]
            what = "error" if label == "raw" else "NLL after TS"
            share = f"{gains[1] / gains[0]:.2f}" if gains[0] > 0 else "n/a (paper mode did not gain)"
            lines.append(f"- {what}: paper gain {gains[0] * (100 if label == 'raw' else 1):.3f}, queue gain "
                         f"{gains[1] * (100 if label == 'raw' else 1):.3f}, share {share}")  # fmt: skip
    lines += table_head("### Per-seed numbers (test split)", ["arm", "seed", *METRICS, "T", "train s"])
    for name, runs in by_arm.items():
        for r in runs:
            cells = [f"{scale * value(r):.{digits}f}" for value, scale, digits in METRICS.values()]
            lines.append(f"| {name} | {r['seed']} | " + " | ".join(cells) + f" | {r['temperature_fit']:.2f} | "
                         f"{r['train_seconds']} |")  # fmt: skip
    sensitivity = [r for r in results if r["group"] == "sensitivity"]
    if sensitivity:
        sensitivity += [r for r in by_arm.get("CS-KD pairs", []) if r["seed"] < args.sensitivity_seeds]
        lines += table_head(
            f"### Sensitivity of paper-mode CS-KD to T and λ: mean ± std over {args.sensitivity_seeds} seeds",
            ["λ", "T", *METRICS],
        )
        for lam, temperature in sorted({(r["lambda"], r["temperature"]) for r in sensitivity}):
            runs = [r for r in sensitivity if (r["lambda"], r["temperature"]) == (lam, temperature)]
            cells = [mean_std([value(r) for r in runs], scale, digits) for value, scale, digits in METRICS.values()]
            lines.append(f"| {lam} | {temperature} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def replace_section(text: str, regime: str, section: str) -> str:
    """Put the regime's section between its markers, keeping other regimes' sections and the notes."""
    begin, end = f"<!-- begin {regime} -->", f"<!-- end {regime} -->"
    block = f"{begin}\n{section}{end}\n"
    if begin in text:
        head, _, rest = text.partition(begin)
        return head + block + "\n" + rest.partition(end)[2].lstrip("\n")
    head, marker, notes = text.partition(NOTES_MARKER)
    if not head.strip():
        head = "# Quality study: CS-KD vs cross-entropy vs label smoothing\n\n"
    return head.rstrip("\n") + "\n\n" + block + ("\n" + marker + notes if marker else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=list(REGIMES), default="scratch-cnn")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sensitivity_seeds", type=int, default=3)
    parser.add_argument("--per_class", type=int, default=30)
    parser.add_argument("--val_per_class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", default=None, help="JSON lines of finished runs (default results/<regime>.jsonl)")
    parser.add_argument("--output", default="RESULTS.md")
    args = parser.parse_args()
    results_path = Path(args.results or f"results/{args.regime}.jsonl")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.is_file() else []
    jobs = make_jobs(args)
    wanted = {job_key(job) for job in jobs}
    results = [r for r in done if job_key(r) in wanted]
    finished = {job_key(r) for r in results}
    todo = [job for job in jobs if job_key(job) not in finished]
    print(f"{len(jobs)} runs: {len(results)} already in {results_path}, {len(todo)} to go")
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool, results_path.open("a") as log:
        progress = tqdm(pool.imap_unordered(run, todo), total=len(todo), desc=args.regime, unit="run")
        for result in progress:  # tqdm's estimate of the remaining time is the study's
            log.write(json.dumps(result) + "\n")
            log.flush()
            results.append(result)
            progress.write(f"{result['method']} seed {result['seed']}: error {100 * (1 - result['raw']['accuracy']):.2f}% "
                           f"ECE {100 * result['raw']['ece']:.2f}% -> TS {100 * result['scaled']['ece']:.2f}%")  # fmt: skip
    minutes = sum(r["train_seconds"] for r in results) / 60 / max(args.workers, 1)
    command = "python recipes/quality_study.py" + "".join(
        f" --{k} {v}" for k, v in vars(args).items() if v != parser.get_default(k)
    )
    output = Path(args.output)
    text = output.read_text() if output.is_file() else ""
    output.write_text(replace_section(text, args.regime, report(results, args, command, minutes)))
    print(f"wrote the {args.regime} section of {output} ({(time.perf_counter() - start) / 60:.1f} min this time)")


if __name__ == "__main__":
    main()
