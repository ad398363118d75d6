#!/usr/bin/env python
"""Reproduce the paper's CIFAR-100 result: ResNet-18, cross-entropy vs CS-KD.

    accelerate launch recipes/reproduce_cifar100.py                              # CS-KD (T = 4, λ = 1)
    accelerate launch recipes/reproduce_cifar100.py --cskd_lambda 0 --output_dir outputs/cifar100_ce   # baseline

Paper (Yun et al., CVPR 2020, Table 1, ResNet-18 top-1 error): cross-entropy 24.71 ± 0.24 %,
CS-KD 21.99 ± 0.13 %. The official hyperparameters are the defaults here: SGD lr 0.1, momentum
0.9, weight decay 1e-4 (on all parameters, as the official code), batch 128, 200 epochs, LR x0.1
at 50 % and 75 % of training, random crop with 4-pixel zero padding + horizontal flip, T = 4,
λ = 1. The model is the paper's CIFAR ResNet-18 (3x3 stem, no max-pool), `hf_cskd`'s
`CifarResNetForImageClassification`. The final model is reported on the test split (no
checkpoint is selected on it). Expected time: roughly 1.5-3 GPU-hours on one modern GPU
(200 epochs x 391 steps, plus the pair forward); each epoch is evaluated on the test split.
"""

import logging
import math
import sys
from dataclasses import dataclass, field

import datasets
import torch
import transformers
from datasets import ClassLabel, load_dataset
from transformers import HfArgumentParser, ViTImageProcessorPil

from hf_cskd import CifarResNetConfig, CifarResNetForImageClassification, CSKDConfig, CSKDTrainer
from hf_cskd.calibration.metrics import make_compute_metrics
from hf_cskd.data.seeded_rows import SeededRows
from hf_cskd.data.transforms import eval_transform, train_transform

logger = logging.getLogger(__name__)

CIFAR100_MEAN, CIFAR100_STD = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]
PAPER_ERROR = {"cross-entropy": "24.71 ± 0.24 %", "CS-KD": "21.99 ± 0.13 %"}
OFFICIAL_DEFAULTS = {
    "output_dir": "outputs/cifar100_resnet18",
    "learning_rate": 0.1,
    "weight_decay": 1e-4,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 256,
    "num_train_epochs": 200,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 50,
    "report_to": "none",
    "remove_unused_columns": False,
    "dataloader_num_workers": 4,
    "use_cpu": not torch.accelerator.is_available(),
    "dataloader_pin_memory": torch.accelerator.is_available(),
}


@dataclass
class ReproductionArguments:
    dataset_name: str = field(default="uoft-cs/cifar100", metadata={"help": "Hub id or local folder of CIFAR-100."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the dataset."})
    image_column_name: str = field(default="img", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="fine_label", metadata={"help": "Column holding the 100 fine labels."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (official: 0.9)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the test set (debugging)."})


def official_optimizer(model: torch.nn.Module, args: CSKDConfig, momentum: float, train_size: int):
    """SGD on all parameters and LR x0.1 at 50 % and 75 % of the optimizer steps, as the official code."""
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=momentum,
                                weight_decay=args.weight_decay)  # fmt: skip
    if args.max_steps > 0:
        total = args.max_steps
    else:
        per_step = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        total = math.ceil(args.num_train_epochs * math.ceil(train_size / per_step))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[total // 2, total * 3 // 4], gamma=0.1)
    return optimizer, scheduler


def main(argv: list[str] | None = None) -> CSKDTrainer:
    parser = HfArgumentParser((ReproductionArguments, CSKDConfig))
    parser.set_defaults(**OFFICIAL_DEFAULTS)
    data_args, training_args = parser.parse_args_into_dataclasses(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    for library in (datasets, transformers):
        library.utils.logging.set_verbosity(training_args.get_process_log_level())
    transformers.set_seed(training_args.seed)
    if training_args.cskd_label_column is None:  # pair by the column the data arguments name
        training_args.cskd_label_column = data_args.label_column_name

    with training_args.main_process_first(desc="loading CIFAR-100"):
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    if "train" not in raw or "test" not in raw:
        raise ValueError(f"Expected 'train' and 'test' splits in {data_args.dataset_name}, found {list(raw)}.")
    for column in (data_args.image_column_name, data_args.label_column_name):
        if column not in raw["train"].column_names:
            raise ValueError(f"Column {column!r} not found; the dataset has {raw['train'].column_names}.")
    feature = raw["train"].features[data_args.label_column_name]
    labels = feature.names if isinstance(feature, ClassLabel) else [str(i) for i in range(100)]
    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].shuffle(seed=training_args.seed).select(range(data_args.max_train_samples))
    if data_args.max_eval_samples is not None:
        raw["test"] = raw["test"].select(range(data_args.max_eval_samples))

    config = CifarResNetConfig(num_labels=len(labels), id2label=dict(enumerate(labels)),
                               label2id={name: i for i, name in enumerate(labels)})  # fmt: skip
    model = CifarResNetForImageClassification(config)
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=CIFAR100_MEAN, image_std=CIFAR100_STD)
    columns = (data_args.image_column_name, data_args.label_column_name)
    # Crops and flips drawn from (seed, epoch, row): a resumed run sees the images an uninterrupted one would.
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    train = SeededRows(raw["train"], train_transform(processor, *columns, crop_padding=4, horizontal_flip=True), seed)
    test = raw["test"].with_transform(eval_transform(processor, *columns))

    trainer = CSKDTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=processor,
        compute_metrics=make_compute_metrics(),
        optimizers=official_optimizer(model, training_args, data_args.momentum, len(train)),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    metrics = trainer.evaluate(metric_key_prefix="test")
    method = "CS-KD" if training_args.cskd_lambda > 0 else "cross-entropy"
    metrics["test_error_percent"] = 100 * (1 - metrics["test_accuracy"])
    trainer.log_metrics("test", metrics)
    trainer.save_metrics("test", metrics)
    logger.info(f"{method}: top-1 error {metrics['test_error_percent']:.2f} % (paper: {PAPER_ERROR[method]})")
    strip = {k[len("test_") :]: v for k, v in metrics.items() if k.startswith("test_")}
    trainer.create_model_card(
        results={method: strip}, eval_split="test", dataset=data_args.dataset_name, dataset_tags=data_args.dataset_name
    )
    return trainer


if __name__ == "__main__":
    main()
