"""A teacher beside CS-KD: Hinton's knowledge distillation from a frozen, larger or better-trained classifier.

The term is the same function as CS-KD's (`losses.class_wise_kd_loss`), with the teacher's logits
as the constant target: `T_t² · KL(softmax(teacher/T_t) ‖ softmax(student/T_t))`, batch mean. The
teacher only ever predicts: eval mode, no gradient, never a submodule of the student (so never in
its checkpoints or pushes), on the student's device and under the student's mixed precision.
"""

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


def label_names(model: nn.Module) -> list[str]:
    """The class names of a classifier, in output order (`config.id2label`; `LABEL_i` where none are given)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "num_labels", None) is None:
        raise ValueError(
            f"{type(model).__name__} has no `config.num_labels`: the teacher's and the student's label spaces cannot "
            "be compared. Use transformers classifiers (or give the model a config with `id2label`)."
        )
    names = getattr(config, "id2label", None) or {}
    return [str(names.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def check_same_label_space(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a teacher whose outputs are not the student's classes in the student's order: its KL term would
    teach the wrong class at every position."""
    mine, theirs = label_names(student), label_names(teacher)
    if mine == theirs:
        return
    if len(mine) != len(theirs):
        raise ValueError(
            f"The teacher predicts {len(theirs)} classes and the student {len(mine)}: distillation needs the same "
            "label space. Fine-tune the teacher on the student's dataset first (the recipe with --cskd_lambda 0)."
        )
    if sorted(mine) == sorted(theirs):
        raise ValueError(
            "The teacher predicts the student's classes in another order (teacher: "
            f"{theirs[:5]}{'...' if len(theirs) > 5 else ''}; student: {mine[:5]}{'...' if len(mine) > 5 else ''}). "
            "Train both with the same dataset's label order (id2label), or reorder the teacher's head."
        )
    differ = [(i, theirs[i], mine[i]) for i in range(len(mine)) if mine[i] != theirs[i]][:3]
    raise ValueError(
        "The teacher's classes are not the student's (index, teacher, student: "
        f"{', '.join(map(str, differ))}). Fine-tune the teacher on the student's dataset first."
    )


def freeze_teacher(teacher: nn.Module, device: torch.device | str) -> nn.Module:
    """The teacher in eval mode, without gradients, on `device` (its dtype as loaded)."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher.to(device)


def deepspeed_teacher(teacher: nn.Module, deepspeed_config: dict[str, Any], mixed_precision: str = "no") -> nn.Module:
    """The frozen teacher inside its own DeepSpeed engine, for inference only (as TRL prepares a reference model).

    Why: accelerate leaves mixed precision and ZeRO-3 sharding to DeepSpeed, so a bare teacher runs in the dtype it
    was loaded in, whole on every process, and a teacher that `from_pretrained` loaded while ZeRO-3 was configured
    arrives partitioned and cannot run outside an engine at all. Here it takes the student's precision and, under
    ZeRO-3, is sharded like the student; below ZeRO-3 it is not sharded (stage 0: nothing of it is trained). No
    optimizer, no scheduler; "auto" values the trainer fills only for the student are left to DeepSpeed.
    `mixed_precision` ("no", "fp16", "bf16": the accelerator's) is set here, since accelerate writes it into the
    DeepSpeed config only when it prepares the student, after the trainer is built."""
    import deepspeed  # only installed where a DeepSpeed config is given

    def settled(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: settled(item) for key, item in value.items() if item != "auto"}
        return value

    config = settled({k: v for k, v in copy.deepcopy(deepspeed_config).items() if k not in ("optimizer", "scheduler")})
    if mixed_precision in ("fp16", "bf16"):
        config[mixed_precision] = {**config.get(mixed_precision, {}), "enabled": True}
    if config.get("zero_optimization", {}).get("stage", 0) != 3:
        config["zero_optimization"] = {"stage": 0}
    partitioned = [p for p in teacher.parameters() if hasattr(p, "ds_id")]  # by ZeRO-3 init, while loading
    wanted = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    if wanted is not None and partitioned and partitioned[0].dtype != wanted:
        logger.warning(f"The teacher was partitioned by ZeRO-3 init while loading, in {partitioned[0].dtype}, which "
                       f"DeepSpeed cannot convert: it runs so beside a {mixed_precision} student. Give the DeepSpeed "
                       f'config "{mixed_precision}": {{"enabled": "auto"}} (init then partitions in {wanted}).')  # fmt: skip
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def fsdp2_teacher(teacher: nn.Module, accelerator: Any) -> nn.Module:
    """The frozen teacher sharded by FSDP2 like the student (accelerate's own preparation: the layer classes and the
    mixed-precision policy of the FSDP config), without `prepare`, which would put it in the checkpoints. A teacher
    of another family, without the config's layer class, is sharded as one unit. The plugin's wrap policy is left as
    it was, so the student is prepared by its own classes. Every unit reshards after its forward: no backward
    follows, so between steps each process holds only its shards."""
    from accelerate.utils import fsdp2_prepare_model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    policy, names = plugin.auto_wrap_policy, copy.copy(plugin.transformer_cls_names_to_wrap)
    try:
        teacher = fsdp2_prepare_model(accelerator, teacher)
    except ValueError as error:
        if "Could not find the transformer layer class" not in str(error):
            raise
        fully_shard(teacher, mp_policy=plugin.mixed_precision_policy or MixedPrecisionPolicy())
    finally:  # `set_auto_wrap_policy` binds the policy (and, for a config naming no layer class, the class names)
        # to the model it was given; the student is prepared later, by its own (not covered by a test)
        plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = policy, names
    teacher.set_reshard_after_forward(True)
    return teacher


@torch.no_grad()
def teacher_logits(
    teacher: nn.Module, inputs: dict[str, Any], autocast: Callable[[], AbstractContextManager] = nullcontext
) -> torch.Tensor:
    """The teacher's logits for a batch of model inputs (labels left out: the teacher computes no loss), under
    `autocast()` (the student's mixed precision)."""
    teacher.eval()  # a trainer may have switched every module it knows of back to train mode
    with autocast():
        outputs = teacher(**{k: v for k, v in inputs.items() if k not in ("labels", "label")})
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    return logits.detach()
