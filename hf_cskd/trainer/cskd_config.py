"""`TrainingArguments` with the CS-KD knobs."""

import copy
import warnings
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any

from transformers import TrainingArguments

from ..targets.class_queue import MAX_QUEUE_BYTES, QUEUE_DTYPES

CSKD_MODES = ("pairs", "queue")


@dataclass
class CSKDConfig(TrainingArguments):
    """Configuration for `CSKDTrainer`: every `TrainingArguments` field plus the CS-KD ones.

    The defaults are the paper's (T = 4, λ = 1, targets from class-wise pairs). `cskd_lambda=0`
    trains with plain cross-entropy (the baseline), with no pairs loaded and no extra forward pass.
    """

    cskd_temperature: float = field(
        default=4.0,
        metadata={"help": "Softmax temperature T of the class-wise distillation term (paper: 4). Must be > 0."},
    )
    cskd_lambda: float = field(
        default=1.0,
        metadata={
            "help": "Weight λ of the class-wise distillation term (paper: 1; 3 for CUB-200 with batch 32). "
            "0 trains with plain cross-entropy. Must be >= 0."
        },
    )
    cskd_label_column: str | None = field(
        default=None,
        metadata={
            "help": "Column of the training set holding the class index used to pair examples. "
            "Default: the first of 'label', 'labels', 'label_ids' present."
        },
    )

    cskd_mode: str = field(
        default="pairs",
        metadata={
            "help": "Where CS-KD targets come from. 'pairs' (the paper's): a second forward, without gradient, of "
            "another training example of the same class (about 1.35x a plain step, pairs loaded and decoded). "
            "'queue': a prediction of the same class made at a recent step, drawn from a per-class queue (one "
            "forward per step, the plain data path).",
            "choices": list(CSKD_MODES),
        },
    )
    cskd_queue_size: int = field(
        default=8,
        metadata={
            "help": "K >= 1: recent predictions kept per class in queue mode (K x C x C float32 logits on the "
            f"model's device, refused above {MAX_QUEUE_BYTES // 1024**3} GiB)."
        },
    )
    cskd_queue_dtype: str = field(
        default="float32",
        metadata={
            "help": "How queue mode stores its logits: 'float32', or 'bfloat16' (half the memory, K x C x C x 2 bytes: "
            "21,843 classes fit in 0.9 GiB at cskd_queue_size 1; the KD term moves by ~2e-5 of itself (measured at 1,000 classes)).",
            "choices": list(QUEUE_DTYPES),
        },
    )
    cskd_stream_buffer_size: int = field(
        default=8,
        metadata={
            "help": "Raw examples kept per class to draw pairs from when the training set is a stream (an "
            "`IterableDataset`) in pairs mode. Must be >= 1."
        },
    )

    teacher_kd_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight α of the distillation term from a teacher, `CSKDTrainer(teacher_model=...)` (Hinton et "
            "al.): α · T_t² · KL(softmax(teacher/T_t) ‖ softmax(student/T_t)). Used only with a teacher; 0 turns the "
            "term off. Must be >= 0."
        },
    )
    teacher_kd_temperature: float = field(
        default=4.0,
        metadata={"help": "Softmax temperature T_t of the teacher term (both sides). Must be > 0."},
    )

    mixup_alpha: float = field(
        default=0.0,
        metadata={
            "help": "Mixup: mix each training batch's images with a shuffled copy, λ ~ Beta(α, α) (folded to >= 0.5), "
            "labels and CS-KD targets mixed alike (hf_cskd.losses.mixing). 0 (the default) turns it off; 0.2-0.4 is usual "
            "for fine-tuning, 1.0 in the Mixup paper's CIFAR runs. Needs 4-D `pixel_values`."
        },
    )
    cutmix_alpha: float = field(
        default=0.0,
        metadata={
            "help": "CutMix: paste a box of a shuffled copy into each image, λ ~ Beta(α, α) = the share of the image "
            "kept. 0 (the default) turns it off; 1.0 is CutMix's own default."
        },
    )
    mixup_switch_prob: float = field(
        default=0.5,
        metadata={"help": "With both mixup_alpha and cutmix_alpha > 0: the probability that a batch uses CutMix."},
    )
    mixup_prob: float = field(
        default=1.0, metadata={"help": "The probability that a training batch is mixed at all (Mixup or CutMix)."}
    )
    cskd_queue_unmixed_share: float = field(
        default=0.25,
        metadata={
            "help": "Queue mode with Mixup/CutMix: the share of each mixed batch's rows left unmixed. Only their "
            "predictions enter the queue (a mixed image's prediction is partly another class's); the other rows are "
            "mixed and draw targets as usual. In (0, 1); no effect in pairs mode or without mixing."
        },
    )

    def __post_init__(self):
        if self.cskd_mode not in CSKD_MODES:
            raise ValueError(
                f"cskd_mode must be one of {list(CSKD_MODES)}, got {self.cskd_mode!r}. 'pairs' is the paper's "
                "method (the default); 'queue' needs no second forward pass."
            )
        if not (isinstance(self.cskd_queue_size, int) and self.cskd_queue_size >= 1):
            raise ValueError(
                f"cskd_queue_size must be an integer >= 1, got {self.cskd_queue_size!r} (default 8 predictions per "
                "class)."
            )
        if self.cskd_queue_dtype not in QUEUE_DTYPES:
            raise ValueError(f"cskd_queue_dtype must be one of {list(QUEUE_DTYPES)}, got {self.cskd_queue_dtype!r}.")
        if not (isinstance(self.cskd_stream_buffer_size, int) and self.cskd_stream_buffer_size >= 1):
            raise ValueError(
                f"cskd_stream_buffer_size must be an integer >= 1, got {self.cskd_stream_buffer_size!r} (default 8 "
                "examples per class)."
            )
        if self.cskd_mode == "pairs" and self.cskd_queue_size != 8:
            warnings.warn(
                f"cskd_queue_size={self.cskd_queue_size} has no effect in pairs mode: it is K of cskd_mode='queue'. "
                "Before hf-cskd 0.2 it also sized the per-class buffer of a streamed training set in pairs mode; that "
                "is now cskd_stream_buffer_size.",
                FutureWarning,
                stacklevel=3,
            )
        if not self.cskd_temperature > 0:
            raise ValueError(
                f"cskd_temperature must be > 0, got {self.cskd_temperature}. The paper uses 4 (the default)."
            )
        if not self.cskd_lambda >= 0:
            raise ValueError(
                f"cskd_lambda must be >= 0, got {self.cskd_lambda}. Use 0 for plain cross-entropy, 1 for the "
                "paper's default."
            )
        if not self.teacher_kd_temperature > 0:
            raise ValueError(f"teacher_kd_temperature must be > 0, got {self.teacher_kd_temperature} (default 4).")
        if not self.teacher_kd_weight >= 0:
            raise ValueError(
                f"teacher_kd_weight must be >= 0, got {self.teacher_kd_weight}. Use 0 to train without the teacher's "
                "term, 1 (the default) to weigh it as the cross-entropy."
            )
        for name in ("mixup_alpha", "cutmix_alpha"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}.")
        for name in ("mixup_switch_prob", "mixup_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability: it must be in [0, 1], got {getattr(self, name)}.")
        if not 0 < self.cskd_queue_unmixed_share < 1:
            raise ValueError(
                f"cskd_queue_unmixed_share must be in (0, 1), got {self.cskd_queue_unmixed_share}: queue mode needs some "
                "unmixed rows to fill the queue and some mixed rows to mix (default 0.25)."
            )
        super().__post_init__()

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (`Trainer` writes `training_args.bin` into every checkpoint) hold no token."""
        return {k: None if k.endswith("_token") else v for k, v in self.__dict__.items()}

    def __deepcopy__(self, memo: dict) -> "CSKDConfig":
        """A deep copy keeps the token (only pickles drop it)."""
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


CSKD_DEFAULTS = {
    f.name: f.default for f in fields(CSKDConfig) if f.name.startswith(("cskd_", "teacher_kd_", "mixup_", "cutmix_"))
}


def cskd_settings(args: TrainingArguments) -> SimpleNamespace:
    """The CS-KD (teacher, mixing) knobs of any training arguments: a `CSKDConfig`'s own, the defaults for plain
    `TrainingArguments`.

    Read at each use, so that a hyperparameter search that sets `cskd_lambda` on the arguments takes effect.
    """
    return SimpleNamespace(**{name: getattr(args, name, default) for name, default in CSKD_DEFAULTS.items()})
