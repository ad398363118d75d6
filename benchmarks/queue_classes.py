"""Queue mode at 1,000 / 10,000 / 21,843 classes: step time against plain `Trainer` (same run, same model) and the
queue's memory, on a head-dominated model (a one-layer ViT of width 64 whose classifier holds most parameters).

The float32 queue is used where it fits 1 GiB, else the bfloat16 one (`cskd_queue_dtype`), at the largest K
(at most 8) that fits; 21,843 (ImageNet-21k) takes bfloat16 and K = 1 (0.89 GiB).

    python benchmarks/queue_classes.py [--classes 1000 10000 21843] [--steps 12] [--rounds 2]
"""

import argparse
import json
import os
import statistics
import sys

import numpy as np
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

sys.path.insert(0, os.path.dirname(__file__))
from step_time import StepTimer  # noqa: E402

from hf_cskd import CSKDConfig, CSKDTrainer  # noqa: E402
from hf_cskd.targets.class_queue import queue_bytes  # noqa: E402

BATCH = 64
BUDGET = 1024**3
"""Queue memory per process the storage is chosen for (the issue's bound for 21,843 classes)."""


def model_for(num_labels: int) -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=128, num_labels=num_labels)  # fmt: skip
    return ViTForImageClassification(config)


def storage(num_labels: int) -> tuple[str, int]:
    """The queue dtype and the largest K (at most 8) that fit the budget."""
    for dtype in ("float32", "bfloat16"):
        size = min(8, BUDGET // queue_bytes(num_labels, 1, dtype))
        if size >= 1:
            return dtype, size
    raise ValueError(f"no queue fits {num_labels} classes")


def step_times(kind: str, num_labels: int, data: Dataset, steps: int) -> list[float]:
    common = dict(output_dir="/tmp/hf_cskd_bench", max_steps=steps, per_device_train_batch_size=BATCH,
                  save_strategy="no", report_to="none", disable_tqdm=True, logging_strategy="no", use_cpu=True,
                  dataloader_pin_memory=False, seed=0)  # fmt: skip
    timer = StepTimer()
    if kind == "trainer":
        trainer = Trainer(model=model_for(num_labels), args=TrainingArguments(**common), train_dataset=data,
                          callbacks=[timer])  # fmt: skip
    else:
        dtype, size = storage(num_labels)
        args = CSKDConfig(**common, cskd_mode="queue", cskd_queue_size=size, cskd_queue_dtype=dtype)
        trainer = CSKDTrainer(model=model_for(num_labels), args=args, train_dataset=data, callbacks=[timer])
    trainer.train()
    return timer.times[1:]  # the first step warms up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 10_000, 21_843])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for num_labels in args.classes:
        rng = np.random.default_rng(0)
        n = BATCH * args.steps
        data = Dataset.from_dict({"pixel_values": rng.normal(size=(n, 3, 8, 8)).astype(np.float32),
                                  "label": rng.integers(0, num_labels, n)}).with_format("torch")  # fmt: skip
        times = {"trainer": [], "queue": []}
        for _ in range(args.rounds):  # interleaved: drift hits both alike
            for kind in times:
                times[kind] += step_times(kind, num_labels, data, args.steps)
        median = {kind: statistics.median(values) for kind, values in times.items()}
        dtype, size = storage(num_labels)
        print(json.dumps({
            "classes": num_labels, "queue_dtype": dtype, "queue_size": size,
            "queue_mib": round(queue_bytes(num_labels, size, dtype) / 1024**2, 1),
            "head_share_of_parameters": round(1 - sum(p.numel() for n_, p in model_for(num_labels).named_parameters()
                                                      if "classifier" not in n_) / model_for(num_labels).num_parameters(), 3),
            "trainer_step_ms": round(1000 * median["trainer"], 1), "queue_step_ms": round(1000 * median["queue"], 1),
            "queue_over_trainer": round(median["queue"] / median["trainer"], 2), "cpu_cores": os.cpu_count(),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
