"""Where CS-KD targets come from: the paper's class-wise pairs, or the class-wise queue.

`CSKDTrainer` talks to one small interface, `TargetSource`: it lets the source prepare the
training set, takes the source's extra inputs out of each batch before the model sees it, and
asks for the target logits of the step's anchors. Neither source knows the trainer.
"""

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from accelerate import Accelerator
from transformers import TrainerCallback
from transformers.utils import logging

from .class_queue import NO_ID, ClassQueue
from .collator import EXAMPLE_ID_KEY, SELF_PAIR_KEY, split_pair_inputs
from .data_errors import NamedRows
from .model_outputs import model_logits
from .pairing import (
    PAIR_PREFIX,
    ClassPairedDataset,
    check_stream_features,
    class_labels,
    is_iterable,
)
from .stream_pairing import StreamPairedDataset

logger = logging.get_logger(__name__)


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

    def reset(self) -> None:
        """Forget what earlier training runs left (each `train()` call and each search trial starts afresh)."""


class PairTargets(TargetSource):
    """The paper's targets: a second forward, without gradient, of another example of each anchor's class.

    The forward runs in the model's current (train) mode, as in the official code: BatchNorm
    normalizes the pair half with its own batch statistics, dropout is active.
    """

    def __init__(
        self, label_column: str | None = None, num_labels: int | None = None, seed: int = 0, stream_buffer_size: int = 8
    ):
        self.label_column, self.num_labels, self.seed = label_column, num_labels, seed
        self.stream_buffer_size = stream_buffer_size

    def prepare_dataset(self, dataset: Any) -> Any:
        if dataset is None or isinstance(dataset, ClassPairedDataset | StreamPairedDataset):
            return dataset
        if is_iterable(dataset):
            check_stream_features(dataset, self.label_column)
            return StreamPairedDataset(
                dataset, self.label_column, self.num_labels, buffer_size=self.stream_buffer_size, seed=self.seed
            )
        return ClassPairedDataset(dataset, label_column=self.label_column, num_labels=self.num_labels, seed=self.seed)

    def input_names(self, model_input_names: list[str]) -> list[str]:
        return [PAIR_PREFIX + name for name in model_input_names] + [SELF_PAIR_KEY]

    def pop_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        self_pairs = inputs.pop(SELF_PAIR_KEY, None)
        extras = split_pair_inputs(inputs)
        if self_pairs is not None:
            extras[SELF_PAIR_KEY] = self_pairs
        return extras

    def targets(self, model, extras, logits, labels, own_example=None):
        self_pairs = extras.pop(SELF_PAIR_KEY, None)
        if not extras:
            raise ValueError(
                "This training batch has no class-wise pairs (`pair_*` inputs). Train on a ClassPairedDataset with "
                "a DataCollatorForClassPairs (CSKDTrainer sets both up unless the data loader is replaced)."
            )
        extras.pop("labels", None)
        with torch.no_grad():
            targets = model_logits(model(**extras))
        return targets, {} if self_pairs is None else {"cskd_self_pair": self_pairs.float().mean()}


class EpochCallback(TrainerCallback):
    """Tell the training set which epoch starts: class pairs and seeded transforms (`SeededRows`) change with it.

    Accelerate forwards `set_epoch` to the dataset only when no sampler takes it (it does not in
    distributed runs), so the trainer does it itself, on every rank, before the epoch's
    DataLoader workers start. On resume, `state.epoch` (e.g. 1.5) gives the interrupted epoch.
    """

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(math.floor(state.epoch or 0))


class ExampleIdDataset(NamedRows):
    """The training set whose items also carry their row index (`cskd_example_id`); nothing else changes."""

    def __init__(self, dataset: Any):
        super().__init__(dataset, split="train")

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        return [{**example, EXAMPLE_ID_KEY: int(i)} for example, i in zip(super().__getitems__(indices), indices)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]


