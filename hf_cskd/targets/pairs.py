"""The paper's targets: a second forward, without gradient, of another example of each anchor's class."""

import math
from typing import Any

import torch
from transformers import TrainerCallback

from ..data.labels import check_stream_features, is_iterable
from ..models.outputs import model_logits
from .base import TargetSource
from .collator import SELF_PAIR_KEY, split_pair_inputs
from .pairing import PAIR_PREFIX, ClassPairedDataset
from .stream_pairing import StreamPairedDataset


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
