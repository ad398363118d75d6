"""Load any image classifier of the Hub (transformers or timm format) for fine-tuning on a labelled dataset.

Three things go wrong silently with a plain `from_pretrained`: a missing local folder is retried
as a Hub id; timm 1.0.31+ checkpoints (their `model_args` carry `num_classes`) do not load in
transformers 5.24; and a head whose size happens to match is kept although its rows mean other
classes. This module loads the model and its image processor and makes the head's row i mean the
dataset's class i (`classifier_head.match_head_to_labels`).
"""

import os
from typing import Any

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.utils import logging

from ..hub.model_card import hub_id
from .classifier_head import match_head_to_labels

logger = logging.get_logger(__name__)


def looks_like_a_path(name: str) -> bool:
    """A name meant as a local folder: it exists, starts like a path, or its parent folder exists here."""
    parent = os.path.dirname(name.rstrip("/"))
    return os.path.exists(name) or hub_id(name) is None or bool(parent and os.path.isdir(parent))


def check_model_path(name: str) -> None:
    """A missing local folder is reported as such, at once (no Hub retries, not as a malformed Hub id)."""
    if not os.path.exists(name) and looks_like_a_path(name):
        raise FileNotFoundError(
            f"--model_name_or_path {name}: no such folder. Pass an existing local checkpoint folder (with "
            "config.json) or a Hub model id such as google/vit-base-patch16-224-in21k."
        )


def load_config(name: str, **common: Any) -> Any:
    """The checkpoint's config; timm checkpoints lose the `num_classes` of their `model_args` (the head size is
    the config's `num_labels`; with both, transformers 5.24 fails to build the model)."""
    check_model_path(name)
    try:
        config = AutoConfig.from_pretrained(name, **common)
    except OSError as error:
        if os.path.exists(name):
            raise  # a local folder that is not a checkpoint: transformers says what is missing
        raise OSError(
            f"Could not load {name!r} as a Hub model id (and no such local folder exists): {error}"
        ) from error
    if isinstance(getattr(config, "model_args", None), dict):
        config.model_args = {key: value for key, value in config.model_args.items() if key != "num_classes"}
    return config


def has_classification_head(config: Any) -> bool:
    architectures = getattr(config, "architectures", None) or []
    return any("ForImageClassification" in a for a in architectures) or (
        config.model_type == "timm_wrapper" and bool(getattr(config, "num_labels", 0))
    )


def load_image_processor(name: str, **common: Any) -> Any:
    """The checkpoint's image processor, with the PIL backend where there is one (torchvision is not a dependency)."""
    try:
        return AutoImageProcessor.from_pretrained(name, backend="pil", **common)
    except ImportError as error:
        raise ImportError(
            f"The image processor of {name} needs torchvision ({error}). Install it with a matching torch, e.g. "
            "`pip install 'hf-cskd[timm]'` (README: timm checkpoints)."
        ) from error


def load_image_classifier(
    name: str,
    labels: list[str],
    ignore_mismatched_sizes: bool = False,
    keep_pretrained_head: bool = False,
    **common: Any,
) -> tuple[Any, Any, str | None]:
    """The model (head for `labels`, row i = class i), its image processor, and what was done to the head.

    A head of another size is replaced only with `ignore_mismatched_sizes` (else an error says so);
    a head of the right size with other class names is reordered by name or re-initialized
    (`match_head_to_labels`; `keep_pretrained_head` keeps it as it is).
    """
    base = load_config(name, **common)
    has_head = has_classification_head(base)
    if has_head and base.num_labels != len(labels) and not ignore_mismatched_sizes:
        raise ValueError(
            f"{name} has a classification head for {base.num_labels} classes but the dataset has {len(labels)}. "
            "Pass --ignore_mismatched_sizes to replace the head with a new one."
        )
    names = getattr(base, "id2label", None) or {}  # some configs (Pvt) keep None
    checkpoint_labels = [str(names.get(i, f"LABEL_{i}")) for i in range(base.num_labels)] if has_head else None
    id2label = dict(enumerate(labels))
    config = load_config(name, **common)
    config.num_labels = len(labels)
    config.id2label, config.label2id = id2label, {label: i for i, label in id2label.items()}
    config.finetuning_task = "image-classification"
    model = AutoModelForImageClassification.from_pretrained(
        name, config=config, ignore_mismatched_sizes=ignore_mismatched_sizes, **common
    )
    head = None
    if checkpoint_labels is not None and len(checkpoint_labels) == len(labels):
        head = match_head_to_labels(model, checkpoint_labels, labels, keep=keep_pretrained_head)
    elif has_head:
        head = f"the checkpoint's head ({base.num_labels} classes) was replaced by a new one for {len(labels)}"
    if head is not None:
        logger.warning(f"{name}: {head}.")
    return model, load_image_processor(name, **common), head


def load_teacher(name: str, **common: Any) -> tuple[Any, Any]:
    """A fine-tuned classifier to distill from, as it was saved (its head and classes kept), and its processor."""
    model = AutoModelForImageClassification.from_pretrained(name, config=load_config(name, **common), **common)
    return model, load_image_processor(name, **common)
