"""Batches of anchors and their class-wise pairs."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import default_data_collator

from .pairing import PAIR_PREFIX


def split_pair_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Remove the `pair_*` entries from a batch and return them under the anchor's names."""
    return {key[len(PAIR_PREFIX) :]: inputs.pop(key) for key in list(inputs) if key.startswith(PAIR_PREFIX)}


@dataclass
class DataCollatorForClassPairs:
    """Collate anchors and pairs with the same inner collator, pairs under `pair_`-prefixed names.

    Anchors and pairs are collated separately, so a padding collator pads each half to its own
    length and any model inputs work (pixel values, input ids and attention masks, ...). A batch
    without pair keys (evaluation, prediction) is passed to the inner collator unchanged, so one
    collator serves the whole `Trainer`.
    """

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]] = field(default=default_data_collator)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = [split_pair_inputs(dict(feature)) for feature in features]
        if not any(pairs):
            return self.collator(features)
        if not all(pairs):
            raise ValueError("Some examples of this batch have a class-wise pair and some do not.")
        anchors = [{k: v for k, v in feature.items() if not k.startswith(PAIR_PREFIX)} for feature in features]
        batch = dict(self.collator(anchors))
        batch.update({PAIR_PREFIX + key: value for key, value in self.collator(pairs).items()})
        return batch
