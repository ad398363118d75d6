"""Train a tiny ViT with CSKDTrainer under torchrun on one engine and print, from rank 0, one JSON line: the class
that wraps the model (the engine really used), the world size, the logged losses and a checksum of the weights.

    torchrun --nproc_per_node 2 tests/scripts/engine_probe.py ENGINE MODE OUTPUT_DIR [--resume CHECKPOINT]

ENGINE: ddp or fsdp2. accelerate 1.16 turns an FSDP configuration into DDP on CPU without a word (its state
switches to FSDP only for GPU-type backends); `force_fsdp_on_cpu` below is a TEST-ONLY shim that makes FSDP2 run
for real on CPU (docs/distributed.md explains the upstream limitation). MODE: pairs, queue or teacher (queue
mode plus a frozen teacher's term).
"""

import json
import sys
from pathlib import Path

from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_image_dataset, make_vit  # noqa: E402

from hf_cskd import ClassPairedDataset, CSKDConfig, CSKDTrainer  # noqa: E402


def force_fsdp_on_cpu() -> None:
    """TEST-ONLY: after `AcceleratorState.__init__`, an FSDP plugin on a multi-CPU run makes the state FSDP (as it
    does on GPUs); without this, accelerate 1.16 silently trains such a run as DDP."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


class StepCounter(TrainerCallback):
    """Optimizer steps this process ran (a resumed run runs only those after its checkpoint)."""

    count = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.count += 1


def main() -> None:
    engine, mode, output_dir = sys.argv[1:4]
    resume = sys.argv[sys.argv.index("--resume") + 1] if "--resume" in sys.argv else None
    options = {}
    if engine == "fsdp2":
        force_fsdp_on_cpu()
        options = dict(fsdp="full_shard", fsdp_config={"fsdp_version": 2, "state_dict_type": "FULL_STATE_DICT",
                                                       "transformer_layer_cls_to_wrap": ["ViTLayer"],
                                                       "reshard_after_forward": True})  # fmt: skip
    args = CSKDConfig(
        output_dir=output_dir, per_device_train_batch_size=4, learning_rate=1e-2, max_steps=6, logging_steps=1,
        save_strategy="steps", save_steps=3, report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0, cskd_mode="pairs" if mode == "pairs" else "queue", cskd_queue_size=2,
        ddp_find_unused_parameters=False, **options,
    )  # fmt: skip
    data = make_image_dataset(per_class=16)
    teacher = make_vit(seed=7) if mode == "teacher" else None
    steps = StepCounter()
    trainer = CSKDTrainer(model=make_vit(seed=1), args=args, train_dataset=ClassPairedDataset(data) if mode == "pairs"
                          else data, teacher_model=teacher, callbacks=[steps])  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # FULL_STATE_DICT under FSDP: one safetensors file a single process loads
    wrapped = type(trainer.model_wrapped).__name__
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    if trainer.is_world_process_zero():
        weights = trainer.accelerator.get_state_dict(trainer.model)
        print("RESULT " + json.dumps({
            "wrapped": wrapped, "fsdp": trainer.is_fsdp_enabled, "deepspeed": trainer.is_deepspeed_enabled,
            "world_size": args.world_size, "losses": losses, "steps_run": steps.count,
            "checksum": float(sum(v.double().abs().sum() for v in weights.values())),
        }), flush=True)  # fmt: skip
    else:
        trainer.accelerator.get_state_dict(trainer.model)  # a collective under FSDP: every rank takes part
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
