"""Time of every calibration metric with 95 % bootstrap intervals (target: <= 2 s for 10,000 examples x 1,000 classes
x 1,000 resamples on 2 CPU cores), beside the point estimates alone and torchmetrics' ECE for scale.

    python benchmarks/calibration_metrics.py [--examples 10000] [--classes 1000] [--resamples 1000]
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from hf_cskd.calibration.metrics import calibration_metrics


def seconds(function, repeats: int) -> list[float]:
    """Wall time of each of `repeats` calls (the first pays one-time costs: torch's thread pool, FFT plans)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(round(time.perf_counter() - start, 3))
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.examples)
    logits = rng.normal(size=(args.examples, args.classes)) * 2
    logits[np.arange(args.examples), labels] += 4
    point = seconds(lambda: calibration_metrics(logits, labels), args.repeats)
    both = seconds(lambda: calibration_metrics(logits, labels, bootstrap_resamples=args.resamples), args.repeats)
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, target = torch.softmax(torch.from_numpy(logits), dim=1), torch.from_numpy(labels)
    reference = seconds(lambda: multiclass_calibration_error(probs, target, args.classes, n_bins=15), args.repeats)
    print(json.dumps({
        "examples": args.examples, "classes": args.classes, "resamples": args.resamples, "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "all_metrics_s": statistics.median(point),
        "all_metrics_with_intervals_s": statistics.median(both), "all_metrics_with_intervals_runs_s": both,
        "torchmetrics_ece_alone_s": statistics.median(reference),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
