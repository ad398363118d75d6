"""Targets from a class-wise queue of recent predictions: one forward per step, no second one."""

from typing import Any

import torch
from accelerate import Accelerator
from transformers.utils import logging

from ..data.errors import NamedRows
from ..data.labels import class_labels, is_iterable
from .base import HAS_TARGET, TargetSource
from .class_queue import NO_ID, ClassQueue
from .collator import EXAMPLE_ID_KEY
from .pairing import ClassPairedDataset

logger = logging.get_logger(__name__)


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
        dtype: str = "float32",
    ):
        self.queue = ClassQueue(num_labels, size, seed=seed, device=device, dtype=dtype)
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
