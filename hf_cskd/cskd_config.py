"""`TrainingArguments` with the CS-KD knobs."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class CSKDConfig(TrainingArguments):
    """Configuration for `CSKDTrainer`: every `TrainingArguments` field plus the CS-KD ones.

    The defaults are the paper's (T = 4, λ = 1). `cskd_lambda=0` trains with plain
    cross-entropy (the baseline), with no pairs loaded and no extra forward pass.
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

    def __post_init__(self):
        if not self.cskd_temperature > 0:
            raise ValueError(
                f"cskd_temperature must be > 0, got {self.cskd_temperature}. The paper uses 4 (the default)."
            )
        if not self.cskd_lambda >= 0:
            raise ValueError(
                f"cskd_lambda must be >= 0, got {self.cskd_lambda}. Use 0 for plain cross-entropy, 1 for the "
                "paper's default."
            )
        super().__post_init__()
