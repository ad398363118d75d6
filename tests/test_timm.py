"""timm checkpoints (the Hub's timm format, `TimmWrapperForImageClassification`) through the main job.

timm needs torchvision, which has no wheel for the CPU torch 2.13 of the main environment: these
tests run in `.ci/run`'s timm environment (constraints-timm.txt), where HF_CSKD_REQUIRE_TIMM=1
turns a missing timm into a failure instead of a skip.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("HF_CSKD_REQUIRE_TIMM") != "1":
    pytest.importorskip("timm")
import timm  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline  # noqa: E402

from hf_cskd.data.transforms import input_spec  # noqa: E402
from hf_cskd.models.classifier_head import find_classifier_layers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import train_vit  # noqa: E402

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--max_train_samples", "40",
        "--max_eval_samples", "24", "--eval_strategy", "no", "--logging_steps", "1", "--bootstrap_resamples", "0"]  # fmt: skip


def save_timm_checkpoint(folder: Path, name: str = "test_efficientnet", num_classes: int = 5) -> Path:
    """A tiny timm model in the Hub's timm format, as timm 1.0.31 writes it (`model_args` with `num_classes`)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    timm.models.save_for_hf(model, folder, safe_serialization=True)
    return folder


def test_input_spec_reads_timms_data_config(tmp_path):
    folder = save_timm_checkpoint(tmp_path / "ckpt")
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "TimmWrapperImageProcessor"
    config = processor.data_config
    spec = input_spec(processor)
    assert spec.size == tuple(config["input_size"][-2:]) and spec.mean == tuple(config["mean"])
    assert spec.std == tuple(config["std"]) and spec.crop_pct == config["crop_pct"]
    assert spec.interpolation == config["interpolation"]
    assert input_spec(processor, image_size=48).size == (48, 48)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_vit"])
def test_timm_checkpoint_end_to_end(tmp_path, name):
    source = save_timm_checkpoint(tmp_path / "ckpt", name)
    assert "num_classes" in json.loads((source / "config.json").read_text()).get("model_args", {})  # what broke loading
    for mode in ("pairs", "queue"):
        out = tmp_path / mode
        train_vit.main([*FAST, "--model_name_or_path", str(source), "--ignore_mismatched_sizes", "--cskd_mode", mode,
                        "--output_dir", str(out)])  # fmt: skip
        card = (out / "README.md").read_text()
        assert "library_name: timm" in card and 'timm.create_model("hf-hub:' in card
        assert "- timm" in card  # tag
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "TimmWrapperForImageClassification" and model.config.num_labels == 10
    # The head found for temperature scaling is the one timm names in pretrained_cfg["classifier"].
    head = model.timm_model.get_submodule(model.timm_model.pretrained_cfg["classifier"])
    assert find_classifier_layers(model) == [head]

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)) for _ in range(2)]
    processor = AutoImageProcessor.from_pretrained(out)
    inputs = processor(images, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    # timm reads the same folder back, with the same outputs.
    bare = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(bare(inputs["pixel_values"]), logits)
    classifier = pipeline("image-classification", model=str(out))
    rows = classifier(images[0], top_k=10, function_to_apply="none")
    got = torch.tensor([{r["label"]: r["score"] for r in rows}[model.config.id2label[i]] for i in range(10)])
    torch.testing.assert_close(got, logits[0], rtol=1e-4, atol=1e-5)


def test_a_calibrated_timm_checkpoint_carries_the_temperature_in_its_head(tmp_path, monkeypatch):
    """The temperature is baked into timm's classifier: timm itself then gives the calibrated logits."""
    import hf_cskd.calibration.temperature

    source = save_timm_checkpoint(tmp_path / "ckpt")
    fit = hf_cskd.calibration.temperature.fitted_calibration

    def fixed_temperature(logits, labels, split, bootstrap_resamples):  # a random model's fit lands on a bound; bake a known T instead
        record = {key: value for key, value in fit(logits, labels, split, bootstrap_resamples).items() if key != "warning"}
        return {**record, "temperature": 2.5}

    monkeypatch.setattr(hf_cskd.calibration.temperature, "fitted_calibration", fixed_temperature)
    out = tmp_path / "out"
    train_vit.main([*FAST, "--model_name_or_path", str(source), "--ignore_mismatched_sizes", "--output_dir", str(out),
                    "--num_bins", "5"])  # fmt: skip
    raw = tmp_path / "raw"
    train_vit.main([*FAST, "--model_name_or_path", str(source), "--ignore_mismatched_sizes", "--output_dir", str(raw),
                    "--no_calibrate"])  # fmt: skip
    x = torch.randn(2, 3, 160, 160)
    calibrated = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    uncalibrated = timm.create_model(f"local-dir:{raw}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(calibrated(x), uncalibrated(x) / 2.5, rtol=1e-4, atol=1e-5)
    assert json.loads((out / "config.json").read_text())["calibration_temperature"] == pytest.approx(2.5)


def test_image_size_is_written_into_the_timm_config(tmp_path):
    source = save_timm_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    train_vit.main([*FAST, "--model_name_or_path", str(source), "--ignore_mismatched_sizes", "--output_dir", str(out),
                    "--image_size", "64", "--no_calibrate"])  # fmt: skip
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 64, 64]
    bare = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert timm.data.resolve_data_config(model=bare)["input_size"] == (3, 64, 64)  # timm users get 64 px
    processor = AutoImageProcessor.from_pretrained(out)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8))
    assert processor(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 64, 64)  # and pipeline users


def test_hf_cskd_calibrate_bakes_t_into_a_timm_checkpoint(tmp_path):
    """`hf-cskd calibrate` on a timm checkpoint (trained elsewhere): the saved model's logits are the source's / T,
    and the card is timm's."""
    from conftest import write_imagefolder

    from hf_cskd.calibration.command import main as calibrate
    from hf_cskd.models.pretrained import load_config

    source = save_timm_checkpoint(tmp_path / "ckpt")
    config = load_config(str(source))  # without model_args' num_classes, which transformers 5.24 cannot load
    labels = [config.id2label[k] for k in range(5)]
    folder = write_imagefolder(tmp_path / "val", labels, per_class=4)
    out = tmp_path / "out"
    record = calibrate([str(source), "--validation_dir", str(folder), "--output_dir", str(out),
                        "--bootstrap_resamples", "0"])  # fmt: skip
    assert record["baked"] and record["temperature"] != 1
    pixels = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        before = AutoModelForImageClassification.from_pretrained(source, config=config).eval()(pixel_values=pixels).logits
        after = AutoModelForImageClassification.from_pretrained(out).eval()(pixel_values=pixels).logits
    torch.testing.assert_close(after, before / record["temperature"], rtol=1e-4, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and 'timm.create_model("hf-hub:' in card
