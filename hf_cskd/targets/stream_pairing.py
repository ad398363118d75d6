"""Class-wise pairs on a stream: each example travels with a partner drawn from a per-class buffer.

A stream (`datasets.IterableDataset` with `streaming=True`, or a torch `IterableDataset`) has no
random access, so the paper's "another example of the same class" comes from the examples
already seen: every class keeps a reservoir of up to K raw examples (as the stream yields them:
give it undecoded rows and a `transform`, and the buffer holds bytes, not tensors). A reservoir,
not a ring: each example seen so far is equally likely to be in it, so a draw from it is uniform
over the class's seen examples, like the paper's uniform draw over the class.

Each example is emitted with its partner inside it (`pair_*` keys), so Accelerate's batch
dispatching cannot separate the two. An example whose class has no buffered partner yet is
emitted with itself (its KD term is then a consistency term between two augmentations) and is
flagged (`cskd_self_pair`), which the trainer logs as a fraction.

Draws are a pure function of (seed, epoch, rank, DataLoader worker) and the stream's order: a
run resumed mid-epoch replays the epoch's skipped examples through the buffers (as `Trainer` does
for streams) and sees the same pairs. Each worker and each rank holds its own buffers: K per class
per worker, fewer candidates than a single reader would have.
"""

import os
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import IterableDataset

from ..data.labels import DEFAULT_LABEL_COLUMNS, LABEL_RANGE_FIX, allowed_labels
from ..data.seeded_rows import splitmix64
from .collator import SELF_PAIR_KEY
from .pairing import PAIR_PREFIX


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def check_stream_label(value: Any, position: int, label_column: str, num_labels: int | None) -> int:
    """The class index of the example at `position` of the stream, or the map-style path's error for it."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "a list (multi-label targets)" if isinstance(value, list | tuple | torch.Tensor) else repr(value)
        fix = (
            f"Encode it as class indices first (`dataset.cast_column({label_column!r}, ClassLabel(names=...))`)."
            if isinstance(value, str)
            else "CS-KD needs one integer class index per example."
        )
        raise ValueError(f"Example {position} of the stream has {label_column!r} = {kind}, not a class index. {fix}")
    if value < 0 or (num_labels is not None and value >= num_labels):
        raise ValueError(
            f"Example {position} of the stream has label {value} in {label_column!r}, outside "
            f"{allowed_labels(num_labels)}. {LABEL_RANGE_FIX}"
        )
    return value


class StreamPairedDataset(IterableDataset):
    """Wrap a stream so that each example carries a partner of its class (`pair_*` keys).

    Args:
        stream: a `datasets.IterableDataset` or a torch `IterableDataset` of dicts.
        label_column: the column holding the class index (default: the first of `label`, `labels`,
            `label_ids` in the first example).
        num_labels: the number of classes (labels outside `[0, num_labels)` are refused).
        buffer_size: raw examples kept per class (K).
        seed: with the epoch, the rank and the worker, determines every draw.
        transform: a batched transform (a dict of lists in, a dict of lists out, like `with_transform`)
            applied at emission to anchors and partners together (e.g. decode + augment), so that the
            buffers hold the raw rows; it runs once per `transform_batch_size` emitted examples.
        transform_batch_size: examples (anchors, and as many partners) per call of `transform`.
    """

    def __init__(
        self,
        stream: Any,
        label_column: str | None = None,
        num_labels: int | None = None,
        buffer_size: int = 8,
        seed: int = 0,
        transform: Callable[[dict[str, list]], dict[str, list]] | None = None,
        transform_batch_size: int = 64,
    ):
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}.")
        self.stream, self.label_column, self.num_labels = stream, label_column, num_labels
        self.buffer_size, self.seed = buffer_size, seed
        self.transform, self.transform_batch_size = transform, transform_batch_size
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by DataLoader workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def _rng(self) -> random.Random:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        key = splitmix64(splitmix64(splitmix64(self.seed) ^ int(self._epoch)) ^ _rank())
        return random.Random(splitmix64(key ^ worker))

    def _emit(self, pending: list[tuple[Mapping[str, Any], Mapping[str, Any], bool]]) -> Iterator[dict[str, Any]]:
        """Transform the pending anchors and partners in one batched call, then yield them merged."""
        if not pending:
            return
        rows = [anchor for anchor, _, _ in pending] + [partner for _, partner, _ in pending]
        if self.transform is not None:
            out = self.transform({key: [row[key] for row in rows] for key in rows[0]})
            rows = [{key: values[i] for key, values in out.items()} for i in range(len(rows))]
        for i, (_, _, self_pair) in enumerate(pending):
            partner = rows[len(pending) + i]
            yield {**rows[i], **{PAIR_PREFIX + k: v for k, v in partner.items()}, SELF_PAIR_KEY: int(self_pair)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = self._rng()
        buffers: dict[int, list[Mapping[str, Any]]] = {}
        seen: dict[int, int] = {}
        pending: list[tuple[Mapping[str, Any], Mapping[str, Any], bool]] = []
        for position, example in enumerate(self.stream):
            if not isinstance(example, Mapping):
                raise TypeError(f"Example {position} of the stream is a {type(example).__name__}, not a dict.")
            column = self.label_column or next((c for c in DEFAULT_LABEL_COLUMNS if c in example), None)
            if column not in example:
                raise ValueError(
                    f"Example {position} of the stream has no {column or DEFAULT_LABEL_COLUMNS!r} column (it has "
                    f"{list(example)}). Pass the label column (`cskd_label_column`)."
                )
            label = check_stream_label(example[column], position, column, self.num_labels)
            buffer = buffers.setdefault(label, [])
            if buffer:
                pending.append((example, buffer[rng.randrange(len(buffer))], False))
            else:
                pending.append((example, example, True))
            if len(pending) >= self.transform_batch_size:
                yield from self._emit(pending)
                pending = []
            seen[label] = seen.get(label, 0) + 1
            if len(buffer) < self.buffer_size:  # reservoir sampling (Algorithm R)
                buffer.append(example)
            else:
                slot = rng.randrange(seen[label])
                if slot < self.buffer_size:
                    buffer[slot] = example
        yield from self._emit(pending)
