"""Batches of anchors with what CS-KD needs beside them: class-wise pairs, or example ids."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import default_data_collator

from ..data.labels import LABEL_RANGE_FIX, allowed_labels
from .pairing import PAIR_PREFIX

EXAMPLE_ID_KEY = "cskd_example_id"
"""The row index of each example, carried in queue mode so that no anchor is distilled from itself."""
SELF_PAIR_KEY = "cskd_self_pair"
"""1 where a streamed example was paired with itself (its class had nothing buffered yet)."""
INTEGER_KEYS = (EXAMPLE_ID_KEY, SELF_PAIR_KEY)


def split_pair_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Remove the `pair_*` entries from a batch and return them under the anchor's names."""
    return {key[len(PAIR_PREFIX) :]: inputs.pop(key) for key in list(inputs) if key.startswith(PAIR_PREFIX)}


@dataclass
class DataCollatorForClassPairs:
    """Collate anchors and pairs with the same inner collator, pairs under `pair_`-prefixed names.

    Anchors and pairs are collated separately, so a padding collator pads each half to its own
    length and any model inputs work (pixel values, input ids and attention masks, ...). Example
    ids (`cskd_example_id`, queue mode) and stream self-pair flags (`cskd_self_pair`) bypass the
    inner collator and become int64 tensors. A
    batch with neither (evaluation, prediction) is passed to the inner collator unchanged, so one
    collator serves the whole `Trainer`.
    """

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]] = field(default=default_data_collator)
    num_labels: int | None = None
    """When set, class-index `labels` outside [0, num_labels) are refused here, on the host (`check_label_range`):
    a check on the device would cost a sync per step (streams, whose labels cannot be checked up front)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [dict(feature) for feature in features]
        integers = {key: [feature.pop(key, None) for feature in features] for key in INTEGER_KEYS}
        pairs = [split_pair_inputs(feature) for feature in features]
        if not all(pairs) and any(pairs):
            raise ValueError("Some examples of this batch have a class-wise pair and some do not.")
        batch = dict(self.collator(features))
        if all(pairs):
            batch.update({PAIR_PREFIX + key: value for key, value in self.collator(pairs).items()})
        for key, values in integers.items():
            if any(v is None for v in values) and not all(v is None for v in values):
                raise ValueError(f"Some examples of this batch carry a {key!r} and some do not.")
            if values[0] is not None:
                batch[key] = torch.tensor(values, dtype=torch.int64)
        check_label_range(batch.get("labels"), self.num_labels)
        return batch


def check_label_range(labels: Any, num_labels: int | None) -> None:
    """Refuse a batch's class indices outside [0, num_labels) with the fix (a host tensor: no device sync)."""
    if num_labels is None or not torch.is_tensor(labels) or labels.ndim != 1 or labels.is_floating_point():
        return
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise ValueError(
            f"A batch has labels in [{int(labels.min())}, {int(labels.max())}], outside {allowed_labels(num_labels)}. "
            f"{LABEL_RANGE_FIX}"
        )
