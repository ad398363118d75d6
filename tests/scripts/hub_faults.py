"""Checkpoint pushes (`hub_strategy`) and upload faults against the test's local Hub at $HF_ENDPOINT.

Argv: an output folder, then the phase: `strategies` (train with every_save and checkpoint pushes),
`private` (a push with `private=True` and a token given only to `push_to_hub`) or `faults` (pushes while
the server fails commits as the test arranged). Prints one JSON line.
"""

import hashlib
import json
import sys
from pathlib import Path

import huggingface_hub.utils._http as hub_http
import numpy as np
import torch
from datasets import Dataset
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from hf_cskd import CSKDConfig, CSKDTrainer
from hf_cskd.hub.push import HubUploadError, push_folder_to_hub

ALICE = "hf_alice_write_token"
out, phase = Path(sys.argv[1]), sys.argv[2]
hub_http.time.sleep = lambda seconds: None  # huggingface_hub's retry back-off, skipped to keep the test short


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def trainer_for(name: str, token: str | None = ALICE, **overrides) -> CSKDTrainer:
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=3)  # fmt: skip
    rng = np.random.default_rng(0)
    data = Dataset.from_dict({"pixel_values": rng.normal(size=(24, 1, 8, 8)).astype(np.float32),
                              "label": [i % 3 for i in range(24)]}).with_format("torch")  # fmt: skip
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8})
    args = CSKDConfig(output_dir=str(out / name), max_steps=4, per_device_train_batch_size=6, use_cpu=True,
                      report_to="none", disable_tqdm=True, hub_token=token, **overrides)  # fmt: skip
    return CSKDTrainer(
        model=ViTForImageClassification(config), args=args, train_dataset=data, processing_class=processor
    )


report = {}
if phase == "strategies":
    for strategy in ("every_save", "checkpoint"):
        trainer = trainer_for(strategy, save_strategy="steps", save_steps=2, push_to_hub=True, hub_strategy=strategy,
                              hub_model_id=f"alice/{strategy}")  # fmt: skip
        trainer.train()
        trainer.push_to_hub()
        report[strategy] = sorted(p.name for p in (out / strategy).rglob("*") if p.is_file())
elif phase == "private":
    trainer = trainer_for("private-push", token=None, save_strategy="no")  # args.push_to_hub stays False
    trainer.train()
    trainer.push_to_hub(private=True, token=ALICE)
    report["local"] = sorted(p.name for p in (out / "private-push").iterdir() if p.is_file())
else:
    trainer = trainer_for("faults", save_strategy="no")
    trainer.train()
    trainer.save_model()
    before = digest(out / "faults")
    report["retried"] = str(push_folder_to_hub(out / "faults", "alice/flaky", token=ALICE))  # 2 x 500, then fine
    for fault in ("500", "drop"):
        try:
            push_folder_to_hub(out / "faults", "alice/flaky", token=ALICE)
        except HubUploadError as error:
            report[fault] = {"message": str(error), "reached_hub": error.reached_hub}
    report["local_output_unchanged"] = before == digest(out / "faults")
    try:
        trainer.args.hub_model_id = "alice/trainer-push"
        trainer.push_to_hub()
    except HubUploadError as error:
        report["trainer"] = {"message": str(error), "reached_hub": error.reached_hub}
    # The trainer's push saved the model and wrote its card first, as Trainer.push_to_hub does: both are intact.
    reloaded = ViTForImageClassification.from_pretrained(out / "faults")
    report["trainer_output_intact"] = (out / "faults" / "README.md").is_file() and all(
        torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), trainer.model.state_dict().values())
    )
print(json.dumps(report))
