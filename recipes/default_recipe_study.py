#!/usr/bin/env python
"""The main job, several seeds: cross-entropy vs CS-KD (paper and queue mode), raw and calibrated.

Runs `recipes/train_vit.py` with its defaults (the embedded digits, a small ViT from scratch,
temperature scaling fitted on the validation split) once per seed and method, each in a fresh
process, and prints mean ± std of the validation and test metrics before and after temperature
scaling (the validation numbers are what the embedded run's defaults are chosen on).

    python recipes/default_recipe_study.py                 # 3 seeds x 3 methods, ~15 min on 2 CPU cores
    python recipes/default_recipe_study.py --seeds 1 --extra --max_steps 20     # smoke test
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

RECIPE = Path(__file__).parent / "train_vit.py"
METHODS = {
    "cross-entropy": ["--cskd_lambda", "0"],
    "CS-KD": ["--cskd_mode", "pairs"],
    "CS-KD (queue)": ["--cskd_mode", "queue"],
}
COLUMNS = {"accuracy": (100, "%"), "ece": (100, "%"), "nll": (1, "")}


def mean_std(values: list[float], scale: float, unit: str) -> str:
    values = [scale * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    digits = 2 if unit else 4
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}{unit}"


def table(runs: dict[str, list[dict]], split: str) -> str:
    lines = ["| method | accuracy | ECE | NLL |", "|---|---|---|---|"]
    for method, results in runs.items():
        for label, prefix in (("raw", f"{split}_raw_"), ("+ temperature scaling", f"{split}_")):
            cells = [mean_std([r[prefix + k] for r in results], *COLUMNS[k]) for k in COLUMNS]
            lines.append(f"| {method}, {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output_dir", default="outputs/default_recipe_study")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed on to train_vit.py")
    args = parser.parse_args()
    runs = {method: [] for method in METHODS}
    jobs = [(method, seed) for seed in range(args.seeds) for method in METHODS]
    for method, seed in tqdm(jobs, desc="default recipe", unit="run"):
        out = Path(args.output_dir) / f"{method.replace(' ', '_').replace('(', '').replace(')', '')}-seed{seed}"
        results = out / "test_results.json"
        if not results.is_file():  # resumable: finished runs are kept
            command = [sys.executable, str(RECIPE), "--seed", str(seed), "--output_dir", str(out), "--disable_tqdm",
                       "true", *METHODS[method], *args.extra]  # fmt: skip
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        calibration = json.loads((out / "calibration.json").read_text())  # validation, before and after scaling
        runs[method].append({**json.loads(results.read_text()),
                             **{f"validation_raw_{k}": v for k, v in calibration["before"].items()},
                             **{f"validation_{k}": v for k, v in calibration["after"].items()}})  # fmt: skip
    for split in ("test", "validation"):
        print(f"\n{split.capitalize()} split, mean ± std over {args.seeds} seeds (recipes/train_vit.py defaults"
              f"{'; temperature fitted on this split' if split == 'validation' else ''}):\n")  # fmt: skip
        print(table(runs, split))


if __name__ == "__main__":
    main()
