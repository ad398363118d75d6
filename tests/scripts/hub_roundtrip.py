"""Train, calibrate, push to the Hub at $HF_ENDPOINT (the test's local server), download, compare.
`--teacher`: train with a teacher's distillation term as well (the push must hold the student alone).

Run in a subprocess: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when imported.
Prints one JSON line of findings for the test to check.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    pipeline,
)

from hf_cskd import CSKDConfig, CSKDTrainer
from hf_cskd.calibration.metrics import compute_metrics
from hf_cskd.hub.push import push_folder_to_hub

ALICE, BOB = "hf_alice_write_token", "hf_bob_write_token"
out = Path(sys.argv[1])


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def expect_permission_error(function, status: str) -> str:
    try:
        function()
    except PermissionError as error:
        assert f"HTTP {status}" in str(error), error
        return str(error)
    raise AssertionError(f"expected a PermissionError ({status})")


torch.manual_seed(0)
rng = np.random.default_rng(0)
labels = ["circle", "square", "cross"]
config = ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, num_labels=3, id2label=dict(enumerate(labels)),
                   label2id={n: i for i, n in enumerate(labels)})  # fmt: skip
processor = ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(30)]
targets = [i % 3 for i in range(30)]
pixels = processor(images, return_tensors="pt")["pixel_values"].numpy()
data = Dataset.from_dict({"pixel_values": pixels, "label": targets}).with_format("torch")
train, held_out = data.select(range(18)), data.select(range(18, 30))

args = CSKDConfig(output_dir=str(out), max_steps=3, per_device_train_batch_size=6, use_cpu=True, report_to="none",
                  save_strategy="no", disable_tqdm=True, hub_model_id="alice/cskd-tiny", hub_token=ALICE)  # fmt: skip
student = ViTForImageClassification(config)
teacher = ViTForImageClassification(config) if "--teacher" in sys.argv[2:] else None  # other random weights
trainer = CSKDTrainer(model=student, args=args, train_dataset=train, eval_dataset=held_out, processing_class=processor,
                      compute_metrics=compute_metrics, teacher_model=teacher)  # fmt: skip
trainer.train()
trainer.calibrate(held_out, bake_on_bound=True, bootstrap_resamples=0)  # a random model: T may sit on a bound
metrics = trainer.evaluate()
trainer.push_to_hub(results={"CS-KD + temperature scaling": {k[5:]: v for k, v in metrics.items()}})

from huggingface_hub import HfApi, hf_hub_download  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

pushed = sorted(HfApi(endpoint=None).list_repo_files("alice/cskd-tiny"))
pushed_tensors = load_file(hf_hub_download("alice/cskd-tiny", "model.safetensors"))
students = trainer.model.state_dict()
local = trainer.model.eval()
probe = images[:5]
with torch.no_grad():
    local_probs = local(**processor(probe, return_tensors="pt")).logits.softmax(-1)
    remote = AutoModelForImageClassification.from_pretrained("alice/cskd-tiny").eval()
    remote_probs = remote(**processor(probe, return_tensors="pt")).logits.softmax(-1)
classifier = pipeline("image-classification", model="alice/cskd-tiny", top_k=None, device="cpu")
pipeline_probs = [[{d["label"]: d["score"] for d in row}[name] for name in labels] for row in classifier(probe)]

push_folder_to_hub(out, "alice/cskd-from-folder", token=ALICE)
folder_files = sorted(HfApi().list_repo_files("alice/cskd-from-folder"))

before = folder_digest(out)
no_token = expect_permission_error(lambda: push_folder_to_hub(out, "alice/anonymous", token=False), "401")
not_yours = expect_permission_error(lambda: push_folder_to_hub(out, "bob/not-alice", token=ALICE), "403")
trainer.args.hub_model_id, trainer.hub_model_id = "bob/stolen", None
trainer_not_yours = expect_permission_error(lambda: trainer.push_to_hub(), "403")

print(
    json.dumps(
        {
            "pushed": pushed,
            # transformers saves some tensors under legacy names: compare the reloaded model, and count the file's
            "pushed_tensors_are_the_students": len(pushed_tensors) == len(students)
            and all(torch.equal(value, students[name]) for name, value in remote.state_dict().items()),
            "pushed_tensors_match_the_teacher": teacher is not None
            and any(
                torch.equal(pushed, value)
                for pushed in pushed_tensors.values()
                for value in teacher.state_dict().values()
                if value.ndim > 1 and value.shape == pushed.shape
            ),
            "folder_files": folder_files,
            "max_prob_diff_from_pretrained": float((local_probs - remote_probs).abs().max()),
            "max_prob_diff_pipeline": float(np.abs(np.array(pipeline_probs) - local_probs.numpy()).max()),
            "calibration_temperature": remote.config.calibration_temperature,
            "errors": [no_token, not_yours, trainer_not_yours],
            "local_output_unchanged": before == folder_digest(out),
        }
    )
)
