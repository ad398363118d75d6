"""Intra-class variation of penultimate features: the paper's second claim, that CS-KD "reduces intra-class
variations", as a number.

The features are what the classification head receives (captured by a hook on the layer that
`classifier_head.find_classifier_layers` finds), so the helper works for any classifier whose head
it finds: every transformers image classifier covered by the recipe and timm models. The measure
is scale-free: features are L2-normalized, and the mean squared distance of each example to its
class mean is divided by the mean squared distance between class means.
"""

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from .models.classifier_head import find_classifier_layers


def intra_class_variation(features: Any, labels: Any) -> dict[str, float]:
    """`within`: mean over examples of ||f_i - mu_{y_i}||^2; `between`: mean over pairs of classes of
    ||mu_a - mu_b||^2; `ratio` = within / between (lower: tighter classes). f = features / ||features||,
    mu_c = the mean of class c's normalized features. Needs two classes or more."""
    features = np.asarray(features, dtype=np.float64).reshape(len(labels), -1)
    labels = np.asarray(labels).astype(np.int64)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError("Intra-class variation needs examples of two classes or more.")
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    within = float(((features - means[np.searchsorted(classes, labels)]) ** 2).sum(axis=1).mean())
    gaps = ((means[:, None, :] - means[None, :, :]) ** 2).sum(axis=-1)
    between = float(gaps[np.triu_indices(len(classes), k=1)].mean())
    return {"within": within, "between": between, "ratio": within / between}


@torch.no_grad()
def penultimate_features(model: nn.Module, batches: Iterable[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) over `batches` (dicts of model inputs with `labels`): what the head receives, in eval
    mode, one row per example (token dimensions of size 1 squeezed, others averaged)."""
    head = find_classifier_layers(model)[0]
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].detach()))
    was_training = model.training
    model.eval()
    features, labels = [], []
    device = next(model.parameters()).device
    try:
        for batch in batches:
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
            captured.clear()
            model(**inputs)
            feature = captured[0]
            feature = feature.flatten(1) if feature.ndim == 2 or feature.shape[1:-1].numel() == 1 else (
                feature.mean(dim=tuple(range(1, feature.ndim - 1))))  # fmt: skip
            features.append(feature.float().cpu().numpy())
            labels.append(np.asarray(batch["labels"]))
    finally:
        hook.remove()
        model.train(was_training)
    return np.concatenate(features), np.concatenate(labels)
