"""Train a tiny ViT with CSKDTrainer under torchrun on one engine and print, from rank 0, one JSON line: the class
that wraps the model (the engine really used), the world size, the logged losses and a checksum of the weights.

    torchrun --nproc_per_node 2 tests/scripts/engine_probe.py ENGINE MODE OUTPUT_DIR [--resume CHECKPOINT] [--bf16]

ENGINE: ddp, fsdp2, deepspeed_zero2 or deepspeed_zero3 (DeepSpeed, `use_cpu=True`: without it each rank trains alone).
accelerate 1.16 turns an FSDP configuration into DDP on CPU without a word (its state switches to FSDP only for GPU-type
backends); `force_fsdp_on_cpu` below is a TEST-ONLY shim that makes FSDP2 run for real on CPU (docs/distributed.md
explains the upstream limitation). MODE: features joined by "+": `pairs` or `queue` (the target source), then any of
`mixup` (Mixup, α = 0.4) and one teacher: `teacher` (a frozen ViT's term, built before the arguments),
`teacher_pretrained` (the same teacher loaded by `from_pretrained` after the arguments, as the main job does) or
`teacher_convnext` (a teacher of another family than the student). E.g. `pairs+mixup+teacher_pretrained`.
"""

import json
import os
import sys
from pathlib import Path

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import AutoModelForImageClassification, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import deepspeed_config, make_image_dataset, make_vit  # noqa: E402

from hf_cskd import ClassPairedDataset, CSKDConfig, CSKDTrainer  # noqa: E402


def force_fsdp_on_cpu() -> None:
    """TEST-ONLY: after `AcceleratorState.__init__`, an FSDP plugin on a multi-CPU run makes the state FSDP and gives
    the plugin the run's mixed precision (the two steps accelerate 1.16 takes on GPUs, state.py); without this it
    silently trains such a run as DDP."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":  # else bf16 would be silently off: the plugin's policy stays None
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


class StepCounter(TrainerCallback):
    """Optimizer steps this process ran (a resumed run runs only those after its checkpoint)."""

    count = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.count += 1


def make_convnext():
    """A teacher of another family than the student (ViT): the FSDP config's layer class is not in it."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    torch.manual_seed(7)
    config = ConvNextConfig(num_channels=1, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3,
                            image_size=8)  # fmt: skip
    return ConvNextForImageClassification(config)


def teacher_held(trainer: CSKDTrainer) -> dict:
    """What of the teacher this process holds: its wrapper, parameter dtype, and elements (of a shard: ds_tensor)."""
    parameters = list(trainer.accelerator.unwrap_model(trainer.teacher_model).parameters())

    def here(p: torch.Tensor) -> int:  # a ZeRO-3 shard (ds_tensor) or an FSDP2 one (a DTensor's local part)
        local = p.ds_tensor if hasattr(p, "ds_tensor") else p.to_local() if hasattr(p, "to_local") else p
        return local.numel()

    return {"wrapped": type(trainer.teacher_model).__name__, "dtype": str(parameters[0].dtype),
            "elements_here": sum(here(p) for p in parameters),
            "elements": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in parameters)}  # fmt: skip


def main() -> None:
    engine, mode, output_dir = sys.argv[1:4]
    source, *features = mode.split("+")
    assert source in ("pairs", "queue"), mode
    assert set(features) <= {"mixup", "teacher", "teacher_pretrained", "teacher_convnext"}, mode
    resume = sys.argv[sys.argv.index("--resume") + 1] if "--resume" in sys.argv else None
    options = {}
    if "teacher_pretrained" in features:  # the same teacher as "teacher", saved before the arguments exist
        saved_teacher = Path(output_dir) / f"teacher-{os.environ.get('LOCAL_RANK', '0')}"
        make_vit(seed=7).save_pretrained(saved_teacher)
    if engine == "fsdp2":
        force_fsdp_on_cpu()
        options = dict(fsdp="full_shard", fsdp_config={"fsdp_version": 2, "state_dict_type": "FULL_STATE_DICT",
                                                       "transformer_layer_cls_to_wrap": ["ViTLayer"],
                                                       "reshard_after_forward": True})  # fmt: skip
    elif engine.startswith("deepspeed_zero"):
        options = dict(deepspeed=deepspeed_config(stage=int(engine[-1])))
    args = CSKDConfig(
        output_dir=output_dir, per_device_train_batch_size=4, learning_rate=1e-2, max_steps=6, logging_steps=1,
        save_strategy="steps", save_steps=3, report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0, cskd_mode=source, cskd_queue_size=2,
        mixup_alpha=0.4 if "mixup" in features else 0.0, bf16="--bf16" in sys.argv,
        ddp_find_unused_parameters=False, **options,
    )  # fmt: skip
    data = make_image_dataset(per_class=16)
    teacher = make_vit(seed=7) if "teacher" in features else make_convnext() if "teacher_convnext" in features else None
    if "teacher_pretrained" in features:  # the main job's order: after the arguments (ZeRO-3 init is then active)
        teacher = AutoModelForImageClassification.from_pretrained(saved_teacher)
    steps = StepCounter()
    student = make_vit(seed=1)
    computed_in = set()  # the dtypes the head computed in while training: bf16 when mixed precision is in effect
    student.classifier.register_forward_hook(lambda module, inputs, output: computed_in.add(str(output.dtype)))
    teacher_computed_in = set()
    if teacher is not None:
        teacher.classifier.register_forward_hook(lambda m, inputs, output: teacher_computed_in.add(str(output.dtype)))
    trainer = CSKDTrainer(model=student, args=args, train_dataset=ClassPairedDataset(data) if source == "pairs"
                          else data, teacher_model=teacher, callbacks=[steps])  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # FULL_STATE_DICT under FSDP: one safetensors file a single process loads
    wrapped = type(trainer.model_wrapped).__name__
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    engine_or_model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model  # ZeRO-3 gathers
    if trainer.is_world_process_zero():
        weights = trainer.accelerator.get_state_dict(engine_or_model)
        print("RESULT " + json.dumps({
            "wrapped": wrapped, "fsdp": trainer.is_fsdp_enabled, "deepspeed": trainer.is_deepspeed_enabled,
            "world_size": args.world_size, "losses": losses, "steps_run": steps.count,
            "checksum": float(sum(v.double().abs().sum() for v in weights.values())),
            "teacher": None if trainer.teacher_model is None else teacher_held(trainer),
            "mixed_precision": trainer.accelerator.mixed_precision,
            "student_dtype": str(next(trainer.model_wrapped.parameters()).dtype), "computed_in": sorted(computed_in),
            "teacher_computed_in": sorted(teacher_computed_in),
            "student_fsdp_units": [type(m).__name__ for m in trainer.model.modules() if isinstance(m, FSDPModule)],
        }), flush=True)  # fmt: skip
    else:
        trainer.accelerator.get_state_dict(engine_or_model)  # a collective under FSDP: every rank takes part
    trainer.accelerator.wait_for_everyone()  # both ranks reach the teardown together (a rank once hung there)
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
