"""Temperature scaling (Guo et al., 2017), fitted on held-out logits and baked into the head.

CS-KD improves accuracy but can leave an already well-calibrated model under-confident; one
temperature fixes the confidence without changing any prediction. Dividing the classifier's
weight and bias by T makes the saved checkpoint calibrated for every plain `from_pretrained`
or `pipeline` user, with no custom code.
"""

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.classifier_head import find_classifier_layers
from ..models.outputs import model_logits
from .metrics import calibration_metrics

BOOTSTRAP_RESAMPLES = 1000
"""Resamples of the held-out examples behind each metric's 95 % interval in a calibration record."""
TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The range `fit_temperature` searches. A fit on a bound means the held-out data cannot support a
temperature (too few examples, random or wrong labels): real classifiers land well inside."""


class CalibrationNotApplied(ValueError):
    """A fitted temperature was not baked into the model, which stays as trained (the message says why and the fix)."""


class TemperatureOnBoundError(CalibrationNotApplied):
    """A fitted temperature on a bound of its search: not baked unless asked for (the message says why and the fix)."""


def fit_temperature(
    logits: Any, labels: Any, max_iter: int = 100, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The T in `bounds` that minimizes the NLL of `softmax(logits / T)` on held-out data.

    The NLL is unimodal in 1/T, so the unconstrained minimum clipped to the bounds is the
    constrained one. Landing on a bound warns: the fitted T is then not to be trusted.
    """
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = bounds
    temperature = min(max(float(log_t.detach().exp()), low), high)
    problem = temperature_on_bound(temperature, logits, labels, bounds)
    if problem is not None:
        warnings.warn(problem, stacklevel=2)
    return temperature


def fitted_calibration(
    logits: Any, labels: Any, split: str = "validation", bootstrap_resamples: int = BOOTSTRAP_RESAMPLES
) -> dict[str, Any]:
    """Fit a temperature on held-out logits: T, the split and its size, the metrics before and after (each with a
    95 % bootstrap interval, `<key>_ci`), and a `warning` when T is on a bound of the search
    (`temperature_on_bound`). What `calibration.json` and the model card record."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a bound is stated in the record instead
        temperature = fit_temperature(logits, labels)
    logits = np.asarray(logits)
    record = {
        "temperature": temperature,
        "split": split,
        "examples": len(logits),
        "bootstrap_resamples": bootstrap_resamples,
        "before": calibration_metrics(logits, labels, bootstrap_resamples=bootstrap_resamples),
        "after": calibration_metrics(logits / temperature, labels, bootstrap_resamples=bootstrap_resamples),
    }
    problem = temperature_on_bound(temperature, logits, labels, data=f"the {split} split")
    return record if problem is None else {**record, "warning": problem}


def not_baked(record: dict[str, Any], warning: str) -> dict[str, Any]:
    """A `fitted_calibration` record of a temperature left out of the model (on a bound, or a head that cannot
    absorb it): the value as `fitted_temperature`, no `after` metrics, and the `warning` that says why."""
    kept = {key: value for key, value in record.items() if key not in ("temperature", "after", "warning")}
    return {**kept, "fitted_temperature": record["temperature"], "warning": warning}


def temperature_on_bound(
    temperature: float,
    logits: Any,
    labels: Any,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    data: str = "the held-out data",
) -> str | None:
    """Why a temperature on a bound of the search is not to be trusted (None for one inside).

    On the lower bound the held-out data holds (almost) no mistakes of the model: sharper always
    looks better on it, and the scaled model becomes over-confident wherever it does err.
    """
    low, high = bounds
    if low < temperature < high:
        return None
    logits, labels = np.asarray(logits), np.asarray(labels)
    errors = f"{int((logits.argmax(axis=-1) != labels).sum())} of {data}'s {len(labels)} examples are misclassified"
    if temperature <= low:
        why = (
            f"{errors}, so sharper probabilities always look better on it, and the scaled model is over-confident "
            "wherever it errs. Fit on a larger held-out split on which the model makes some mistakes (a few hundred "
            "examples)"
        )
    else:
        why = f"{errors}: near chance, the flattest probabilities look best. Check that the labels are right"
    return (
        f"The fitted temperature reached the bound {temperature:g} (search range [{low:g}, {high:g}]) and cannot be "
        f"trusted: {why}."
    )


@contextmanager
def full_precision(model: nn.Module) -> Iterator[None]:
    """Run a block with the model's half-precision (fp16/bf16) parameters and buffers in float32, then cast back.

    Both casts are exact for values that were half precision; values written inside the block (a divided
    head) are rounded once, on the way back.
    """
    low = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point() and t.element_size() < 4]
    dtypes = [t.dtype for t in low]
    for tensor in low:
        tensor.data = tensor.data.float()
    try:
        yield
    finally:
        for tensor, dtype in zip(low, dtypes):
            tensor.data = tensor.data.to(dtype)


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The FSDP2-sharded modules of `model` ([] for any other model)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch without FSDP2
        return []
    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def register_shards(model: nn.Module) -> None:
    """Under FSDP2 a forward leaves gathered copies of some parameters registered (the root module's always), while the
    shards are what the engine saves: register the shards again, so that an edit reaches the saved model and the next
    forward gathers the edited values. A no-op for any other model."""
    for module in fsdp_modules(model):
        module.reshard()


@torch.no_grad()
def bake_temperature(model: nn.Module, temperature: float, example_inputs: dict[str, Any] | None = None) -> nn.Module:
    """Divide the classifier head's weight and bias by `temperature`, in place.

    With `example_inputs`, check that the model's logits were indeed divided by T (a head whose
    output passes through a non-linearity cannot absorb a temperature); if not, restore the head
    exactly and raise. The division and the check run in float32 also for fp16/bf16 models (whose
    own rounding would fail any exact check); the model keeps its dtype and its train/eval mode.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    register_shards(model)
    layers = find_classifier_layers(model)
    originals = [(p, p.detach().clone()) for layer in layers for p in (layer.weight, layer.bias) if p is not None]
    was_training = model.training
    model.eval()
    # Under fp16/bf16, Accelerate wraps `forward` in autocast: check in full precision, on the original.
    # FSDP2 gathers parameters in hooks of the call: call the module (fp32 runs; under FSDP2 + fp16/bf16 the check
    # sees the engine's precision).
    forward = model if fsdp_modules(model) else getattr(model, "_original_forward", model.forward)
    inputs = {
        k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in (example_inputs or {}).items()
    }
    try:
        with full_precision(model):
            before = model_logits(forward(**inputs)) if example_inputs is not None else None
            register_shards(model)  # the edit below goes to the parameters the forward left registered: the shards
            for parameter, _ in originals:
                parameter.div_(temperature)
            if before is not None and not torch.allclose(
                model_logits(forward(**inputs)), before / temperature, rtol=1e-4, atol=1e-5
            ):
                raise ValueError(
                    f"Scaling the head of {type(model).__name__} did not scale its logits by 1/T; the model was left "
                    "unchanged. Divide the logits by the temperature at inference instead."
                )
    except BaseException:  # whatever failed, the head is restored exactly: a record can say "not baked"
        register_shards(model)
        for parameter, original in originals:
            parameter.data.copy_(original)
        raise
    finally:
        register_shards(model)
        model.train(was_training)
    config = getattr(model, "config", None)
    if config is not None:
        # Saved in config.json: how the checkpoint was calibrated (multiplies any earlier scaling).
        config.calibration_temperature = float(getattr(config, "calibration_temperature", 1.0)) * temperature
    return model


