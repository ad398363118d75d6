"""hf-cskd: Class-wise Self-Knowledge Distillation (CS-KD) for Hugging Face `Trainer`."""

from .collator import DataCollatorForClassPairs
from .cskd_config import CSKDConfig
from .cskd_trainer import CSKDTrainer
from .losses import class_wise_kd_loss
from .modeling_cifar_resnet import CifarResNetConfig, CifarResNetForImageClassification  # registers Auto*
from .pairing import ClassPairedDataset

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
