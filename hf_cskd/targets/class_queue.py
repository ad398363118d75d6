"""A class-wise queue of recent predictions: CS-KD targets without a second forward pass.

For every class `c` a ring buffer keeps the logits (detached, float32) of the `K` most recent
training examples of class `c`, with the id of the example each came from. An anchor's target is
an entry drawn uniformly from its class's buffer, never one of its own example; the paper's
"another sample of the same class" then costs no extra forward and no extra data loading, at
the price of a target that is up to a few steps stale.

Pure tensor code: no trainer, no data loading, no communication. The caller gathers the step's
logits from all processes before `draw_and_push`, so that every process holds the same queue.
"""

import torch

from ..data.seeded_rows import MASK64, splitmix64

MAX_QUEUE_BYTES = 2 * 1024**3
"""Refuse queues larger than this (2 GiB: about 8,000 classes at K = 8): they live on the model's device."""

NO_ID = -1
"""Example id of an empty slot, and of anchors whose example id is unknown (streams)."""


def queue_bytes(num_labels: int, size: int) -> int:
    """Memory of the buffers: K x C x C float32 logits plus K x C int64 ids."""
    return size * num_labels * (num_labels * 4 + 8)


class ClassQueue:
    """Per-class ring buffers of the last `size` logits seen for each of `num_labels` classes.

    `draw_and_push(logits, labels, ids)` returns, for every row, the logits of a buffered entry of
    the same class that did not come from the same example id (or the row's own logits where there
    is none, which makes its CS-KD term exactly 0), then pushes the rows in order. Draws come from
    a generator seeded by `(seed, number of calls so far)`: processes that make the same calls
    with the same data draw alike, and a queue restored by `load_state_dict` draws as the
    original would have.
    """

    def __init__(self, num_labels: int, size: int = 8, seed: int = 0, device: torch.device | str | None = None):
        if size < 1:
            raise ValueError(f"The queue needs at least one entry per class (cskd_queue_size >= 1), got {size}.")
        if num_labels < 2:
            raise ValueError(f"A class-wise queue needs at least 2 classes, got num_labels={num_labels}.")
        needed = queue_bytes(num_labels, size)
        if needed > MAX_QUEUE_BYTES:
            raise ValueError(
                f"A queue of {size} predictions per class for {num_labels} classes needs {needed / 1024**3:.1f} GiB "
                f"on the model's device (K x C x C float32), over the {MAX_QUEUE_BYTES / 1024**3:.0f} GiB bound. "
                f"Lower cskd_queue_size (at most {max(MAX_QUEUE_BYTES // queue_bytes(num_labels, 1), 0)} fits), or use "
                "cskd_mode='pairs', whose memory does not grow with the number of classes."
            )
        self.num_labels, self.size, self.seed = num_labels, size, seed
        self.logits = torch.zeros(num_labels, size, num_labels, dtype=torch.float32, device=device)
        self.ids = torch.full((num_labels, size), NO_ID, dtype=torch.int64, device=device)
        self.filled = torch.zeros(num_labels, size, dtype=torch.bool, device=device)
        self.head = torch.zeros(num_labels, dtype=torch.int64, device=device)  # next slot to write, per class
        self.calls = 0

    def reset(self) -> None:
        """Empty, as new: the next draws find nothing and are seeded as a new queue's."""
        self.logits.zero_()
        self.ids.fill_(NO_ID)
        self.filled.zero_()
        self.head.zero_()
        self.calls = 0

    def _generator(self) -> torch.Generator:
        generator = torch.Generator(device=self.logits.device)
        generator.manual_seed(splitmix64(splitmix64(self.seed & MASK64) ^ self.calls))
        return generator

    @torch.no_grad()
    def draw(self, logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets for `logits` (rows of classes `labels`, examples `ids`) and whether each found one."""
        candidates = self.filled[labels] & ((self.ids[labels] != ids[:, None]) | (ids[:, None] == NO_ID))
        scores = torch.rand(labels.shape[0], self.size, generator=self._generator(), device=self.logits.device)
        choice = torch.where(candidates, scores, -1.0).argmax(dim=1)
        found = candidates.any(dim=1)
        targets = torch.where(found[:, None], self.logits[labels, choice], logits.detach().float())
        return targets, found

    @torch.no_grad()
    def push(self, logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> None:
        """Write the rows in order into their classes' ring buffers (a class's last `size` rows survive)."""
        counts = torch.bincount(labels, minlength=self.num_labels)
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(labels.shape[0], device=labels.device) - starts[labels[order]]
        keep = rank >= counts[labels] - self.size  # earlier rows would be overwritten within this push
        labels, rank = labels[keep], rank[keep]
        slots = (self.head[labels] + rank) % self.size  # where writing the rows one by one puts them
        self.logits[labels, slots] = logits.detach().float()[keep]
        self.ids[labels, slots] = ids[keep]
        self.filled[labels, slots] = True
        self.head = (self.head + counts) % self.size

    def draw_and_push(
        self, logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, pushed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step: draw every row's target from the queue as it was, then push the rows (only those
        marked in `pushed`, when given: predictions of a mixed image are not a prediction of their class)."""
        targets, found = self.draw(logits, labels, ids)
        if pushed is None:
            self.push(logits, labels, ids)
        else:
            self.push(logits[pushed], labels[pushed], ids[pushed])
        self.calls += 1
        return targets, found

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "logits": self.logits,
            "ids": self.ids,
            "filled": self.filled,
            "head": self.head,
            "calls": torch.tensor(self.calls, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["logits"].shape) != tuple(self.logits.shape):
            raise ValueError(
                f"The saved queue has shape {tuple(state['logits'].shape)} (classes, K, classes) but this run's is "
                f"{tuple(self.logits.shape)}: resume with the same cskd_queue_size and number of classes."
            )
        for name in ("logits", "ids", "filled", "head"):
            getattr(self, name).copy_(state[name])
        self.calls = int(state["calls"])