def calibrate_model(
    model: nn.Module, logits: Any, labels: Any, example_inputs: dict[str, Any], split: str = "validation",
    bake_on_bound: bool = False, bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[dict[str, Any], Exception | None]:  # fmt: skip
    """Fit T on held-out `logits`/`labels` of `model` and bake it into its head; usable without a trainer.

    Returns the record for `calibration.json` and the card, and the error to raise when T was not baked (the model
    is then exactly as trained, and the record says so): `TemperatureOnBoundError` for a T on a bound of the search
    (unless `bake_on_bound`), `CalibrationNotApplied` for a head that cannot absorb it, or whatever else failed."""
    record = fitted_calibration(logits, labels, split, bootstrap_resamples)
    temperature = record["temperature"]
    if "warning" in record and not bake_on_bound:
        message = f"{record['warning']} The model was left uncalibrated (bake_on_bound=True bakes it)."
        return not_baked(record, record["warning"]), TemperatureOnBoundError(message)
    try:
        bake_temperature(model, temperature, example_inputs)
    except Exception as error:  # the model is unchanged (bake_temperature restores it): never claim T
        reason = f"T = {temperature:.4f} was fitted but not baked into the model: {error}"
        if isinstance(error, ValueError):
            wrapped = CalibrationNotApplied(reason)
            wrapped.__cause__, error = error, wrapped
        return not_baked(record, reason), error
    return record, None  # only now: the weights hold T


def save_calibration(record: dict[str, Any] | None, folder: str) -> None:
    """Write `calibration.json` beside the weights (nothing when no calibration was attempted)."""
    if record is not None:
        with open(os.path.join(folder, "calibration.json"), "w") as file:
            json.dump(record, file, indent=2)
