"""The loss terms and the target source's statistics, summed between two training logs."""

from collections.abc import Callable

import torch


class LossTermSums:
    """Running sums on the device (no sync per step), turned into averages when `Trainer` logs.

    Each loss term is logged per labelled example over all processes (`Σ term / Σ rows`), the way `Trainer`'s
    `loss` normalizes by `num_items_in_batch`; each statistic (e.g. `cskd_queue_hit`) as its mean per micro-batch.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count: torch.Tensor | int = 0
        self.stats: dict[str, torch.Tensor] = {}
        self.micro_steps = 0

    def add(self, sums: dict[str, torch.Tensor], count: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch: each term summed over its `count` labelled rows, and its statistics."""
        for name, value in sums.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach().float()
        for name, value in stats.items():
            self.stats[name] = self.stats.get(name, 0) + value.detach().float().mean()
        self.count = self.count + count
        self.micro_steps += 1

    def pop(self, reduce: Callable[[torch.Tensor, str], torch.Tensor]) -> dict[str, float]:
        """The averages since the last pop, reduced over processes by `reduce(tensor, "sum" | "mean")`, and start
        again."""
        logs = {}
        if self.sums:
            count = reduce(
                torch.as_tensor(self.count, dtype=torch.float32, device=next(iter(self.sums.values())).device), "sum"
            )
            logs = {name: (reduce(total, "sum") / count).item() for name, total in self.sums.items()}
        logs.update({name: reduce(total, "mean").item() / self.micro_steps for name, total in self.stats.items()})
        self.__init__()
        return logs
