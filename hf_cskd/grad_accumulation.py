"""How `Trainer` normalizes a loss under gradient accumulation, so the CS-KD term can be normalized alike.

`Trainer.training_step` divides the loss by the accumulation steps unless it is "already scaled":
the model took `num_items_in_batch` and divided its summed loss by it (or `compute_loss_func` did).
Some models take loss kwargs but ignore the count (BERT in transformers 5.x returns a per-micro-batch
mean); `Trainer` then sums those means over the accumulation steps. For λ to weigh the CS-KD term
against the cross-entropy as it does without accumulation, the summed KD term is divided by the same
denominator the model's loss effectively has. These are pure functions of what the trainer knows.
"""

from typing import Any

import torch
import torch.nn.functional as F


def loss_is_scaled_for_ga(
    override: bool | None, model_accepts_loss_kwargs: bool, num_items_in_batch: Any, has_compute_loss_func: bool
) -> bool:
    """The rule `Trainer.training_step` applies before dividing the loss by the accumulation steps.

    `override` is `Trainer.loss_is_scaled_for_ga` (transformers >= 5.19; None, or absent before, means
    "apply the rule", which is the only behaviour of 5.18 and earlier).
    """
    if override is not None:
        return override
    return (model_accepts_loss_kwargs and num_items_in_batch is not None) or has_compute_loss_func


def normalizes_by_count(
    loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any, loss_scale: int = 1
) -> bool | None:
    """Whether the model's `loss` is its summed cross-entropy divided by `num_items_in_batch` (True) or a
    per-micro-batch mean (False); None when this batch cannot tell the two apart (same count).

    `loss_scale` is what `Trainer.compute_loss` multiplied the loss by (the number of processes under
    `average_tokens_across_devices`). Compared in float64, whatever the dtypes of the model and the count.
    """
    with torch.no_grad():
        total = F.cross_entropy(logits.double(), labels, reduction="sum", ignore_index=-100)
        count = (labels != -100).sum().double()
        by_count = total / torch.as_tensor(num_items_in_batch, dtype=torch.float64, device=total.device)
        by_mean = total / count
        if torch.isclose(by_count, by_mean, rtol=1e-3):
            return None
        model_loss = loss.detach().double() / loss_scale
        return bool((model_loss - by_count).abs() <= (model_loss - by_mean).abs())


def kd_denominator(
    batch_size: int, num_items_in_batch: Any, scaled_for_ga: bool, by_count: bool, accumulation_steps: int,
    loss_scale: int = 1,
) -> Any:  # fmt: skip
    """What the summed KD term of a micro-batch is divided by, to match the model's own loss.

    Not scaled for GA: the model's loss is a batch mean that `training_step` divides by the
    accumulation steps, so the KD term is a batch mean. Scaled, with a count the model honours:
    divided by the accumulated (all-rank) count and multiplied like the loss by `loss_scale`. Scaled,
    with a count the model ignores (`by_count=False`): a micro-batch mean that `Trainer` sums.
    """
    if not scaled_for_ga:
        return batch_size
    if num_items_in_batch is None:
        return batch_size * accumulation_steps
    return (num_items_in_batch if by_count else batch_size) / loss_scale


def add_loss_terms(
    model_loss: torch.Tensor, sums: dict[str, tuple[float, torch.Tensor]], denominator: Any, scaled_for_ga: bool,
    accumulation_steps: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The micro-batch's loss `model_loss + Σ weight · sum / denominator` for `sums` = {name: (weight, the term
    summed over the micro-batch)}, and each term as logged (`ce_loss` = the model's own, the others before their
    weight), on the scale of one optimizer step: divided by the accumulation steps where `training_step` will."""
    per_step = 1 if scaled_for_ga else accumulation_steps
    logged = {"ce_loss": model_loss / per_step}
    for name, (weight, total) in sums.items():
        value = total / denominator
        logged[name] = value / per_step
        model_loss = model_loss + weight * value
    return model_loss, logged
