"""Training-step time and peak memory: plain `Trainer` vs `CSKDTrainer` (paper mode and queue mode) vs the floor.

The floor is the official CS-KD step written by hand on the same model and batch: anchor forward
with gradient, pair forward without gradient, CE + KD, backward, gradient clipping, AdamW step.
Two timings: full `train()` runs of the three variants interleaved in rounds (data loading
excluded by the step timer, as in the floor), and the three steps alternating one by one on one
fixed batch (the least noisy on a shared machine). Medians and ratios are reported; peak memory is measured per variant in a fresh subprocess
(peak RSS growth on CPU, `max_memory_allocated` on CUDA).

    python benchmarks/step_time.py [--model vit|cnn|all|vit-base] [--steps 8] [--rounds 3] [--device cpu|cuda] [--bf16]

`vit-base` (ViT-Base/16 at 224 px, from its config) with `--bf16` is the GPU check of benchmarks/gpu_check.sh.
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
from hf_cskd.targets.collator import EXAMPLE_ID_KEY

BATCH, NUM_LABELS = 64, 10
IMAGE = {"vit": 32, "cnn": 32, "vit-base": 224}
BF16 = os.environ.get("HF_CSKD_BENCH_BF16") == "1"  # set by --bf16, so that the fresh processes measure the same
KINDS = ("trainer", "cskd", "queue", "floor")


def build_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "vit":  # the reference: 6 layers, d = 192, 32x32 images
        config = ViTConfig(image_size=IMAGE[name], patch_size=4, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                           intermediate_size=768, num_labels=NUM_LABELS)  # fmt: skip
        return ViTForImageClassification(config)
    if name == "vit-base":  # ViT-Base/16 (86 M parameters), the architecture of google/vit-base-patch16-224
        return ViTForImageClassification(ViTConfig(image_size=IMAGE[name], num_labels=NUM_LABELS))
    config = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic",
                          num_labels=NUM_LABELS, downsample_in_first_stage=False)  # fmt: skip
    return ResNetForImageClassification(config)


def build_data(steps: int, model_name: str) -> Dataset:
    rng = np.random.default_rng(0)
    n = BATCH * steps
    size = IMAGE[model_name]
    pixels = rng.normal(size=(n, 3, size, size)).astype(np.float32)
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
                  use_cpu=device == "cpu", dataloader_pin_memory=False, seed=0, bf16=BF16)  # fmt: skip
    timer = StepTimer()
    if kind == "trainer":
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer])
    else:
        args = CSKDConfig(**common, cskd_mode="queue" if kind == "queue" else "pairs")
        trainer = CSKDTrainer(model=model, args=args, train_dataset=data, callbacks=[timer])
    trainer.train()
    return timer.times


def floor_forward_backward(
    model: torch.nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, pair_pixel_values: torch.Tensor
) -> None:
    """The official CS-KD step by hand: anchor forward, pair forward without gradient, CE + KD, backward."""
    with torch.autocast(pixel_values.device.type, dtype=torch.bfloat16, enabled=BF16):  # as Trainer's bf16
        logits = model(pixel_values=pixel_values).logits
        with torch.no_grad():
            pair_logits = model(pixel_values=pair_pixel_values).logits
    (F.cross_entropy(logits.float(), labels) + class_wise_kd_loss(logits.float(), pair_logits.float())).backward()


def default_optimizer(model: torch.nn.Module, device: str) -> torch.optim.Optimizer:
    """The optimizer Trainer builds by default, so that only the step structure differs."""
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(
        TrainingArguments(output_dir="/tmp/hf_cskd_bench", use_cpu=device == "cpu", report_to="none")
    )
    return optimizer_cls(model.parameters(), **optimizer_kwargs)


def floor_steps(model: torch.nn.Module, data: Dataset, steps: int, device: str) -> list[float]:
    model.to(device).train()
    optimizer = default_optimizer(model, device)
    generator = torch.Generator().manual_seed(0)
    columns = data[:]  # materialized tensors: the floor's data access costs nothing
    labels, pixels = columns["label"], columns["pixel_values"]
    times = []
    for step in range(steps):
        index = torch.randint(0, len(labels), (BATCH,), generator=generator)
        pair = torch.randint(0, len(labels), (BATCH,), generator=generator)  # the pairing's cost is data-side
        x, y, x_pair = pixels[index].to(device), labels[index].to(device), pixels[pair].to(device)
        start = time.perf_counter()  # like the Trainer timer: from a ready batch to the optimizer step
        floor_forward_backward(model, x, y, x_pair)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def interleaved_steps(model_name: str, steps: int, device: str) -> dict[str, list[float]]:
    """Each variant's step on the same fixed batch, alternating step by step (no data loading).

    Four copies of the model, each with the default `Trainer` optimizer. Plain: a plain
    `Trainer`'s `training_step` on the batch without pairs. CS-KD: `training_step` on the paired
    batch; queue: a queue-mode trainer's
    `training_step` on the same anchors with their example ids. Floor: written by hand. All
    then clip gradients and step the optimizer. Alternating single steps cancels drift best.
    """
    args = CSKDConfig(output_dir="/tmp/hf_cskd_bench", per_device_train_batch_size=BATCH, report_to="none",
                      use_cpu=device == "cpu", dataloader_pin_memory=False, seed=0, bf16=BF16)  # fmt: skip
    models = {kind: build_model(model_name).to(device).train() for kind in KINDS}
    optimizers = {kind: default_optimizer(model, device) for kind, model in models.items()}
    trainer = CSKDTrainer(model=models["cskd"], args=args, train_dataset=build_data(1, model_name))
    trainer.current_gradient_accumulation_steps = 1
    batch = next(iter(trainer.get_train_dataloader()))
    plain_batch = {k: v for k, v in batch.items() if not k.startswith("pair_")}
    queue_args = CSKDConfig(**{**args.to_dict(), "cskd_mode": "queue"})
    queue_trainer = CSKDTrainer(model=models["queue"], args=queue_args, train_dataset=build_data(1, model_name))
    queue_trainer.current_gradient_accumulation_steps = 1
    queue_batch = {**plain_batch, EXAMPLE_ID_KEY: torch.arange(BATCH, device=plain_batch["labels"].device)}
    plain_args = TrainingArguments(output_dir="/tmp/hf_cskd_bench", per_device_train_batch_size=BATCH, report_to="none",
                                   use_cpu=device == "cpu", dataloader_pin_memory=False, seed=0, bf16=BF16)  # fmt: skip
    plain_trainer = Trainer(model=models["trainer"], args=plain_args)
    plain_trainer.current_gradient_accumulation_steps = 1

    def trainer_step(kind: str) -> None:
        if kind == "cskd":
            trainer.training_step(models[kind], dict(batch))
        else:
            plain_trainer.training_step(models[kind], dict(plain_batch))

    def floor_step() -> None:
        floor_forward_backward(models["floor"], batch["pixel_values"], batch["labels"], batch["pair_pixel_values"])

    steps_by_kind = {
        "trainer": lambda: trainer_step("trainer"),
        "cskd": lambda: trainer_step("cskd"),
        "queue": lambda: queue_trainer.training_step(models["queue"], dict(queue_batch)),
        "floor": floor_step,
    }
    times = {kind: [] for kind in steps_by_kind}
    for _ in range(steps):
        for kind, run_step in steps_by_kind.items():
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=BF16):  # what accelerate's prepare would add
                run_step()
            torch.nn.utils.clip_grad_norm_(models[kind].parameters(), 1.0)
            optimizers[kind].step()
            optimizers[kind].zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            times[kind].append(time.perf_counter() - start)
    return {kind: values[2:] for kind, values in times.items()}


def run_variant(kind: str, model_name: str, steps: int, device: str) -> list[float]:
    model, data = build_model(model_name), build_data(steps, model_name)
    if kind == "floor":
        return floor_steps(model, data, steps, device)
    return trainer_steps(kind, model, data, steps, device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def measure_peak(kind: str, model_name: str, steps: int, device: str) -> float:
    """Peak memory growth (MiB) of training, measured in this process: call it in a fresh one."""
    model, data = build_model(model_name), build_data(steps, model_name)
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


def in_fresh_process(expression: str):
    """Evaluate `expression` (with this module as `b`) in a new Python process; return its JSON value."""
    code = f"import json, sys; sys.path.insert(0, 'benchmarks'); import step_time as b; print(json.dumps({expression}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_memory(kind: str, model_name: str, steps: int, device: str) -> float:
    return in_fresh_process(f"b.measure_peak({kind!r}, {model_name!r}, {steps}, {device!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["vit", "cnn", "all", "vit-base"], default="all")
    parser.add_argument("--steps", type=int, default=8, help="steps per variant per round (the first 2 are warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision in every variant (a GPU)")
    args = parser.parse_args()
    if args.bf16:  # read at import, here and in the fresh processes
        global BF16
        BF16, os.environ["HF_CSKD_BENCH_BF16"] = True, "1"
    kinds = KINDS
    results = {}
    for model_name in ["vit", "cnn"] if args.model == "all" else [args.model]:
        times = {kind: [] for kind in kinds}
        for _ in range(args.rounds):  # interleaved, so drifts of the machine hit all variants alike
            for kind in kinds:
                times[kind] += run_variant(kind, model_name, args.steps, args.device)[2:]
        median = {kind: statistics.median(values) for kind, values in times.items()}
        alternating = in_fresh_process(
            f"b.interleaved_steps({model_name!r}, {args.steps * args.rounds}, {args.device!r})"
        )
        alt = {kind: statistics.median(values) for kind, values in alternating.items()}
        row = {
            "model": model_name,
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPU cores",
            "bf16": BF16,
            "batch": BATCH,
            "measured_steps": len(times["trainer"]),
            **{f"{kind}_step_s": round(median[kind], 4) for kind in kinds},
            "cskd_vs_trainer": round(median["cskd"] / median["trainer"], 3),
            "floor_vs_trainer": round(median["floor"] / median["trainer"], 3),
            "cskd_vs_floor": round(median["cskd"] / median["floor"], 3),
            "queue_vs_trainer": round(median["queue"] / median["trainer"], 3),
            **{f"alternating_{kind}_step_s": round(alt[kind], 4) for kind in kinds},
            "alternating_cskd_vs_trainer": round(alt["cskd"] / alt["trainer"], 3),
            "alternating_floor_vs_trainer": round(alt["floor"] / alt["trainer"], 3),
            "alternating_cskd_vs_floor": round(alt["cskd"] / alt["floor"], 3),
            "alternating_queue_vs_trainer": round(alt["queue"] / alt["trainer"], 3),
        }
        if not args.skip_memory:
            memory = {kind: peak_memory(kind, model_name, args.steps, args.device) for kind in kinds}
            row.update({f"{kind}_peak_mib": round(memory[kind], 1) for kind in kinds})
            row["cskd_vs_trainer_memory"] = round(memory["cskd"] / memory["trainer"], 3)
            row["queue_vs_trainer_memory"] = round(memory["queue"] / memory["trainer"], 3)
        results[model_name] = row
        print(f"\n{model_name}: step time (median of {row['measured_steps']} steps) on {args.device}, batch {BATCH}")
        print(f"  plain Trainer {median['trainer']:.4f}s | CSKDTrainer {median['cskd']:.4f}s | queue mode "
              f"{median['queue']:.4f}s | floor {median['floor']:.4f}s")  # fmt: skip
        print(f"  CSKDTrainer / Trainer = {row['cskd_vs_trainer']:.3f}   floor / Trainer = {row['floor_vs_trainer']:.3f}"
              f"   CSKDTrainer / floor = {row['cskd_vs_floor']:.3f}   queue / Trainer = {row['queue_vs_trainer']:.3f}")  # fmt: skip
        print(
            f"  same batch, variants alternating step by step ({len(alternating['cskd'])} steps each): "
            f"Trainer {alt['trainer']:.4f}s | CSKDTrainer {alt['cskd']:.4f}s | queue {alt['queue']:.4f}s | "
            f"floor {alt['floor']:.4f}s"
        )
        print(
            f"  CSKDTrainer / Trainer = {row['alternating_cskd_vs_trainer']:.3f}   floor / Trainer = "
            f"{row['alternating_floor_vs_trainer']:.3f}   CSKDTrainer / floor = {row['alternating_cskd_vs_floor']:.3f}"
            f"   queue / Trainer = {row['alternating_queue_vs_trainer']:.3f}"
        )
        if not args.skip_memory:
            print(f"  peak memory growth MiB: Trainer {row['trainer_peak_mib']} | CSKDTrainer {row['cskd_peak_mib']} | "
                  f"queue {row['queue_peak_mib']} | floor {row['floor_peak_mib']}   CSKDTrainer / Trainer = "
                  f"{row['cskd_vs_trainer_memory']:.3f}   queue / Trainer = {row['queue_vs_trainer_memory']:.3f}")  # fmt: skip
        print("JSON " + json.dumps(row))


if __name__ == "__main__":
    main()
