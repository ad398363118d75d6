"""Every architecture `AutoModelForImageClassification` maps, through the main job.

For each, a tiny random config and its default image processor are saved to a folder, which goes through
`recipes/train_vit.py --model_name_or_path <folder> --ignore_mismatched_sizes` for two steps in one CS-KD mode, pairs
and queue alternating over the sorted architectures (a mode's code is the same for every architecture, which is called
on a batch either way; both modes on all 36 ran 72 main jobs, halved to keep CI within 25 minutes); the checkpoint is
calibrated, gets a card, and `pipeline` reloads it with the probabilities of the trained model; `hf_cskd.intra_class`
reads its penultimate features. Exclusions are listed with their reason (`tiny_image_classifiers.EXCLUDED`, README
"Architectures").
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import CONFIG_MAPPING, AutoImageProcessor, AutoModelForImageClassification, pipeline
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from hf_cskd.calibration.temperature import bake_temperature
from hf_cskd.data.transforms import eval_transform, input_spec, train_transform, with_input_size
from hf_cskd.intra_class import penultimate_features

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import train_vit  # noqa: E402
from tiny_image_classifiers import EXCLUDED, NO_IMAGE_PROCESSOR, SIZE, SIZES, TIMM, TINY_CONFIGS  # noqa: E402

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--max_train_samples",
        "40", "--max_eval_samples", "24", "--eval_strategy", "no", "--logging_steps", "1", "--ignore_mismatched_sizes",
        "--bootstrap_resamples", "0"]  # fmt: skip


def test_every_architecture_is_covered_or_excluded_with_a_reason():
    mapped = set(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    assert mapped == set(TINY_CONFIGS) | set(EXCLUDED) | TIMM, mapped ^ (set(TINY_CONFIGS) | set(EXCLUDED) | TIMM)
    assert not set(TINY_CONFIGS) & set(EXCLUDED)


def save_tiny_checkpoint(model_type: str, folder: Path, num_labels: int = 3) -> None:
    torch.manual_seed(0)
    names = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    name = names[0] if isinstance(names, tuple) else names
    config = CONFIG_MAPPING[model_type](**TINY_CONFIGS[model_type], num_labels=num_labels)
    config.architectures = [name]
    getattr(transformers, name)(config).save_pretrained(folder)
    side = SIZES.get(model_type, SIZE)
    pil = (
        "BitImageProcessorPil" if model_type in NO_IMAGE_PROCESSOR else IMAGE_PROCESSOR_MAPPING_NAMES[model_type]["pil"]
    )
    # Scaled down with its ratios kept (EfficientNet's resizes to 346 and does not crop its 289 `crop_size`;
    # Perceiver's crops 256, then resizes to 224), so that it outputs `side` pixels.
    with_input_size(getattr(transformers, pil)(), side).save_pretrained(folder)


def probe_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (20 + 7 * i, 20 + 7 * i, 3), dtype=np.uint8)) for i in range(3)]


ALTERNATING = [(name, ("pairs", "queue")[i % 2]) for i, name in enumerate(sorted(TINY_CONFIGS))]


@pytest.mark.parametrize(("model_type", "mode"), ALTERNATING)
def test_architecture_through_the_main_job(model_type, mode, tmp_path):
    source = tmp_path / "tiny"
    save_tiny_checkpoint(model_type, source)
    # Training and evaluation agree: the same input size, and the same pixels on a plain image (normalization,
    # channel order) whatever the crop.
    processor = AutoImageProcessor.from_pretrained(source, backend="pil")
    spec = input_spec(processor)
    plain = {"image": [Image.new("RGB", (52, 40), (200, 30, 90))], "label": [0]}
    trained = train_transform(spec, scale=(1.0, 1.0), horizontal_flip=False)(plain)["pixel_values"][0]
    evaluated = eval_transform(processor, spec=spec)(plain)["pixel_values"][0]
    assert trained.shape == evaluated.shape == (3, *spec.size)
    center = (slice(None), spec.size[0] // 2, spec.size[1] // 2)
    torch.testing.assert_close(trained[center], evaluated[center].float(), rtol=0, atol=1e-3)

    out = tmp_path / mode
    train_vit.main([*FAST, "--model_name_or_path", str(source), "--cskd_mode", mode, "--output_dir", str(out)])
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    record = json.loads((out / "calibration.json").read_text())  # calibrated, or why not (a bound)
    assert record.get("temperature", record.get("fitted_temperature")) > 0
    results = json.loads((out / "test_results.json").read_text())
    assert results["method"] == {"pairs": "CS-KD", "queue": "CS-KD (queue)"}[mode]

    # The checkpoint reloads through pipeline with the saved model's logits; its head absorbs a temperature.
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out, backend="pil")
    images = probe_images()
    inputs = processor(images, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    classifier = pipeline("image-classification", model=str(out), image_processor=processor)
    for image, expected in zip(images, logits):  # raw logits ("none"): a far finer check than probabilities
        rows = classifier(image, top_k=model.config.num_labels, function_to_apply="none")
        scores = {row["label"]: row["score"] for row in rows}
        got = torch.tensor([scores[model.config.id2label[i]] for i in range(model.config.num_labels)])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        bake_temperature(model, 2.0, example_inputs=dict(inputs))  # raises if the logits are not divided by 2
        torch.testing.assert_close(model(**inputs).logits, logits / 2, rtol=1e-4, atol=1e-5)
    # The intra-class measure reads what the head receives: one feature row per image, for every architecture.
    features, labels = penultimate_features(model, [{**inputs, "labels": torch.arange(len(images))}])
    assert features.ndim == 2 and features.shape[0] == len(images) and np.isfinite(features).all()
    assert labels.tolist() == list(range(len(images)))
