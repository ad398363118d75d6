"""Checkpoint state: training state without pickles, and which checkpoints are complete.

Training state (optimizer, scheduler, RNG, gradient scaler) is stored as safetensors + JSON.

`Trainer` writes these with `torch.save`, i.e. as pickles, into every checkpoint, and
`hub_strategy="checkpoint"` uploads them. Here a state dict is split into its tensors (one
`.safetensors` file) and everything else (one `.json` file: numbers, strings, lists, tuples, dicts
with int or str keys). Anything else is refused rather than pickled.
"""

import json
import os
import random
import re
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value).contiguous()
        return {"__ndarray__": key, "dtype": str(value.dtype)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Cannot store a {type(value).__name__} in a checkpoint without pickling it.")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(value["dtype"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__dict__"]}


def save_state(state: Any, path: str) -> None:
    """Write `state` to `path.safetensors` (its tensors) and `path.json` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors)
    save_file(tensors, f"{path}.safetensors")
    with open(f"{path}.json", "w") as file:
        json.dump(structure, file)


def load_state(path: str) -> Any:
    """Read what `save_state(state, path)` wrote (tensors on the CPU)."""
    with open(f"{path}.json") as file:
        structure = json.load(file)
    return _decode(structure, load_file(f"{path}.safetensors"))


def has_state(path: str) -> bool:
    return os.path.isfile(f"{path}.json") and os.path.isfile(f"{path}.safetensors")


def rng_states() -> dict[str, Any]:
    """The random generators `Trainer` restores on resume: Python, NumPy, torch CPU and CUDA."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.random.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.random.set_rng_state_all(states["cuda"])


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
