"""What a new user hit in the main job (issue: the main job for real users), one test each.

A kept head with other classes, a small or class-ordered stream, inexact resume, a misleading
reliability diagram, errors without the fix, and augmentation nobody was told about.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from hf_cskd.calibration.metrics import calibration_metrics
from hf_cskd.data.transforms import input_spec
from hf_cskd.models.classifier_head import match_head_to_labels
from hf_cskd.models.pretrained import load_image_classifier, looks_like_a_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import train_vit  # noqa: E402

FAST = ["--per_device_train_batch_size", "16", "--disable_tqdm", "true", "--max_eval_samples", "32", "--bootstrap_resamples", "0"]


def write_imagefolder(root: Path, classes: list[str], per_class: int) -> Path:
    return conftest.write_imagefolder(root, classes, per_class, base=20, step=20)  # 10 classes within 0-255


def save_checkpoint(folder: Path, labels: list[str]) -> Path:
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={name: i for i, name in enumerate(labels)})  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


# ---- A kept head with the wrong labels ------------------------------------------------------------


def test_a_head_of_the_right_size_is_reordered_by_name_or_reinitialized(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt", ["cat", "dog", "eel"])
    original = load_file(folder / "model.safetensors")["classifier.weight"]
    model, _, note = load_image_classifier(str(folder), ["dog", "eel", "cat"])  # same names, other order
    assert "reordered by name" in note
    torch.testing.assert_close(model.classifier.weight, original[[1, 2, 0]], rtol=0, atol=0)
    assert model.config.id2label == {0: "dog", 1: "eel", 2: "cat"}

    model, _, note = load_image_classifier(str(folder), ["cat", "dog", "eel"])  # the same classes: kept as is
    assert note is None and torch.equal(model.classifier.weight, original)

    model, _, note = load_image_classifier(str(folder), ["zero", "one", "two"])  # other classes: a new head
    assert "re-initialized" in note and "--keep_pretrained_head" in note
    assert not torch.allclose(model.classifier.weight, original) and torch.all(model.classifier.bias == 0)

    model, _, note = load_image_classifier(str(folder), ["zero", "one", "two"], keep_pretrained_head=True)
    assert "kept as asked" in note and torch.equal(model.classifier.weight, original)


def test_the_recipe_says_what_it_did_to_the_head(tmp_path, caplog):
    folder = save_checkpoint(tmp_path / "ckpt", ["0", "1"])
    train_dir = write_imagefolder(tmp_path / "train", ["one", "zero"], per_class=8)
    with caplog.at_level(logging.WARNING, logger="hf_cskd"):
        train_vit.main([*FAST, "--max_steps", "1", "--model_name_or_path", str(folder), "--train_dir", str(train_dir),
                        "--output_dir", str(tmp_path / "out"), "--train_val_split", "0.5"])  # fmt: skip
    assert "predicts other classes (0, 1) than the dataset's: it was re-initialized" in caplog.text
    assert (
        "Classification head: the checkpoint's head predicts other classes" in (tmp_path / "out/README.md").read_text()
    )


def test_match_head_to_labels_permutes_every_head_of_a_distilled_model():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)  # fmt: skip
    model = DeiTForImageClassificationWithTeacher(config)
    before = [model.cls_classifier.weight.clone(), model.distillation_classifier.weight.clone()]
    match_head_to_labels(model, ["a", "b", "c"], ["c", "a", "b"])
    assert torch.equal(model.cls_classifier.weight, before[0][[2, 0, 1]])
    assert torch.equal(model.distillation_classifier.weight, before[1][[2, 0, 1]])


# ---- A small stream trains on nothing ---------------------------------------------------------------


def test_a_stream_hold_out_that_leaves_nothing_or_covers_few_classes_is_refused(tmp_path):
    train_dir = write_imagefolder(tmp_path / "train", [str(k) for k in range(10)], per_class=20)  # 200, class order
    flags = ["--disable_tqdm", "true", "--train_dir", str(train_dir), "--streaming", "--max_steps", "2",
             "--output_dir", str(tmp_path / "o")]  # fmt: skip
    with pytest.raises(ValueError, match="has only 200 examples .* takes its first 500 .* nothing is left to train on"):
        train_vit.main(flags)  # the default hold-out: 500 examples
    flags += ["--max_eval_samples", "32"]
    with pytest.raises(ValueError, match="covers 2 of the 10 classes, where a shuffled stream would cover about 10"):
        train_vit.main(flags)  # the first 32 of a stream in folder order
    validation_dir = write_imagefolder(tmp_path / "validation", [str(k) for k in range(10)], per_class=2)
    trainer = train_vit.main([*flags, "--validation_dir", str(validation_dir)])  # the fix the message names
    assert trainer.state.global_step == 2


def test_a_stream_is_shuffled_through_a_buffer_by_default(tmp_path):
    data_args = train_vit.DataArguments(streaming=True, max_eval_samples=4)
    raw = train_vit.load_splits(data_args, train_vit.ModelArguments(), seed=0)
    labels = [row["label"] for row in raw["train"].select_columns(["label"]).take(200)]
    unshuffled = train_vit.load_splits(
        train_vit.DataArguments(streaming=True, max_eval_samples=4, stream_shuffle_buffer=0),
        train_vit.ModelArguments(),
        0,
    )
    plain = [row["label"] for row in unshuffled["train"].select_columns(["label"]).take(200)]
    assert sorted(labels) != labels and labels != plain  # another order ...
    held_out = [row["label"] for row in raw["validation"].take(4)]
    assert held_out == [row["label"] for row in unshuffled["validation"].take(4)]  # ... but the same hold-out


# ---- Resume is exact in the main job ----------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("mode, workers", [("pairs", "0"), ("queue", "2")])
def test_resume_through_the_recipe_ends_at_the_uninterrupted_weights(tmp_path, mode, workers):
    flags = [*FAST, "--cskd_mode", mode, "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2",
             "--save_total_limit", "3", "--eval_strategy", "no", "--no_calibrate", "--dataloader_num_workers", workers, "--max_train_samples", "64"]  # fmt: skip
    train_vit.main([*flags, "--output_dir", str(tmp_path / "full")])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", resumed / "checkpoint-2")  # killed after checkpoint-2
    records = Records()  # transformers' loggers do not propagate to the root logger: listen on theirs
    logging.getLogger("transformers").addHandler(records)
    try:
        train_vit.main([*flags, "--output_dir", str(resumed), "--resume_from_checkpoint", str(resumed / "checkpoint-2"),
                        "--log_level", "info"])  # fmt: skip
    finally:
        logging.getLogger("transformers").removeHandler(records)
    printed = "\n".join(records.messages)
    assert "Loading model from" in printed  # Trainer's resume messages are shown, but not its report on the
    assert "missing keys" not in printed and "unexpected keys" not in printed  # renamed keys that are reloaded
    for step in ("checkpoint-4", "checkpoint-6"):
        full, again = (load_file(folder / step / "model.safetensors") for folder in (tmp_path / "full", resumed))
        for name in full:
            assert torch.equal(full[name], again[name]), (step, name)


# ---- The reliability diagram and MCE ----------------------------------------------------------------


def test_mce_leaves_out_bins_with_few_examples():
    # 12 examples at confidence 0.95 (11 right) and 2 at 0.55 (both right: gap 0.45).
    confidence = np.array([0.95] * 12 + [0.55] * 2)
    labels = np.array([0] * 11 + [1] + [0, 0])
    logits = np.log(np.stack([confidence, 1 - confidence], axis=1))
    metrics = calibration_metrics(logits, labels, num_bins=10)
    assert metrics["mce"] == pytest.approx(abs(11 / 12 - 0.95))  # the 2-example bin is left out
    assert calibration_metrics(logits, labels, num_bins=10, min_bin_count=1)["mce"] == pytest.approx(0.45)


# ---- Errors that name the fix -------------------------------------------------------------------------


def test_an_empty_or_flat_train_dir_is_named_with_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--train_dir .*empty holds no files\. Expected one sub-folder per class"):
        train_vit.main(["--train_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o")])
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "a.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        train_vit.main(["--train_dir", str(flat), "--output_dir", str(tmp_path / "o")])


def test_a_path_like_missing_model_is_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    assert looks_like_a_path("outputs/bsae") and not looks_like_a_path("google/vit-base-patch16-224")
    with pytest.raises(FileNotFoundError, match="--model_name_or_path outputs/bsae: no such folder"):
        train_vit.main(["--model_name_or_path", "outputs/bsae", "--output_dir", str(tmp_path / "o")])


def test_a_failing_run_prints_one_message_and_no_traceback(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "recipes/train_vit.py"), "--train_dir", str(tmp_path / "none"),
                          "--output_dir", str(tmp_path / "o")], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"error: --train_dir {tmp_path / 'none'}: no such folder. Expected one sub-folder per class" in run.stderr


# ---- Processors of every form, and the augmentation in use -----------------------------------------------


def test_input_spec_reads_every_size_form_and_refuses_what_it_cannot_read():
    from transformers import (
        BitImageProcessorPil,
        ConvNextImageProcessorPil,
        EfficientNetImageProcessorPil,
        MobileViTImageProcessorPil,
        ViTImageProcessorPil,
    )

    assert input_spec(ViTImageProcessorPil(size={"height": 20, "width": 24})).size == (20, 24)
    bit = input_spec(BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}))
    assert bit.size == (32, 32) and bit.crop_pct == pytest.approx(32 / 40) and bit.interpolation == "bicubic"
    convnext = input_spec(ConvNextImageProcessorPil(size={"shortest_edge": 64}))
    assert convnext.size == (64, 64) and convnext.crop_pct == 0.875
    # EfficientNet's processor does not center-crop by default: the input is `size`, not `crop_size`.
    assert input_spec(EfficientNetImageProcessorPil()).size == (346, 346)
    mobilevit = input_spec(MobileViTImageProcessorPil())
    assert mobilevit.bgr and mobilevit.mean == (0.0, 0.0, 0.0) and mobilevit.std == (1.0, 1.0, 1.0)
    pixels = torch.rand(3, 4, 4)
    assert torch.equal(mobilevit.normalize(pixels), pixels.flip(0))  # BGR, no normalization: as the processor does
    sizeless = ViTImageProcessorPil()
    sizeless.size = None
    with pytest.raises(ValueError, match="Cannot tell the input size of ViTImageProcessorPil.*--image_size N"):
        input_spec(sizeless)
    assert input_spec(sizeless, image_size=48).size == (48, 48)


def test_the_augmentation_is_printed_and_written_in_the_card(tmp_path, capsys):
    train_vit.main([*FAST, "--max_steps", "1", "--output_dir", str(tmp_path / "out")])
    line = "random resized crop (50-100 % of the area, aspect 3/4-4/3), no flip, to 16x16 px, bilinear"
    assert f"Training images: {line}" in capsys.readouterr().out
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        f"- Train images: {line}" in card and "- Evaluation images: ViTImageProcessorPil's own preprocessing." in card
    )


def test_a_head_that_cannot_absorb_the_temperature_leaves_a_saved_raw_model(tmp_path, monkeypatch, capsys):
    """Training is never lost to calibration: the raw model is saved, and the summary and card say why."""
    import hf_cskd.calibration.temperature

    def no_head(model, temperature, example_inputs=None):
        raise ValueError("Could not find the classification head of TestModel")

    monkeypatch.setattr(hf_cskd.calibration.temperature, "bake_temperature", no_head)
    out = tmp_path / "out"
    train_vit.main([*FAST, "--max_steps", "2", "--output_dir", str(out)])
    record = json.loads((out / "calibration.json").read_text())
    assert "temperature" not in record and record["fitted_temperature"] > 0 and "after" not in record
    assert "was fitted but not baked into the model: Could not find the classification head" in record["warning"]
    assert "Temperature scaling was not applied" in capsys.readouterr().out
    assert "Temperature scaling was **not applied**" in (out / "README.md").read_text()
    assert (out / "model.safetensors").is_file() and "calibration_temperature" not in (out / "config.json").read_text()


def test_image_size_trains_at_that_size_and_the_saved_processor_says_it(tmp_path):
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    folder = tmp_path / "ckpt"  # a ResNet (any input size) whose processor says 16 px
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2,
                          id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})  # fmt: skip
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessorPil(size={"shortest_edge": 16}).save_pretrained(folder)
    train_dir = write_imagefolder(tmp_path / "train", ["0", "1"], per_class=8)
    out = tmp_path / "out"
    trainer = train_vit.main([*FAST, "--max_steps", "1", "--model_name_or_path", str(folder), "--train_dir",
                              str(train_dir), "--train_val_split", "0.5", "--image_size", "24", "--output_dir", str(out),
                              "--no_calibrate"])  # fmt: skip
    assert trainer.train_dataset[0]["pixel_values"].shape == (3, 24, 24)
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 24}
    # pipeline users preprocess as the evaluation did: the same logits.
    from transformers import AutoModelForImageClassification, pipeline

    image = Image.open(next((train_dir / "1").iterdir())).convert("RGB")
    evaluated = train_vit.eval_transform(trainer.processing_class)({"image": [image], "label": [1]})["pixel_values"][0]
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(pixel_values=evaluated[None]).logits[0]
    rows = pipeline("image-classification", model=str(out))(image, function_to_apply="none")
    got = torch.tensor([{r["label"]: r["score"] for r in rows}[name] for name in ("0", "1")])
    torch.testing.assert_close(got, logits, rtol=1e-4, atol=1e-4)


# ---- Issue 27: splits on disk, Ctrl-C, and the own-code snippet ---------------------------------------------------


def test_a_train_dir_with_split_folders_is_read_as_those_splits(tmp_path):
    root = tmp_path / "data"
    for split, per_class in (("train", 8), ("validation", 4), ("test", 3)):
        write_imagefolder(root / split, ["ant", "bee"], per_class=per_class)
    trainer = train_vit.main(
        [*FAST, "--max_steps", "1", "--train_dir", str(root), "--output_dir", str(tmp_path / "out")]
    )
    assert len(trainer.train_dataset) == 16  # train/ only: no validation or test image is trained on
    assert json.loads((tmp_path / "out" / "calibration.json").read_text())["split"] == "validation"
    assert trainer.model.config.id2label == {0: "ant", 1: "bee"}
    (root / "cat").mkdir()  # a class folder beside the splits would train on test/ as a class: refused
    with pytest.raises(ValueError, match=r"mixes split sub-folders \(test, train, validation\) with class sub-folders"):
        train_vit.main([*FAST, "--max_steps", "1", "--train_dir", str(root), "--output_dir", str(tmp_path / "o2")])


def test_the_main_job_saves_every_epoch_by_default_so_a_stopped_run_resumes(tmp_path):
    out = tmp_path / "out"
    train_vit.main([*FAST, "--num_train_epochs", "2", "--max_train_samples", "64", "--output_dir", str(out),
                    "--no_calibrate"])  # fmt: skip
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]


def test_own_code_with_on_the_fly_transforms_evaluates_and_calibrates(tmp_path):
    """The README's own-code snippet with `with_transform` data and `remove_unused_columns` left on: Trainer would
    drop the image column before the transform reads it (`KeyError: 'image'`)."""
    from datasets import load_dataset

    from hf_cskd import CSKDConfig, CSKDTrainer

    folder = write_imagefolder(tmp_path / "imgs", ["ant", "bee", "cow"], per_class=8)
    data = load_dataset("imagefolder", data_dir=str(folder), split="train").train_test_split(0.25, seed=0)

    def transform(batch):
        pixels = [torch.tensor(np.asarray(image.convert("L").resize((8, 8))), dtype=torch.float32)[None] / 255
                  for image in batch["image"]]  # fmt: skip
        return {"pixel_values": pixels, "labels": batch["label"]}

    train, val = data["train"].with_transform(transform), data["test"].with_transform(transform)
    for mode in ("pairs", "queue"):
        args = CSKDConfig(output_dir=str(tmp_path / mode), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
                          report_to="none", cskd_mode=mode, cskd_queue_size=8)  # fmt: skip
        assert args.remove_unused_columns
        trainer = CSKDTrainer(model=conftest.make_vit(), args=args, train_dataset=train, eval_dataset=val)
        trainer.train()
        assert trainer.evaluate()["eval_loss"] > 0
        try:
            trainer.calibrate(val, bootstrap_resamples=0)
        except ValueError as error:  # a bound on 6 images is possible; what matters is that it ran
            assert "bound" in str(error)
        assert trainer.calibration is not None and trainer.calibration["split"] == "validation"