def gather_rows(accelerator: Accelerator | None, *tensors: torch.Tensor) -> tuple[list[torch.Tensor], slice]:
    """Concatenate per-process rows in process order (the last batches may differ in length).

    Returns the gathered tensors and the slice of this process's rows in them.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return list(tensors), slice(0, tensors[0].shape[0])
    size = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = accelerator.gather(size).tolist()
    longest = max(sizes)
    padded = [torch.nn.functional.pad(t, (0, 0) * (t.ndim - 1) + (0, longest - t.shape[0])) for t in tensors]
    gathered = [accelerator.gather(t.contiguous()) for t in padded]
    keep = torch.cat([torch.arange(n, device=size.device) + rank * longest for rank, n in enumerate(sizes)])
    start = sum(sizes[: accelerator.process_index])
    return [t[keep] for t in gathered], slice(start, start + sizes[accelerator.process_index])


class QueueTargets(TargetSource):
    """Targets from a `ClassQueue`: one forward per step, the plain data path plus a row index.

    Every process gathers the step's logits, labels and example ids from all processes, draws
    targets for the whole global batch and pushes it in process order, so all processes hold the
    same queue and draw as one process with the same global batch would. A training set without
    random access (a stream) has no example ids: its anchors may then meet an earlier prediction
    of their own example once the stream has come round.
    """

    def __init__(
        self,
        num_labels: int,
        size: int = 8,
        label_column: str | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        accelerator: Accelerator | None = None,
    ):
        self.queue = ClassQueue(num_labels, size, seed=seed, device=device)
        self.label_column, self.accelerator = label_column, accelerator

    def prepare_dataset(self, dataset: Any) -> Any:
        if dataset is None or isinstance(dataset, ExampleIdDataset):
            return dataset
        if isinstance(dataset, ClassPairedDataset):
            raise ValueError(
                "cskd_mode='queue' takes the plain training set, not a ClassPairedDataset (pairs are the paper's "
                "mode). Pass the dataset you wrapped, or use cskd_mode='pairs'."
            )
        if is_iterable(dataset):
            logger.info("Queue mode on a stream: examples carry no ids; see QueueTargets.")
            return dataset
        class_labels(dataset, self.label_column, self.queue.num_labels, decode=False)  # refuses bad labels now
        return ExampleIdDataset(dataset)

    def input_names(self, model_input_names: list[str]) -> list[str]:
        return [EXAMPLE_ID_KEY]

    def pop_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"ids": inputs.pop(EXAMPLE_ID_KEY)} if EXAMPLE_ID_KEY in inputs else {}

    def targets(self, model, extras, logits, labels, own_example=None):
        # Labels were checked on the host: up front for map-style sets, per batch by the collator for streams.
        if labels is None or labels.ndim != 1 or labels.is_floating_point():
            raise ValueError("Queue mode needs one integer class index per example under `labels`.")
        ids = extras.get("ids")
        if ids is None:
            ids = torch.full_like(labels, NO_ID)
        if own_example is None:
            own_example = torch.ones_like(labels, dtype=torch.bool)
        rows = torch.stack([labels.to(torch.int64), ids.to(labels.device, torch.int64),
                            own_example.to(labels.device, torch.int64)], dim=1)  # fmt: skip
        (all_logits, all_rows), mine = gather_rows(self.accelerator, logits.detach().float(), rows)
        targets, found = self.queue.draw_and_push(all_logits, all_rows[:, 0], all_rows[:, 1], all_rows[:, 2].bool())
        # Rows without a target get their own logits (a KD term of exactly 0): in this process's
        # rows, those are the local logits, equal to the gathered ones.
        return targets[mine], {HAS_TARGET: found[mine]}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.queue.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.queue.load_state_dict({k: v.to(self.queue.logits.device) for k, v in state.items()})

    def reset(self) -> None:
        self.queue.reset()


def target_source_key(settings: Any, num_labels: int | None, seed: int, accelerator: Accelerator) -> tuple:
    """What `make_target_source` builds from: a source built for an equal key serves as is (the per-step knobs,
    λ > 0 and T, are read at each step)."""
    return (settings.cskd_lambda > 0, settings.cskd_mode, settings.cskd_queue_size, settings.cskd_label_column,
            settings.cskd_stream_buffer_size, num_labels, seed, id(accelerator))  # fmt: skip


def make_target_source(
    settings: Any, dataset: Any, num_labels: int | None, seed: int, accelerator: Accelerator
) -> TargetSource | None:
    """Pairs (the paper's) or the queue, as `settings.cskd_mode` says; None for plain cross-entropy.

    `settings` holds the `cskd_*` knobs (`cskd_config.cskd_settings`).
    """
    if settings.cskd_lambda == 0 and not isinstance(dataset, ClassPairedDataset):
        logger.info("cskd_lambda=0: training with the model's own loss only, without CS-KD targets.")
        return None
    if settings.cskd_mode == "queue":
        if num_labels is None:
            raise ValueError("cskd_mode='queue' needs the number of classes: give the model a `config.num_labels`.")
        return QueueTargets(
            num_labels, settings.cskd_queue_size, settings.cskd_label_column, seed, accelerator.device, accelerator
        )
    return PairTargets(
        settings.cskd_label_column, num_labels, seed, stream_buffer_size=settings.cskd_stream_buffer_size
    )
