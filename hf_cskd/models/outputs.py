"""What hf-cskd reads from a classifier: its logits, and whether it is a single-label classifier at all.

Shared by the target sources, the trainer and temperature scaling (which checks that a baked head divides the
logits by T), so it sits below all of them.
"""

from typing import Any

import torch


def model_logits(outputs: Any) -> torch.Tensor:
    """The logits of a model output: a `ModelOutput`/dict's (or any object's) `logits`, or a tuple's first entry that
    is not the loss (`(loss, logits, ...)` with labels, `(logits, ...)` without)."""
    if isinstance(outputs, dict):
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    return outputs[1] if len(outputs) > 1 and outputs[0].ndim == 0 else outputs[0]


def loss_first(loss: torch.Tensor, outputs: Any) -> Any:
    """A tuple output with the loss as its first entry, as `Trainer.prediction_step` reads it (it drops a tuple's
    first entry as the loss). A tuple model called without labels returns `(logits, ...)`: with label smoothing
    (`Trainer` pops the labels) its logits would be dropped and `predict` would return none."""
    if isinstance(outputs, tuple) and not (outputs and torch.is_tensor(outputs[0]) and outputs[0].ndim == 0):
        return (loss, *outputs)
    return outputs


def check_single_label_classifier(model: torch.nn.Module) -> None:
    """CS-KD distills class probabilities of single-label classifiers: refuse regression and multi-label heads."""
    config = getattr(model, "config", None)
    if config is None:
        return
    problem_type = getattr(config, "problem_type", None)
    if getattr(config, "num_labels", 2) < 2 or problem_type == "regression":
        raise ValueError(
            "CS-KD distills class probabilities, but this model has a regression head "
            f"(num_labels={config.num_labels}, problem_type={problem_type!r}). Build the model with "
            "`num_labels` equal to the number of classes (>= 2)."
        )
    if problem_type == "multi_label_classification":
        raise ValueError(
            "CS-KD pairs examples of one class, but this model is set up for multi-label classification. "
            "Use single-label targets and `problem_type='single_label_classification'`."
        )
