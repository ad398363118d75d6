"""Pretrain a glyph checkpoint, publish it on the Hub at $HF_ENDPOINT (the test's local server) and
fine-tune it by repo id with recipes/train_vit.py: the path a user takes with a real Hub checkpoint.

Run in a subprocess: huggingface_hub reads HF_ENDPOINT when imported. Prints one JSON line.
"""

import json
import sys
from pathlib import Path

import torch

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
sys.path.insert(0, str(RECIPES))
import pretrain_glyphs  # noqa: E402
import train_vit  # noqa: E402

from hf_cskd.hub.push import push_folder_to_hub  # noqa: E402

out = Path(sys.argv[1])
pretrained = pretrain_glyphs.main(["--per_class", "2", "--eval_per_class", "1", "--max_steps", "2",
                                   "--output_dir", str(out / "glyphs-vit")])  # fmt: skip
push_folder_to_hub(out / "glyphs-vit", "alice/glyphs-vit", token="hf_alice_write_token")
encoder = {k: v for k, v in pretrained.model.state_dict().items() if not k.startswith("classifier")}
fine = train_vit.main(["--model_name_or_path", "alice/glyphs-vit", "--ignore_mismatched_sizes",
                       "--max_train_samples_per_class", "3", "--max_steps", "1", "--learning_rate", "0",
                       "--max_eval_samples", "16", "--disable_tqdm", "true", "--bootstrap_resamples", "0", "--output_dir", str(out / "fine")])  # fmt: skip
tuned = fine.model.state_dict()
print(json.dumps({
    "encoder_unchanged": all(torch.equal(tuned[k], v) for k, v in encoder.items()),
    "num_labels": fine.model.config.num_labels,
    "train_examples": len(fine.train_dataset),
    "card": (out / "fine" / "README.md").read_text(),
}))  # fmt: skip
