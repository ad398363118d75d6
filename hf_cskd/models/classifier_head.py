"""The classification head of any image classifier: found, matched to a dataset's classes by name.

Temperature scaling divides the head by T; fine-tuning on new data must not keep a head whose
rows mean other classes. Both need the final `nn.Linear` that produces the logits, in
transformers models (`classifier`, `head`, `fc`, ...) and in timm models (`pretrained_cfg["classifier"]`).
"""

from collections.abc import Sequence

import torch
from torch import nn

HEAD_NAMES = (
    "classifier",
    "head",
    "score",
    "fc",
    "cls_classifier",
    "distillation_classifier",
    "dist_head",
    "classifier_distill",
)
"""Where transformers classifiers keep their head(s); distilled models (DeiT, LeViT, SwiftFormer) average two."""


def _timm_head(model: nn.Module) -> nn.Module | None:
    """The head of a timm model (bare or inside transformers' `TimmWrapperForImageClassification`)."""
    timm_model = getattr(model, "timm_model", model)
    name = (getattr(timm_model, "pretrained_cfg", None) or {}).get("classifier")
    if not name:
        return None
    try:
        return timm_model.get_submodule(name)
    except AttributeError:
        return None


def find_classifier_layers(model: nn.Module) -> list[nn.Linear]:
    """The final `nn.Linear` layer(s) producing the logits (`num_labels` outputs) of a classifier.

    Looks in the head named by a timm model's `pretrained_cfg["classifier"]`, then in the usual head
    attributes of transformers classifiers (`HEAD_NAMES`), then at the model's last `nn.Linear` with `num_labels` outputs.
    Raises rather than guess when there is none.
    """
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    timm_head = _timm_head(model)
    heads = [timm_head] if timm_head is not None else [getattr(model, n) for n in HEAD_NAMES if hasattr(model, n)]
    layers = []
    for head in heads:
        linears = [m for m in ([head] if isinstance(head, nn.Linear) else head.modules()) if isinstance(m, nn.Linear)]
        if linears and (num_labels is None or linears[-1].out_features == num_labels):
            layers.append(linears[-1])
    if not layers and num_labels is not None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
        layers = linears[-1:]
    if not layers:
        raise ValueError(
            f"Could not find the classification head of {type(model).__name__} (looked for a Linear layer with "
            f"{num_labels} outputs under `classifier`, `head`, `score`, `fc` or timm's pretrained_cfg['classifier'], "
            "then anywhere in the model)."
        )
    return layers


def is_unnamed(labels: Sequence[str]) -> bool:
    """transformers' placeholder names (`LABEL_0`, ...): a checkpoint that never said what its classes are."""
    return all(str(name) == f"LABEL_{i}" for i, name in enumerate(labels))


@torch.no_grad()
def match_head_to_labels(
    model: nn.Module, checkpoint_labels: Sequence[str], dataset_labels: Sequence[str], keep: bool = False
) -> str | None:
    """Make a kept head's row i mean the dataset's class i; return what was done (None: nothing needed).

    Same names in the same order: nothing. Same set of names in another order: the head's rows are
    reordered by name. Other names: the head is re-initialized (normal, std = `initializer_range`,
    zero bias) unless `keep`, which keeps it deliberately (e.g. classes renamed on purpose).
    """
    checkpoint_labels, dataset_labels = [str(n) for n in checkpoint_labels], [str(n) for n in dataset_labels]
    if checkpoint_labels == dataset_labels:
        return None
    layers = find_classifier_layers(model)
    if sorted(checkpoint_labels) == sorted(dataset_labels) and len(set(dataset_labels)) == len(dataset_labels):
        order = torch.tensor([checkpoint_labels.index(name) for name in dataset_labels])
        for layer in layers:
            layer.weight.copy_(layer.weight[order.to(layer.weight.device)])
            if layer.bias is not None:
                layer.bias.copy_(layer.bias[order.to(layer.bias.device)])
        return "the checkpoint's head has the dataset's classes in another order: its rows were reordered by name"
    shown = ", ".join(checkpoint_labels[:5]) + (", ..." if len(checkpoint_labels) > 5 else "")
    if keep:
        return f"the checkpoint's head (classes {shown}) was kept as asked, although the dataset's classes differ"
    other = (
        f"names no classes ({shown})" if is_unnamed(checkpoint_labels) else
        f"predicts other classes ({shown}) than the dataset's"
    )  # fmt: skip
    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02) or 0.02)
    for layer in layers:
        layer.weight.normal_(0.0, std)
        if layer.bias is not None:
            layer.bias.zero_()
    return f"the checkpoint's head {other}: it was re-initialized (pass --keep_pretrained_head to keep it)"
