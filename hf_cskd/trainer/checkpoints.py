"""Checkpoints in `Trainer`'s own format: which are complete, the CS-KD state they add, and weights reloaded by name.

`Trainer` writes its training state (`optimizer.pt`, `scheduler.pt`, `rng_state*.pth`, ...) and
loads it back with `torch.load(..., weights_only=True)`; either trainer resumes the other's
checkpoints. Queue mode adds one file, `cskd_targets.safetensors`.
"""

import json
import logging as stdlib_logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, logging

from ..calibration.temperature import save_calibration

logger = logging.get_logger(__name__)

TARGETS_NAME = "cskd_targets.safetensors"
"""The target source's state (the queue) in each checkpoint."""


def save_targets(state: dict[str, torch.Tensor], folder: str) -> None:
    if state:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, os.path.join(folder, TARGETS_NAME))


def load_targets(folder: str) -> dict[str, torch.Tensor] | None:
    """The saved target-source state, or None (with a warning) for a checkpoint without one (plain `Trainer`'s)."""
    path = os.path.join(folder, TARGETS_NAME)
    if os.path.isfile(path):
        return load_file(path)
    logger.warning(f"{folder} holds no {TARGETS_NAME} (a plain Trainer checkpoint?): the CS-KD queue restarts empty.")
    return None


def checkpoint_is_complete(folder: str) -> bool:
    """A checkpoint is complete once `trainer_state.json`, which `Trainer` writes last, reads back."""
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME)) as file:
            json.load(file)
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The complete `checkpoint-N` folder with the highest N; incomplete ones are skipped with a warning."""
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = sorted(
        (int(match.group(1)), os.path.join(output_dir, name))
        for name in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
        if (match := pattern.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, folder in reversed(found):
        if checkpoint_is_complete(folder):
            return folder
        logger.warning(f"Skipping {folder}: it is incomplete (the run was probably stopped while saving it).")
    return None


SAVE_HINT = "Runs write checkpoints only with save_strategy 'steps' or 'epoch' (the main job: --save_strategy epoch)."


def complete_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | bool | None:
    """The checkpoint to resume from: `True` means the last *complete* one in `output_dir`; a path that is not a
    complete checkpoint is refused with what it is (missing, an output folder, a checkpoint stopped while saving,
    no checkpoint at all) and the fix. Anything else passes unchanged."""
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() == "true":
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise ValueError(f"No complete checkpoint found in {output_dir} to resume from. {SAVE_HINT}")
        return last
    if isinstance(resume_from_checkpoint, str) and not checkpoint_is_complete(resume_from_checkpoint):
        raise ValueError(not_a_checkpoint(resume_from_checkpoint))
    return resume_from_checkpoint


def not_a_checkpoint(folder: str) -> str:
    """Why `folder` cannot be resumed from, and what to pass instead."""
    if not os.path.isdir(folder):
        return f"{folder}: no such folder to resume from."
    last = last_complete_checkpoint(folder)
    if last is not None:
        return (f"{folder} is an output folder, not a checkpoint: resume from {last} (its last complete checkpoint), "
                "or pass resume_from_checkpoint=True with that output_dir.")  # fmt: skip
    written = (TRAINER_STATE_NAME, "optimizer", "rng_state", "scheduler")
    named = re.match(rf"^{PREFIX_CHECKPOINT_DIR}-\d+$", os.path.basename(os.path.normpath(folder)))
    if named or any(name.startswith(written) for name in os.listdir(folder)):
        last = last_complete_checkpoint(os.path.dirname(os.path.abspath(folder)))
        return (f"{folder} is not a complete checkpoint (no readable {TRAINER_STATE_NAME}: the run was stopped while "
                f"saving it). Resume from {last or 'an earlier checkpoint'} instead, or pass "
                "resume_from_checkpoint=True to pick the last complete one.")  # fmt: skip
    return f"{folder} holds no checkpoint (no {TRAINER_STATE_NAME}, no checkpoint-N folder). {SAVE_HINT}"


def saved_weight_names(folder: str) -> set[str] | None:
    """The tensor names of a folder's safetensors weights, one file or sharded; None when it has neither."""
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index) as file:
            return set(json.load(file)["weight_map"])
    path = os.path.join(folder, SAFE_WEIGHTS_NAME)
    if not os.path.isfile(path):
        return None
    with safe_open(path, framework="pt") as file:
        return set(file.keys())


def has_renamed_weights(model: nn.Module, folder: str | None) -> bool:
    """Whether a checkpoint folder holds weights under other names than `model`'s (or its PEFT base model's)."""
    base = getattr(model, "get_base_model", lambda: model)()
    names = saved_weight_names(folder) if folder else None
    return isinstance(base, PreTrainedModel) and names is not None and not names <= set(base.state_dict())


def reload_renamed_weights(model: nn.Module, folder: str | None) -> bool:
    """Load a checkpoint's weights through `from_pretrained` when they are saved under other names than the model's.

    transformers 5.x writes some models (ViT among them) under their legacy parameter names, and
    `Trainer` reloads checkpoints with a non-strict `load_state_dict` that then silently skips those
    tensors (resume and `load_best_model_at_end` keep stale weights). `from_pretrained` knows the
    renaming. A PEFT model's base model is checked the same way. Returns whether weights were reloaded.
    """
    if not has_renamed_weights(model, folder):
        return False
    base = getattr(model, "get_base_model", lambda: model)()
    logger.info(f"Reloading {folder} through from_pretrained to map renamed parameters.")
    reloaded = type(base).from_pretrained(folder, config=base.config)
    base.load_state_dict(reloaded.state_dict())
    return True


class _KeyReportFilter(stdlib_logging.Filter):
    def filter(self, record: stdlib_logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("There were missing keys", "There were unexpected keys"))


@contextmanager
def quiet_key_report(model: nn.Module, folder: str | None) -> Iterator[None]:
    """Around `Trainer`'s load of `folder` into `model`: drop its "missing keys / unexpected keys" warnings (each
    lists every tensor: ~10 KB for a ViT) when the folder holds renamed weights, which `reload_renamed_weights`
    loads right after; any other missing key is still reported."""
    trainer_logger, key_filter = stdlib_logging.getLogger("transformers.trainer"), _KeyReportFilter()
    if has_renamed_weights(model, folder):
        trainer_logger.addFilter(key_filter)
    try:
        yield
    finally:
        trainer_logger.removeFilter(key_filter)


def save_run_records(args: Any, calibration: dict[str, Any] | None, folder: str) -> None:
    """Beside the saved weights: the training arguments as JSON (tokens masked; `training_args.bin` is a pickle) and
    the calibration record, when `calibrate()` ran."""
    with open(os.path.join(folder, "training_args.json"), "w") as file:
        file.write(args.to_json_string())
    save_calibration(calibration, folder)
