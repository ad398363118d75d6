"""Calibration metrics from logits and labels: ECE, MCE, NLL, Brier, accuracy, reliability bins.

Everything is computed in float64 from log-softmax, so very large logits (over-confident
models) give finite NLL. Inputs may be numpy arrays, torch tensors or lists.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_NUM_BINS = 15


MCE_MIN_COUNT = 10


"""Bins with fewer examples are left out of MCE (and faded in the diagram): a bin of 2 examples has a gap of
0.5 by chance alone and would set MCE. When no bin has that many, MCE is over every non-empty bin."""


def _as_numpy(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected logits (N, num_labels) and labels (N,); got {logits.shape} and {labels.shape}.")
    if labels.size == 0:
        raise ValueError("Calibration metrics need at least one example.")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"Labels must lie in [0, {logits.shape[1]}); got values in [{labels.min()}, {labels.max()}].")
    return logits, labels


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _bins(probs: np.ndarray, labels: np.ndarray, num_bins: int) -> dict[str, np.ndarray]:
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bin_ids = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    counts = np.bincount(bin_ids, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bin_ids, weights=confidence, minlength=num_bins) / counts
        accuracy = np.bincount(bin_ids, weights=correct, minlength=num_bins) / counts
    return {
        "edges": np.linspace(0.0, 1.0, num_bins + 1),
        "counts": counts,
        "confidence": mean_confidence,
        "accuracy": accuracy,
    }


def reliability_bins(logits: Any, labels: Any, num_bins: int = DEFAULT_NUM_BINS) -> dict[str, np.ndarray]:
    """Per-bin data of a reliability diagram over equal-width confidence bins (lo, hi].

    Returns the bin edges, the number of examples, their mean confidence and their accuracy per
    bin (confidence and accuracy are NaN for empty bins).
    """
    logits, labels = _as_numpy(logits, labels)
    return _bins(np.exp(log_softmax(logits)), labels, num_bins)


def calibration_metrics(
    logits: Any, labels: Any, num_bins: int = DEFAULT_NUM_BINS, min_bin_count: int = MCE_MIN_COUNT
) -> dict[str, float]:
    """Top-1 accuracy, ECE and MCE (equal-width bins), NLL, the multi-class Brier score, mean confidence.

    ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|; MCE = max of the gap over the bins holding at least
    `min_bin_count` examples (over every non-empty bin when none does: `MCE_MIN_COUNT`).
    Brier = mean over examples of Σ_k (p_k − 1[k = y])² (range [0, 2]). `confidence` is the mean
    top-1 probability: above `accuracy`, the model is over-confident on average; below, under-confident.
    """
    logits, labels = _as_numpy(logits, labels)
    log_probs = log_softmax(logits)
    probs = np.exp(log_probs)
    bins = _bins(probs, labels, num_bins)
    filled = bins["counts"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    counted = bins["counts"][filled] >= min_bin_count
    one_hot = np.eye(logits.shape[1])[labels]
    return {
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "ece": float((bins["counts"][filled] / labels.size * gaps).sum()),
        "mce": float(gaps[counted].max() if counted.any() else gaps.max()),
        "nll": float(-log_probs[np.arange(labels.size), labels].mean()),
        "brier": float(((probs - one_hot) ** 2).sum(axis=1).mean()),
        "confidence": float(probs.max(axis=1).mean()),
    }


def make_compute_metrics(num_bins: int = DEFAULT_NUM_BINS) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for `Trainer` reporting accuracy, ECE, MCE, NLL and Brier."""

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return calibration_metrics(logits, eval_prediction.label_ids, num_bins)

    return compute_metrics


compute_metrics = make_compute_metrics()


def evaluate_module_path() -> str:
    """Path of the bundled `evaluate` module: `evaluate.load(evaluate_module_path())` works offline."""
    return str(Path(__file__).parent)  # `evaluate` loads the folder's `calibration.py`
