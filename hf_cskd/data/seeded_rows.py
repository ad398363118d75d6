"""Random training transforms whose draws are a pure function of (seed, epoch, row).

With torch's global RNG, the crops a resumed run draws depend on how many images were transformed
before the checkpoint, in which DataLoader worker: a resumed run then trains on other crops and
ends at other weights. Seeding each image's draws by (seed, epoch, row), as the class pairs are,
makes resume exact with any number of workers.
"""

from collections.abc import Callable
from typing import Any

import torch

from .errors import NamedRows, fetch_rows

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """A fast, well-mixed 64-bit hash (Steele et al.), so pairs need no shared RNG state."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def row_generator(seed: int, epoch: int, row: int) -> torch.Generator:
    """A generator for one row's draws in one epoch (independent of every other row and epoch)."""
    state = splitmix64(splitmix64(splitmix64(seed & MASK64) ^ epoch) ^ row)
    return torch.Generator().manual_seed(state & ((1 << 63) - 1))


class SeededRows(NamedRows):
    """A map-style dataset whose batched `transform(batch, generators)` draws row i's randomness from
    `row_generator(seed, epoch, i)`.

    Rows map one-to-one onto the wrapped dataset (its labels, columns and features are read through,
    without decoding); a row that cannot be loaded is named (datasets decode images when a row is
    read). `CSKDTrainer` calls `set_epoch` at the start of every epoch (shared memory: DataLoader
    workers see it).
    """

    def __init__(self, dataset: Any, transform: Callable[..., dict[str, list]], seed: int, split: str = "train"):
        super().__init__(dataset, split=split)
        self.transform, self.seed = transform, seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        rows = fetch_rows(self.dataset, indices, self.split)
        batch = {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
        epoch = self.epoch
        generators = [row_generator(self.seed, epoch, int(i)) for i in indices]
        out = self.transform(batch, generators)
        return [{key: values[i] for key, values in out.items()} for i in range(len(indices))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]
