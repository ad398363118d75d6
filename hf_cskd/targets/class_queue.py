"""A class-wise queue of recent predictions: CS-KD targets without a second forward pass.

For every class `c` a ring buffer keeps the logits (detached, float32) of the `K` most recent
training examples of class `c`, with the id of the example each came from. An anchor's target is
an entry drawn uniformly from its class's buffer, never one of its own example; the paper's
"another sample of the same class" then costs no extra forward and no extra data loading, at
the price of a target that is up to a few steps stale.

Pure tensor code: no trainer, no data loading, no communication. The caller gathers the step's
logits from all processes before `draw_and_push`, so that every process holds the same queue.

The buffers are K x C x C logits: 14.2 GiB in float32 at ImageNet-21k's 21,843 classes and K = 8.
Stored in bfloat16 they take half (K = 1: 0.9 GiB there), and a target's KD term changes by about
2e-5 of itself (bfloat16 keeps 8 bits of mantissa; the KD term compares softened probabilities).
Keeping only each entry's top-k logits was measured and rejected: at T = 4 most of the probability
mass lies outside any small top-k, and the KD term moved by 30 % to 200 % at 1,000 classes.
"""

import torch

from ..data.seeded_rows import MASK64, splitmix64

MAX_QUEUE_BYTES = 2 * 1024**3
"""Refuse queues larger than this (2 GiB: about 8,000 classes at K = 8): they live on the model's device."""

NO_ID = -1
"""Example id of an empty slot, and of anchors whose example id is unknown (streams)."""


QUEUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""How the queued logits may be stored (`cskd_queue_dtype`)."""


def queue_bytes(num_labels: int, size: int, dtype: str = "float32") -> int:
    """Memory of the buffers: K x C x C logits (4 or 2 bytes each) plus K x C int64 ids."""
    return size * num_labels * (num_labels * QUEUE_DTYPES[dtype].itemsize + 8)


class ClassQueue:
    """Per-class ring buffers of the last `size` logits seen for each of `num_labels` classes.

    `draw_and_push(logits, labels, ids)` returns, for every row, the logits of a buffered entry of
    the same class that did not come from the same example id (or the row's own logits where there
    is none, which makes its CS-KD term exactly 0), then pushes the rows in order. Draws come from
    a generator seeded by `(seed, number of calls so far)`: processes that make the same calls
    with the same data draw alike, and a queue restored by `load_state_dict` draws as the
    original would have.
    """

    def __init__(self, num_labels: int, size: int = 8, seed: int = 0, device: torch.device | str | None = None,
                 dtype: str = "float32"):  # fmt: skip
        if size < 1:
            raise ValueError(f"The queue needs at least one entry per class (cskd_queue_size >= 1), got {size}.")
        if num_labels < 2:
            raise ValueError(f"A class-wise queue needs at least 2 classes, got num_labels={num_labels}.")
        if dtype not in QUEUE_DTYPES:
            raise ValueError(f"cskd_queue_dtype must be one of {list(QUEUE_DTYPES)}, got {dtype!r}.")
        needed = queue_bytes(num_labels, size, dtype)
        if needed > MAX_QUEUE_BYTES:
            fits = {name: MAX_QUEUE_BYTES // queue_bytes(num_labels, 1, name) for name in QUEUE_DTYPES}
            options = [f"store it in bfloat16 (cskd_queue_dtype='bfloat16': "
                       f"{queue_bytes(num_labels, size, 'bfloat16') / 1024**3:.1f} GiB; at most {fits['bfloat16']} per "
                       "class fit)"] if dtype != "bfloat16" and fits["bfloat16"] else []  # fmt: skip
            options += [f"lower cskd_queue_size (at most {fits[dtype]} fits)"] if fits[dtype] else []
            options += ["use cskd_mode='pairs', whose memory does not grow with the number of classes"]
            fixes = ", or ".join(options)
            raise ValueError(
                f"A queue of {size} predictions per class for {num_labels} classes needs {needed / 1024**3:.1f} GiB "
                f"on the model's device (K x C x C {dtype}), over the {MAX_QUEUE_BYTES / 1024**3:.0f} GiB bound. "
                f"{fixes[0].upper() + fixes[1:]}."
            )
        self.num_labels, self.size, self.seed = num_labels, size, seed
        self.logits = torch.zeros(num_labels, size, num_labels, dtype=QUEUE_DTYPES[dtype], device=device)
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
        targets = torch.where(found[:, None], self.logits[labels, choice].float(), logits.detach().float())
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
        self.logits[labels, slots] = logits.detach()[keep].to(self.logits.dtype)
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
        if tuple(state["logits"].shape) != tuple(self.logits.shape) or state["logits"].dtype != self.logits.dtype:
            raise ValueError(
                f"The saved queue is {tuple(state['logits'].shape)} {state['logits'].dtype} (classes, K, classes) but "
                f"this run's is {tuple(self.logits.shape)} {self.logits.dtype}: resume with the same cskd_queue_size, "
                "cskd_queue_dtype and number of classes."
            )
        for name in ("logits", "ids", "filled", "head"):
            getattr(self, name).copy_(state[name])
        self.calls = int(state["calls"])
