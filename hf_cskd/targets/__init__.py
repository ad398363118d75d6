"""Where CS-KD targets come from: the paper's class-wise pairs, or the class-wise queue.

`CSKDTrainer` talks to one small interface, `TargetSource`: it lets the source prepare the
training set, takes the source's extra inputs out of each batch before the model sees it, and
asks for the target logits of the step's anchors. Neither source knows the trainer.
"""

from typing import Any

from accelerate import Accelerator
from transformers.utils import logging

from .base import HAS_TARGET, TargetSource
from .pairing import ClassPairedDataset
from .pairs import EpochCallback, PairTargets
from .queue import QueueTargets

logger = logging.get_logger(__name__)

__all__ = ["HAS_TARGET", "EpochCallback", "PairTargets", "QueueTargets", "TargetSource", "make_target_source",
           "target_source_key"]  # fmt: skip


def target_source_key(settings: Any, num_labels: int | None, seed: int, accelerator: Accelerator) -> tuple:
    """What `make_target_source` builds from: a source built for an equal key serves as is (the per-step knobs,
    λ > 0 and T, are read at each step)."""
    return (settings.cskd_lambda > 0, settings.cskd_mode, settings.cskd_queue_size, settings.cskd_label_column,
            settings.cskd_stream_buffer_size, num_labels, seed, id(accelerator), settings.cskd_queue_dtype)  # fmt: skip


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
            num_labels, settings.cskd_queue_size, settings.cskd_label_column, seed, accelerator.device, accelerator,
            dtype=settings.cskd_queue_dtype,
        )
    return PairTargets(
        settings.cskd_label_column, num_labels, seed, stream_buffer_size=settings.cskd_stream_buffer_size
    )
