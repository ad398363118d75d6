"""hf-cskd: Class-wise Self-Knowledge Distillation (CS-KD) for Hugging Face `Trainer`."""

from .losses.cskd import class_wise_kd_loss
from .models.modeling_cifar_resnet import CifarResNetConfig, CifarResNetForImageClassification  # registers Auto*
from .targets.collator import DataCollatorForClassPairs
from .targets.pairing import ClassPairedDataset
from .trainer.cskd_config import CSKDConfig
from .trainer.cskd_trainer import CSKDTrainer

__version__ = "0.1.0"

__all__ = [
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "CSKDConfig",
    "CSKDTrainer",
    "ClassPairedDataset",
    "DataCollatorForClassPairs",
    "class_wise_kd_loss",
]
