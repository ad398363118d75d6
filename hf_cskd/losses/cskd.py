"""The class-wise self-knowledge-distillation term, as a pure function of two logit tensors."""

from typing import Literal

import torch
import torch.nn.functional as F


def class_wise_kd_loss(
    logits: torch.Tensor,
    target_logits: torch.Tensor,
    temperature: float = 4.0,
    reduction: Literal["batchmean", "sum"] = "batchmean",
) -> torch.Tensor:
    """`T² · KL(softmax(target/T) ‖ softmax(logits/T))`, the CS-KD regularizer.

    `target_logits` are the predictions for another sample of the same class; they are a
    constant target (detached), exactly as in the official code where they come from a forward
    pass under `torch.no_grad()`. The KL is summed over classes and averaged over the batch
    (`reduction="batchmean"`), or summed over the batch (`"sum"`, for callers that normalize
    by a count of their own, such as `Trainer`'s `num_items_in_batch`).

    The computation always runs in float32, also under fp16/bf16 autocast or with half inputs:
    a softmax at temperature 4 of half-precision logits loses most of the "dark knowledge" on
    the wrong classes that this term is about.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if logits.shape != target_logits.shape or logits.ndim != 2:
        raise ValueError(
            "class_wise_kd_loss expects two logit tensors of the same shape (batch, num_labels); "
            f"got {tuple(logits.shape)} and {tuple(target_logits.shape)}."
        )
    if reduction not in ("batchmean", "sum"):
        raise ValueError(f"reduction must be 'batchmean' or 'sum', got {reduction!r}.")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = F.log_softmax(logits.float() / temperature, dim=-1)
        log_q = F.log_softmax(target_logits.detach().float() / temperature, dim=-1)
        loss = F.kl_div(log_p, log_q, reduction="sum", log_target=True) * temperature**2
    return loss / logits.shape[0] if reduction == "batchmean" else loss
