"""Training-step time and peak memory: plain `Trainer` vs `CSKDTrainer` vs the hand-written floor.

The floor is the official CS-KD step written by hand on the same model and batch: anchor forward
with gradient, pair forward without gradient, CE + KD, backward, gradient clipping, AdamW step.
The three variants run interleaved in one process (rounds of steps each), and the median step
time of each is reported with ratios; peak memory is measured per variant in a fresh subprocess
(peak RSS growth on CPU, `max_memory_allocated` on CUDA).

    python benchmarks/step_time.py [--model vit|cnn|all] [--steps 8] [--rounds 3] [--device cpu|cuda]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from hf_cskd import CSKDConfig, CSKDTrainer, class_wise_kd_loss

BATCH, NUM_LABELS, IMAGE = 64, 10, 32


def build_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "vit":  # the reference: 6 layers, d = 192, 32x32 images
        config = ViTConfig(image_size=IMAGE, patch_size=4, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                           intermediate_size=768, num_labels=NUM_LABELS)  # fmt: skip
        return ViTForImageClassification(config)
    config = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic",
                          num_labels=NUM_LABELS, downsample_in_first_stage=False)  # fmt: skip
    return ResNetForImageClassification(config)


def build_data(steps: int) -> Dataset:
    rng = np.random.default_rng(0)
    n = BATCH * steps
    pixels = rng.normal(size=(n, 3, IMAGE, IMAGE)).astype(np.float32)
    return Dataset.from_dict({"pixel_values": pixels, "label": rng.integers(0, NUM_LABELS, n)}).with_format("torch")


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self.last = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.last)


def trainer_steps(kind: str, model: torch.nn.Module, data: Dataset, steps: int, device: str) -> list[float]:
    common = dict(output_dir="/tmp/hf_cskd_bench", max_steps=steps, per_device_train_batch_size=BATCH,
                  save_strategy="no", report_to="none", disable_tqdm=True, logging_strategy="no",
                  use_cpu=device == "cpu", dataloader_pin_memory=False, seed=0)  # fmt: skip
    timer = StepTimer()
    if kind == "trainer":
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer])
    else:
        trainer = CSKDTrainer(model=model, args=CSKDConfig(**common), train_dataset=data, callbacks=[timer])
    trainer.train()
    return timer.times


def floor_steps(model: torch.nn.Module, data: Dataset, steps: int, device: str) -> list[float]:
    model.to(device).train()
    # The optimizer Trainer builds by default, so that only the step structure differs.
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(
        TrainingArguments(output_dir="/tmp/hf_cskd_bench", use_cpu=device == "cpu", report_to="none")
    )
    optimizer = optimizer_cls(model.parameters(), **optimizer_kwargs)
    generator = torch.Generator().manual_seed(0)
    columns = data[:]  # materialized tensors: the floor's data access costs nothing
    labels, pixels = columns["label"], columns["pixel_values"]
    times = []
    for step in range(steps):
        index = torch.randint(0, len(labels), (BATCH,), generator=generator)
        pair = torch.randint(0, len(labels), (BATCH,), generator=generator)  # the pairing's cost is data-side
        x, y, x_pair = pixels[index].to(device), labels[index].to(device), pixels[pair].to(device)
        start = time.perf_counter()  # like the Trainer timer: from a ready batch to the optimizer step
        logits = model(pixel_values=x).logits
        with torch.no_grad():
            pair_logits = model(pixel_values=x_pair).logits
        loss = F.cross_entropy(logits, y) + class_wise_kd_loss(logits, pair_logits)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def run_variant(kind: str, model_name: str, steps: int, device: str) -> list[float]:
    model, data = build_model(model_name), build_data(steps)
    if kind == "floor":
        return floor_steps(model, data, steps, device)
    return trainer_steps(kind, model, data, steps, device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def measure_peak(kind: str, model_name: str, steps: int, device: str) -> float:
    """Peak memory growth (MiB) of training, measured in this process: call it in a fresh one."""
    model, data = build_model(model_name), build_data(steps)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets the peak resident set size (VmHWM) to the current one
        baseline = _status_kib("VmRSS") * 1024
    if kind == "floor":
        floor_steps(model, data, steps, device)
    else:
        trainer_steps(kind, model, data, steps, device)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _status_kib("VmHWM") * 1024
    return (peak - baseline) / 2**20


def peak_memory(kind: str, model_name: str, steps: int, device: str) -> float:
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import step_time as b;"
        f"print(b.measure_peak({kind!r}, {model_name!r}, {steps}, {device!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["vit", "cnn", "all"], default="all")
    parser.add_argument("--steps", type=int, default=8, help="steps per variant per round (the first 2 are warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip_memory", action="store_true")
    args = parser.parse_args()
    kinds = ("trainer", "cskd", "floor")
    results = {}
    for model_name in (["vit", "cnn"] if args.model == "all" else [args.model]):
        times = {kind: [] for kind in kinds}
        for _ in range(args.rounds):  # interleaved, so drifts of the machine hit all variants alike
            for kind in kinds:
                times[kind] += run_variant(kind, model_name, args.steps, args.device)[2:]
        median = {kind: statistics.median(values) for kind, values in times.items()}
        row = {
            "model": model_name,
            "device": args.device,
            "batch": BATCH,
            "measured_steps": len(times["trainer"]),
            **{f"{kind}_step_s": round(median[kind], 4) for kind in kinds},
            "cskd_vs_trainer": round(median["cskd"] / median["trainer"], 3),
            "floor_vs_trainer": round(median["floor"] / median["trainer"], 3),
            "cskd_vs_floor": round(median["cskd"] / median["floor"], 3),
        }
        if not args.skip_memory:
            memory = {kind: peak_memory(kind, model_name, args.steps, args.device) for kind in kinds}
            row.update({f"{kind}_peak_mib": round(memory[kind], 1) for kind in kinds})
            row["cskd_vs_trainer_memory"] = round(memory["cskd"] / memory["trainer"], 3)
        results[model_name] = row
        print(f"\n{model_name}: step time (median of {row['measured_steps']} steps) on {args.device}, batch {BATCH}")
        print(f"  plain Trainer {median['trainer']:.4f}s | CSKDTrainer {median['cskd']:.4f}s | floor {median['floor']:.4f}s")
        print(f"  CSKDTrainer / Trainer = {row['cskd_vs_trainer']:.3f}   floor / Trainer = {row['floor_vs_trainer']:.3f}"
              f"   CSKDTrainer / floor = {row['cskd_vs_floor']:.3f}")  # fmt: skip
        if not args.skip_memory:
            print(f"  peak memory growth MiB: Trainer {row['trainer_peak_mib']} | CSKDTrainer {row['cskd_peak_mib']} | "
                  f"floor {row['floor_peak_mib']}   CSKDTrainer / Trainer = {row['cskd_vs_trainer_memory']:.3f}")  # fmt: skip
        print("JSON " + json.dumps(row))


if __name__ == "__main__":
    main()
