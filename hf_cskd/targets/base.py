"""The interface between the trainer and a source of CS-KD targets (`TargetSource`)."""

from abc import ABC, abstractmethod
from typing import Any

import torch

HAS_TARGET = "cskd_queue_hit"


"""The statistic holding, per anchor, whether the source had a target for it (logged as the share that had one)."""


class TargetSource(ABC):
    """The interface between the trainer and a source of CS-KD targets."""

    @abstractmethod
    def input_names(self, model_input_names: list[str]) -> list[str]:
        """Batch keys the source adds, which `remove_unused_columns` must keep."""

    @abstractmethod
    def prepare_dataset(self, dataset: Any) -> Any:
        """The training set as this source needs it (called again if the trainer's dataset changes)."""

    @abstractmethod
    def pop_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Remove this source's entries from a batch, before the model's forward."""

    @abstractmethod
    def targets(
        self, model: torch.nn.Module, extras: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor,
        own_example: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """Target logits for the anchors' `logits` (constants), and per-step statistics to log (tensors, logged as
        their mean). A source that has no target for some anchors gives them their own logits (a KD term of 0)
        and marks which rows have one under `HAS_TARGET`. `own_example` marks the rows whose logits are a
        prediction of their own example alone (None: every row; a mixed image's are not)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to resume exactly (nothing for pairs: they are a pure function)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def start(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Begin a training run: afresh, or from a checkpoint's `state` (a source that keeps none ignores it)."""
        self.reset()
        if state is not None and self.state_dict():
            self.load_state_dict(state)

    def reset(self) -> None:
        """Forget what earlier training runs left (each `train()` call and each search trial starts afresh)."""
