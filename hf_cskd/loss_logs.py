"""The CS-KD loss terms and the target source's statistics, summed between two training logs."""

from collections.abc import Callable

import torch

LOSS_TERMS = ("ce_loss", "cskd_loss", "teacher_kd_loss")


class LossTermSums:
    """Running sums on the device (no sync per step), turned into averages when `Trainer` logs.

    The loss terms are averaged per optimizer step, like `Trainer`'s `loss`; the statistics (e.g.
    `cskd_queue_hit`) per micro-batch.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.micro_steps = 0
        self.first_step = 0

    def add(self, step: int, terms: dict[str, torch.Tensor], stats: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch: `terms` already in the units of the logged `loss`; `step` is the global step."""
        if not self.sums:
            self.first_step, self.micro_steps = step, 0
        for name, value in {**terms, **stats}.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach().float().mean()
        self.micro_steps += 1

    def pop(self, step: int, reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """The averages since the last pop (reduced over processes by `reduce`), and start again."""
        steps = max(step - self.first_step, 1)
        logs = {
            name: reduce(total).item() / (steps if name in LOSS_TERMS else self.micro_steps)
            for name, total in self.sums.items()
        }
        self.sums = {}
        return logs
