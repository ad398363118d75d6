"""What one process holds of a frozen teacher under each engine: a ViT-Base-sized teacher (86 M parameters, random
weights from its config) beside a small student, one CS-KD + teacher KD step on 2 processes.

Run under torchrun once per engine (on CPU when no GPU is visible: gloo, `use_cpu=True`) and compare the lines:

    torchrun --nproc_per_node 2 benchmarks/teacher_memory.py --engine ddp     # every process: the whole teacher
    torchrun --nproc_per_node 2 benchmarks/teacher_memory.py --engine zero3   # every process: its shard
    torchrun --nproc_per_node 2 benchmarks/teacher_memory.py --engine zero3 --bf16
    torchrun --nproc_per_node 2 benchmarks/teacher_memory.py --engine fsdp2   # every process: its shard

On CPU, FSDP2 needs the test-only shim of tests/scripts/engine_probe.py (accelerate 1.16 runs an FSDP config as DDP
on CPU without a word; docs/distributed.md); the script uses it only when no GPU is visible and says so.

Prints from each process one JSON line: the teacher's wrapper, dtype, parameter elements and bytes held here (a ZeRO-3
shard counts its `ds_tensor`, an FSDP2 one its DTensor's local part), and the whole teacher's. Parameter bytes, not
process RSS: on CPU the allocator's RSS hides a 170 MB difference in noise; the parameters are what sharding divides.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import ViTConfig, ViTForImageClassification

from hf_cskd import CSKDConfig, CSKDTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "scripts"))
from engine_probe import force_fsdp_on_cpu, teacher_held  # noqa: E402  (the test-only FSDP shim is used without a GPU)

LABELS = 10


def vit(hidden: int, layers: int, seed: int) -> ViTForImageClassification:
    config = ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                       num_labels=LABELS)  # fmt: skip
    torch.manual_seed(seed)
    return ViTForImageClassification(config)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["ddp", "zero2", "zero3", "fsdp2"], default="zero3")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    options = {}
    if args.engine == "fsdp2":
        if not torch.cuda.is_available():
            force_fsdp_on_cpu()
            print("no GPU: FSDP forced on CPU by the test-only shim (tests/scripts/engine_probe.py)", file=sys.stderr)
        options = dict(fsdp="full_shard", fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["ViTLayer"],
                                                       "reshard_after_forward": True})  # fmt: skip
    elif args.engine != "ddp":
        zero = {"stage": int(args.engine[-1])}
        options["deepspeed"] = {"zero_optimization": zero, "zero_allow_untested_optimizer": True,
                                "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                "gradient_clipping": "auto", "bf16": {"enabled": "auto"}}  # fmt: skip
    output = tempfile.mkdtemp()
    config = CSKDConfig(output_dir=output, per_device_train_batch_size=4, max_steps=1, report_to="none",
                        use_cpu=not torch.cuda.is_available(), bf16=args.bf16, save_strategy="no", disable_tqdm=True,
                        cskd_mode="queue", ddp_find_unused_parameters=False, **options)  # fmt: skip
    teacher = vit(768, 12, seed=1)  # ViT-Base's width and depth
    rng = np.random.default_rng(0)
    data = Dataset.from_dict({"pixel_values": rng.normal(size=(32, 3, 32, 32)).astype(np.float32).tolist(),
                              "label": (np.arange(32) % LABELS).tolist()})  # fmt: skip
    trainer = CSKDTrainer(model=vit(64, 1, seed=0), args=config, train_dataset=data, teacher_model=teacher)
    trainer.train()
    held = teacher_held(trainer)  # counted as the engine tests count it
    size = next(trainer.accelerator.unwrap_model(trainer.teacher_model).parameters()).element_size()
    print(json.dumps({
        "engine": args.engine, "bf16": args.bf16, "rank": int(os.environ.get("RANK", 0)),
        "world_size": config.world_size, "teacher_wrapped": held["wrapped"], "teacher_dtype": held["dtype"],
        "elements_here": held["elements_here"], "elements": held["elements"],
        "mib_here": round(held["elements_here"] * size / 2**20, 1), "mib_whole": round(held["elements"] * size / 2**20, 1),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
