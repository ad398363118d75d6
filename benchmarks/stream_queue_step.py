"""Queue-mode step time on a stream against the same data map-style, plain `Trainer` measured in the same run.

A stream's labels cannot be checked up front; they are checked on the host, in the collator, so a step on a stream
does not wait for the device (before: a label check on the device every step, one sync each). On a CPU a sync
costs nothing, so there this measures that the host-side check costs nothing either; on a GPU it measures the sync
that is gone.

    python benchmarks/stream_queue_step.py [--steps 40] [--rounds 3] [--device cpu|cuda]
"""

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTConfig, ViTForImageClassification

from hf_cskd import CSKDConfig, CSKDTrainer


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, from a ready batch (`on_step_begin`) to its end."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)


def data(rows: int, classes: int) -> Dataset:
    rng = np.random.default_rng(0)
    features = Features({"pixel_values": Sequence(Sequence(Sequence(Value("float32")))),
                         "label": ClassLabel(num_classes=classes)})  # fmt: skip
    pixels = rng.normal(size=(rows, 3, 32, 32)).astype(np.float32)
    return Dataset.from_dict({"pixel_values": pixels, "label": rng.integers(0, classes, rows)}, features=features)


def median_step(kind: str, dataset: Dataset, steps: int, device: str) -> float:
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=4, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                       intermediate_size=768, num_labels=100)  # fmt: skip
    model = ViTForImageClassification(config)
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=64, max_steps=steps, report_to="none",
                  save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=device == "cpu",
                  dataloader_num_workers=0)  # fmt: skip
    timer = StepTimer()
    train = dataset.with_format("torch")
    if kind == "plain Trainer (map-style)":
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=train, callbacks=[timer])
    else:
        stream = kind.endswith("(stream)")
        args = CSKDConfig(**common, cskd_mode="queue")
        train = train.to_iterable_dataset() if stream else train
        trainer = CSKDTrainer(model=model, args=args, train_dataset=train, callbacks=[timer])
    trainer.train()
    return statistics.median(timer.times[3:])  # the first steps warm up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dataset = data(64 * args.steps, 100)
    kinds = ["plain Trainer (map-style)", "queue (map-style)", "queue (stream)"]
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):  # interleaved, so that the machine's load falls alike on each
        for kind in kinds:
            times[kind].append(median_step(kind, dataset, args.steps, args.device))
    best = {kind: min(values) for kind, values in times.items()}
    plain = best["plain Trainer (map-style)"]
    print("| path | step (s) | / plain Trainer |")
    print("|---|---|---|")
    for kind in kinds:
        print(f"| {kind} | {best[kind]:.4f} | {best[kind] / plain:.3f} |")
    ratio = best["queue (stream)"] / best["queue (map-style)"]
    print(f"queue step, stream / map-style: {ratio:.3f} (target <= 1.02: {'met' if ratio <= 1.02 else 'MISSED'})")
    print("JSON " + json.dumps({"benchmark": "stream_queue_step", "device": args.device,
                                **{kind: round(value, 5) for kind, value in best.items()},
                                "stream_over_map": round(ratio, 4)}))  # fmt: skip


if __name__ == "__main__":
    main()
