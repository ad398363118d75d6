"""The training loss on `Trainer`'s custom-loss contract: `compute_loss_func(outputs, labels, num_items_in_batch)`.

`Trainer` counts the labelled examples of the whole optimizer step (over all processes when
`average_tokens_across_devices`), passes the count as `num_items_in_batch`, takes what
`compute_loss_func` returns as already normalized for gradient accumulation, and multiplies it by the
number of processes where the count spans them. A loss built as *sums over the micro-batch divided
by that count* therefore means the same at any accumulation and process count, whatever the model
does with its own loss, and nothing here needs to know. `CSKDLoss` computes the cross-entropy (with
label smoothing, or Mixup's label mixing) and each extra term (CS-KD, teacher) that way.

A user's own `compute_loss_func` composes: it takes the cross-entropy's place (it should follow the
same contract), and the extra terms are added to what it returns.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..models.outputs import model_logits
from ..targets.base import HAS_TARGET
from .cskd import class_wise_kd_loss
from .logs import LossTermSums
from .mixing import Mix, mixed_target_logits

LossFunc = Callable[..., torch.Tensor]


@dataclass
class StepTerms:
    """What one training micro-batch adds to its cross-entropy, prepared by the trainer before the forward.

    `targets(logits, labels, own_example)` gives the CS-KD target logits and statistics to log (None: no CS-KD
    term); `teacher()` the teacher's logits for the batch as the model saw it (None: no teacher term)."""

    settings: Any  # the `cskd_*`/`teacher_*` knobs (`cskd_config.cskd_settings`)
    mix: Mix | None = None
    targets: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
    teacher: Callable[[], torch.Tensor] | None = None
    accumulation_steps: int = 1  # where `Trainer` passes no count: this micro-batch's rows x the steps


def labelled(labels: torch.Tensor) -> torch.Tensor:
    """How many rows carry a label (`-100` marks none, as `Trainer` counts `num_items_in_batch`)."""
    return labels.ne(-100).sum()


def cross_entropy_sum(
    logits: torch.Tensor, labels: torch.Tensor, mix: Mix | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """`Σ_i CE(logits_i, y_i)` in float32; under Mixup/CutMix `Σ_i λ_i·CE(y_i) + (1−λ_i)·CE(y_{p(i)})` (λ_i = 1 for
    rows left unmixed). Label smoothing as `Trainer`'s `LabelSmoother` (the same as `F.cross_entropy`'s)."""
    logits = logits.float()
    own = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing, ignore_index=-100)
    if mix is None:
        return own.sum()
    partner = F.cross_entropy(logits, labels[mix.perm.to(labels.device)], reduction="none",
                              label_smoothing=label_smoothing, ignore_index=-100)  # fmt: skip
    lam = mix.row_lam(logits.device)
    return (lam * own + (1.0 - lam) * partner).sum()


def extra_term_sums(
    logits: torch.Tensor, labels: torch.Tensor, step: StepTerms
) -> tuple[dict[str, tuple[float, torch.Tensor]], dict[str, torch.Tensor]]:
    """Each extra term as (its weight, its value summed over the micro-batch), and the statistics to log."""
    settings, sums, stats = step.settings, {}, {}
    if step.targets is not None:
        own_example = None if step.mix is None else step.mix.unmixed(logits.device)  # only those enter a queue
        targets, stats = step.targets(logits, labels, own_example)
        if step.mix is not None:  # the λ-mix of the two classes' targets (hf_cskd.losses.mixing)
            targets = mixed_target_logits(targets, step.mix, settings.cskd_temperature, stats.get(HAS_TARGET))
        kd = class_wise_kd_loss(logits, targets, settings.cskd_temperature, reduction="sum")
        sums["cskd_loss"] = (settings.cskd_lambda, kd)
    if step.teacher is not None:
        kd = class_wise_kd_loss(logits, step.teacher(), settings.teacher_kd_temperature, reduction="sum")
        sums["teacher_kd_loss"] = (settings.teacher_kd_weight, kd)
    return sums, stats


class CSKDLoss:
    """`CSKDTrainer`'s `compute_loss_func`: `(Σ CE + Σ_terms weight · Σ term) / num_items_in_batch`.

    The trainer sets `step` before each training forward; without one (evaluation, prediction) it is the plain
    cross-entropy, or the user's own `base` function. `logs` sums each term for the training logs."""

    def __init__(self, base: LossFunc | None = None, label_smoothing: float = 0.0):
        self.base, self.label_smoothing = base, label_smoothing
        self.step: StepTerms | None = None
        self.logs = LossTermSums()

    def check_mixing(self, settings: Any) -> bool:
        """Whether `settings` mix the images; refused with a user's own loss, which cannot be mixed row by row."""
        mixing = settings.mixup_alpha > 0 or settings.cutmix_alpha > 0
        if mixing and self.base is not None:
            raise ValueError("mixup_alpha / cutmix_alpha mix the cross-entropy row by row, which a custom "
                             "compute_loss_func cannot be: set both to 0, or train without compute_loss_func.")  # fmt: skip
        return mixing

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        step, self.step = self.step, None  # one use per forward
        if step is None and self.base is not None:
            return self.base(outputs, labels, num_items_in_batch=num_items_in_batch)
        logits = model_logits(outputs)
        count = num_items_in_batch
        if count is None:  # evaluation: a batch mean; training: `Trainer` will not divide by the steps either
            count = labelled(labels) * (step.accumulation_steps if step is not None else 1)
        if self.base is None:
            ce = cross_entropy_sum(logits, labels, None if step is None else step.mix, self.label_smoothing)
            loss = ce / count
        else:
            loss = self.base(outputs, labels, num_items_in_batch=num_items_in_batch)
            ce = loss.detach() * count
        if step is None:
            return loss
        sums, stats = extra_term_sums(logits, labels, step)
        for weight, total in sums.values():
            loss = loss + weight * total / count
        self.logs.add({"ce_loss": ce, **{name: total for name, (_, total) in sums.items()}}, labelled(labels), stats)
        return loss
