#!/usr/bin/env python
"""Publish hf-cskd's calibration metrics as a Hub metric (an `evaluate` Space), so that anyone can
`evaluate.load("<user>/calibration")` without installing hf-cskd.

    python recipes/push_calibration_metric.py --folder outputs/calibration-metric            # build only
    python recipes/push_calibration_metric.py --folder outputs/calibration-metric --repo_id <user>/calibration

The Space is self-contained: the `evaluate` module (`hf_cskd/calibration/calibration.py`) beside the metrics
it computes (`hf_cskd/calibration/metrics.py`, imported relatively), numpy and torch as requirements, and
evaluate's Gradio widget. `hf auth login` (or HF_TOKEN) gives the token; the Hub refuses with what to do.
"""

import argparse
import shutil
from pathlib import Path

import hf_cskd.calibration
from hf_cskd.hub.push import explained_refusals

SOURCE = Path(hf_cskd.calibration.__file__).parent
LIBRARY_IMPORT = "from hf_cskd.calibration.metrics import"
README = """---
title: Calibration
emoji: 🎯
colorFrom: blue
colorTo: red
sdk: gradio
app_file: app.py
pinned: false
tags:
- evaluate
- metric
- calibration
description: "Accuracy, ECE, adaptive, classwise and smooth ECE, MCE, NLL and Brier from logits, with bootstrap intervals."
---

# Calibration

Calibration metrics of a classifier from its logits (`predictions`, one list per example) and the class indices
(`references`), from [hf-cskd](https://github.com/hf-cskd/hf-cskd) (`hf_cskd.calibration.metrics`):
accuracy, ECE (15 equal-width bins, top-label), adaptive ECE, classwise ECE, smooth ECE, MCE, NLL, Brier and
mean confidence; `bootstrap_resamples=1000` adds a 95 % interval to each (`<key>_ci`).

```python
import evaluate

calibration = evaluate.load("{repo_id}")
calibration.compute(predictions=logits, references=labels, bootstrap_resamples=1000)
```
"""
APP = """import evaluate
from evaluate.utils import launch_gradio_widget

launch_gradio_widget(evaluate.load("calibration"))
"""


def build_space(folder: Path, repo_id: str = "<user>/calibration") -> Path:
    """Write the Space: `calibration.py` (importing `calibration_metrics.py` beside it), requirements, card, app."""
    module = (SOURCE / "calibration.py").read_text()
    if LIBRARY_IMPORT not in module:
        raise RuntimeError(f"{SOURCE / 'calibration.py'} no longer imports the metrics as `{LIBRARY_IMPORT}`.")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calibration.py").write_text(module.replace(LIBRARY_IMPORT, "from .calibration_metrics import"))
    shutil.copyfile(SOURCE / "metrics.py", folder / "calibration_metrics.py")
    (folder / "requirements.txt").write_text("evaluate\nnumpy\ntorch\n")
    (folder / "README.md").write_text(README.replace("{repo_id}", repo_id))
    (folder / "app.py").write_text(APP)
    return folder


def push_space(folder: Path, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Create the Space (Gradio) if needed and upload the folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with explained_refusals(repo_id):
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder,
                                   commit_message="Calibration metrics from hf-cskd")  # fmt: skip
    return commit.commit_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="outputs/calibration-metric", help="Where the Space is written.")
    parser.add_argument("--repo_id", help="The Space to publish to (<user>/calibration); omit to build only.")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args()
    folder = build_space(Path(args.folder), args.repo_id or "<user>/calibration")
    print(f"Built the metric Space in {folder}: evaluate.load('{folder}') loads it offline.")
    if args.repo_id:
        print(f"Pushed: {push_space(folder, args.repo_id, private=args.private or None)}")
        print(f"Load it anywhere with evaluate.load('{args.repo_id}').")


if __name__ == "__main__":
    main()
