#!/usr/bin/env python
"""Pretrain a small image classifier on the glyph set, offline, and save it as a Hub-style checkpoint.

The stand-in for a pretrained Hub checkpoint (there is no internet here): 62 classes of digits and
letters rendered from matplotlib's fonts (`recipes/data/glyphs.py`), plain cross-entropy. The
saved folder (`model.safetensors`, `config.json`, `preprocessor_config.json`) is what
`recipes/train_vit.py --model_name_or_path FOLDER --ignore_mismatched_sizes` fine-tunes, exactly as
it would fine-tune `google/vit-base-patch16-224-in21k`.

    python recipes/pretrain_glyphs.py --model vit       # -> outputs/pretrained/glyphs-vit: 90.2 %, ~12 min
    python recipes/pretrain_glyphs.py --model resnet    # -> outputs/pretrained/glyphs-resnet: 91.2 %, ~9 min

Held-out glyph accuracy and time with OMP_NUM_THREADS=1, the two side by side on 2 cores (the
checkpoints behind RESULTS.md); 31,000 images. The same seed gives the same weights only at the same
thread count: the ResNet on 2 threads took 4.5 min and reached 91.5 % with other weights. With 6,200
images and 10 epochs the ViT reached 31 % and fine-tuned worse than from scratch.
"""

import argparse
import sys
from pathlib import Path

import torch
import transformers
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from hf_cskd import CifarResNetConfig, CifarResNetForImageClassification, CSKDConfig, CSKDTrainer
from hf_cskd.calibration.metrics import compute_metrics
from hf_cskd.data.transforms import eval_transform, train_transform

sys.path.insert(0, str(Path(__file__).parent / "data"))
from glyphs import CLASSES, glyph_dataset  # noqa: E402

IMAGE_SIZE = 16  # the embedded recipe's input size: its small ViT and this one take the same images
EPOCHS = {"vit": 20, "resnet": 10}  # the ResNet converges in fewer epochs


def build_model(kind: str) -> torch.nn.Module:
    labels = {"id2label": dict(enumerate(CLASSES)), "label2id": {c: i for i, c in enumerate(CLASSES)}}
    if kind == "vit":  # the embedded recipe's from-scratch ViT
        config = ViTConfig(image_size=IMAGE_SIZE, patch_size=4, num_channels=3, hidden_size=96, num_hidden_layers=4,
                           num_attention_heads=4, intermediate_size=192, hidden_dropout_prob=0.1,
                           num_labels=len(CLASSES), **labels)  # fmt: skip
        return ViTForImageClassification(config)
    config = CifarResNetConfig(num_channels=3, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], num_labels=len(CLASSES),
                               **labels)  # fmt: skip
    return CifarResNetForImageClassification(config)


def main(argv: list[str] | None = None) -> CSKDTrainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["vit", "resnet"], default="vit")
    parser.add_argument("--per_class", type=int, default=500, help="training images per class")
    parser.add_argument("--eval_per_class", type=int, default=20)
    parser.add_argument("--epochs", type=float, default=None, help=f"default: {EPOCHS}")
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=None, help="default: outputs/pretrained/glyphs-<model>")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or EPOCHS[args.model]
    args.output_dir = args.output_dir or f"outputs/pretrained/glyphs-{args.model}"
    transformers.set_seed(args.seed)
    processor = ViTImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    train = glyph_dataset(args.per_class, seed=args.seed)
    held_out = glyph_dataset(args.eval_per_class, seed=args.seed + 10_000)  # other renderings, other seed
    training_args = CSKDConfig(
        output_dir=args.output_dir, cskd_lambda=0.0, num_train_epochs=args.epochs, max_steps=args.max_steps,
        learning_rate=1e-3, weight_decay=0.05, warmup_steps=0.1, lr_scheduler_type="cosine",
        per_device_train_batch_size=128, per_device_eval_batch_size=256, eval_strategy="no", save_strategy="no",
        logging_steps=50, remove_unused_columns=False, report_to="none", seed=args.seed,
        use_cpu=not torch.accelerator.is_available(), dataloader_pin_memory=torch.accelerator.is_available(),
    )  # fmt: skip
    trainer = CSKDTrainer(
        model=build_model(args.model), args=training_args, processing_class=processor,
        train_dataset=train.with_transform(train_transform(processor, scale=(0.5, 1.0), horizontal_flip=False)),
        eval_dataset=held_out.with_transform(eval_transform(processor)), compute_metrics=compute_metrics,
    )  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate(metric_key_prefix="glyphs")
    trainer.save_metrics("glyphs", metrics)
    trainer.save_model()
    print(f"pretrained {args.model} on {len(train)} glyph images: held-out accuracy {metrics['glyphs_accuracy']:.3f};"
          f" saved to {args.output_dir}")  # fmt: skip
    return trainer


if __name__ == "__main__":
    main()
