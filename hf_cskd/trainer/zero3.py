"""Calibration under DeepSpeed ZeRO-3, whose parameters are partitioned across processes: a head cannot be divided in
place, and a checking forward would be collective. The main process gathers the full weights into a one-process copy,
fits and bakes T there exactly as for any model (`calibrate_model`: the full-precision check that the logits were
divided by T), and the baked head goes back into the partitions (`deepspeed.zero.GatheredParameters` broadcasts the
main process's values), so the engine's checkpoint holds T. Known to work with deepspeed 0.19 and accelerate 1.16."""

import copy
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from torch import nn

from ..calibration.temperature import calibrate_model
from ..models.classifier_head import find_classifier_layers


def head_parameter_names(model: nn.Module) -> list[str]:
    """The names of the classification head's weight and bias (the parameters a temperature divides)."""
    names = {id(module): name for name, module in model.named_modules()}
    return [f"{names[id(layer)]}.{kind}" for layer in find_classifier_layers(model)
            for kind in ("weight", "bias") if getattr(layer, kind) is not None]  # fmt: skip


def one_process_copy(model: nn.Module, state_dict: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
    """`model`'s architecture with the gathered `state_dict`, outside ZeRO-3 (the constructor, not `from_config`,
    whose ZeRO-3 init would partition it again), in float32, for the check."""
    clone = type(model)(copy.deepcopy(model.config))
    missing, unexpected = clone.load_state_dict(state_dict, strict=False)
    tied = set(getattr(clone, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"The gathered ZeRO-3 weights do not fit {type(model).__name__}: missing {missing}, "
                           f"unexpected {unexpected}.")  # fmt: skip
    return clone.float().to(device).eval()


def calibrate_zero3(accelerator: Any, engine: nn.Module, logits: Any, labels: Any, example_inputs: dict[str, Any],
                    split: str, bake_on_bound: bool, bootstrap_resamples: int) -> tuple[dict[str, Any], Exception | None]:  # fmt: skip
    """`calibrate_model` for a ZeRO-3 engine, called on every process; returns the main process's record and error."""
    import deepspeed

    model = accelerator.unwrap_model(engine)
    try:
        state_dict = accelerator.get_state_dict(engine)  # collective: the full weights, on the main process only
    except ValueError as error:  # accelerate's own message names the DeepSpeed setting
        raise ValueError(f"calibrate() under ZeRO-3 gathers the full model: {error}") from None
    outcome: list[Any] = [None]
    if accelerator.is_main_process:
        try:  # whatever fails here must reach the other processes, waiting below, as the same error
            clone = one_process_copy(model, state_dict, accelerator.device)
            record, error = calibrate_model(clone, logits, labels, example_inputs, split, bake_on_bound,
                                            bootstrap_resamples)  # fmt: skip
            head = None if error is not None else {
                name: clone.get_parameter(name).detach().cpu() for name in head_parameter_names(clone)}
            outcome = [(record, error, head, getattr(clone.config, "calibration_temperature", None))]
        except Exception as failure:
            outcome = [failure]
    if isinstance(received := broadcast_object_list(outcome, from_process=0)[0], Exception):
        raise received
    record, error, head, scale = received
    if head is not None:
        parameters = [model.get_parameter(name) for name in head]
        with deepspeed.zero.GatheredParameters(parameters, modifier_rank=0):  # on leaving: broadcast, re-partition
            if accelerator.is_main_process:
                for parameter, value in zip(parameters, head.values()):
                    parameter.data.copy_(value)
        model.config.calibration_temperature = scale  # written into config.json by the main process
    return record, error
