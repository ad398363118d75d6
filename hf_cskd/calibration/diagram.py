"""The reliability diagram: confidence against accuracy per bin, as a figure for the model card."""

from pathlib import Path
from typing import Any

import numpy as np

from .metrics import DEFAULT_NUM_BINS, MCE_MIN_COUNT, calibration_metrics, reliability_bins


def reliability_gaps(bins: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the reliability diagram draws per bin: accuracy, and the gap to the mean confidence.

    `over` is the part of the gap where confidence exceeds accuracy (over-confidence), `under`
    where accuracy exceeds confidence (under-confidence); each is 0 elsewhere and in empty bins.
    """
    filled = bins["counts"] > 0
    accuracy = np.where(filled, np.nan_to_num(bins["accuracy"]), 0.0)
    gap = np.where(filled, np.nan_to_num(bins["confidence"]) - accuracy, 0.0)
    return {"accuracy": accuracy, "over": np.clip(gap, 0, None), "under": np.clip(-gap, 0, None)}


def plot_reliability_diagram(
    logits: Any,
    labels: Any,
    path: str | Path,
    num_bins: int = DEFAULT_NUM_BINS,
    title: str = "Reliability diagram",
    min_bin_count: int = MCE_MIN_COUNT,
) -> Path:
    """Save a PNG: accuracy per confidence bin against the diagonal, above a confidence histogram.

    Each bin's accuracy is a grey bar and its mean confidence a black tick; the gap between them is an
    unfilled hatched box (red: over-confident, confidence above accuracy; blue: under-confident), so
    the grey bar always reads as the accuracy. Each bin shows its number of examples; bins with fewer
    than `min_bin_count` are faded and left out of MCE, as the title says.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = reliability_bins(logits, labels, num_bins)
    metrics = calibration_metrics(logits, labels, num_bins, min_bin_count)
    bars = reliability_gaps(bins)
    edges, width = bins["edges"][:-1], 1.0 / num_bins
    filled, small = bins["counts"] > 0, (bins["counts"] > 0) & (bins["counts"] < min_bin_count)
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    for faded in (False, True):
        chosen = filled & (small == faded)
        alpha = 0.3 if faded else 1.0
        top.bar(edges[chosen], bars["accuracy"][chosen], width=width, align="edge", edgecolor="black",
                color="tab:gray", alpha=alpha)  # fmt: skip
        gaps = (("over", "tab:red", bars["accuracy"]), ("under", "tab:blue", bars["accuracy"] - bars["under"]))
        for part, color, low in gaps:
            shown = chosen & (bars[part] > 0)
            top.bar(edges[shown], bars[part][shown], bottom=low[shown], width=width, align="edge", fill=False,
                    hatch="//", edgecolor=color, linewidth=1.2, alpha=alpha)  # fmt: skip
        top.hlines(np.nan_to_num(bins["confidence"])[chosen], edges[chosen], edges[chosen] + width, colors="black",
                   linewidth=2, alpha=alpha)  # fmt: skip
    for left, count, height in zip(edges[filled], bins["counts"][filled], np.fmax(
            bars["accuracy"], np.nan_to_num(bins["confidence"]))[filled]):  # fmt: skip
        top.text(left + width / 2, min(height + 0.02, 0.97), str(int(count)), ha="center", va="bottom", fontsize=6)
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.05))
    mce_note = f"MCE {100 * metrics['mce']:.2f}% (bins of {min_bin_count}+ examples)"
    top.set_title(
        f"{title}\nECE {100 * metrics['ece']:.2f}%  {mce_note}\naccuracy {100 * metrics['accuracy']:.2f}%  "
        f"mean confidence {100 * metrics['confidence']:.2f}%",
        fontsize=8,
    )
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="tab:gray", edgecolor="black", label="accuracy (number: examples in the bin)"),
        Line2D([], [], color="black", linewidth=2, label="mean confidence"),
        Patch(fill=False, hatch="//", edgecolor="tab:red", label="over-confident gap"),
        Patch(fill=False, hatch="//", edgecolor="tab:blue", label="under-confident gap"),
        Patch(
            facecolor="tab:gray", alpha=0.3, edgecolor="black", label=f"bin of < {min_bin_count} examples (not in MCE)"
        ),
        Line2D([], [], color="black", linestyle="--", linewidth=1, label="perfect calibration"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=6.5)
    bottom.bar(edges, bins["counts"] / bins["counts"].sum(), width=width, align="edge", edgecolor="black")
    bottom.set(xlabel="confidence", ylabel="fraction")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
