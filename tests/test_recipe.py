import functools
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_processes, write_imagefolder
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTConfig, ViTForImageClassification

import hf_cskd.losses.training_loss
from hf_cskd.calibration.metrics import KEYS, calibration_metrics
from hf_cskd.hub.model_card import metric_cell

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import train_vit  # noqa: E402

FAST = ["--max_steps", "4", "--per_device_train_batch_size", "16", "--disable_tqdm", "true", "--max_eval_samples", "64",
        "--bootstrap_resamples", "0"]  # intervals: the default run's test reads them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp_path, *flags):
    return train_vit.main([*FAST, "--output_dir", str(tmp_path / "out"), *flags])


def test_default_run_writes_a_reloadable_calibrated_checkpoint(tmp_path, capsys):
    trainer = run(tmp_path, "--bootstrap_resamples", "1000")  # calibrated by default, with the default intervals
    out = tmp_path / "out"
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "reliability_diagram.png",
                 "test_results.json", "calibration.json", "training_args.json"):  # fmt: skip
        assert (out / name).is_file(), name
    # Trainer's own output: its pickled arguments only (without a token), which pushes leave out (hub.py).
    assert [p.name for p in out.glob("*.bin")] == ["training_args.bin"] and not list(out.glob("*.pt"))
    results = json.loads((out / "test_results.json").read_text())
    assert {"test_accuracy", "test_ece", "test_nll", "temperature"} <= set(results)
    assert {"test_raw_accuracy", "test_raw_ece", "test_raw_nll"} <= set(results)  # before temperature scaling
    assert results["test_raw_accuracy"] == results["test_accuracy"]  # scaling never changes a prediction
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["temperature"] == pytest.approx(results["temperature"]) and calibration["split"] == "validation"
    # Every metric before and after with its interval, and the card shows them as recorded.
    assert calibration["bootstrap_resamples"] == 1000 and calibration["examples"] == 64
    card = (out / "README.md").read_text()
    for when in ("before", "after"):
        for key in KEYS:
            low, high = calibration[when][f"{key}_ci"]
            assert low <= high
        assert metric_cell(calibration[when], "ece") in card and metric_cell(calibration[when], "nll") in card
    summary = capsys.readouterr().out
    assert results["method"] == "CS-KD (queue)"  # the embedded run's default mode
    assert f"CS-KD (queue) + temperature scaling (T = {results['temperature']:.3f})" in summary
    assert f"{100 * results['test_raw_ece']:.2f}%" in summary and f"{results['test_nll']:.4f}" in summary

    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    assert model.config.id2label[3] == "3" and model.config.calibration_temperature == pytest.approx(
        results["temperature"]
    )
    images = [Image.fromarray(np.uint8(np.random.default_rng(i).integers(0, 255, (8, 8)))) for i in range(4)]
    inputs = processor([im.convert("RGB") for im in images], return_tensors="pt")
    trained = trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, trained(**inputs).logits)


def test_no_calibrate_writes_no_temperature(tmp_path):
    run(tmp_path, "--no_calibrate")
    out = tmp_path / "out"
    assert not (out / "calibration.json").exists()
    assert "calibration_temperature" not in json.loads((out / "config.json").read_text())
    results = json.loads((out / "test_results.json").read_text())
    assert "temperature" not in results and not any(key.startswith("test_raw_") for key in results)
    assert "temperature scaling" not in (out / "README.md").read_text().split("## How to use")[0]


def test_a_temperature_on_its_bound_is_not_baked_by_the_recipe(tmp_path, monkeypatch, capsys):
    import hf_cskd.calibration.temperature as scaling

    low = scaling.TEMPERATURE_BOUNDS[0]
    monkeypatch.setattr(scaling, "fit_temperature", lambda logits, labels: low)  # as on a split without mistakes
    run(tmp_path)
    out = tmp_path / "out"
    assert "calibration_temperature" not in json.loads((out / "config.json").read_text())  # the raw model is kept
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["fitted_temperature"] == low and "temperature" not in calibration
    assert f"reached the bound {low:g}" in calibration["warning"] and "larger held-out" in calibration["warning"]
    results = json.loads((out / "test_results.json").read_text())
    assert results["calibration_warning"] == calibration["warning"] and "temperature" not in results
    assert f"Temperature scaling was not applied: {calibration['warning']}" in capsys.readouterr().out
    assert "Temperature scaling was **not applied**" in (out / "README.md").read_text()


def test_baseline_rows_and_a_missing_model_folder(tmp_path):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"test_accuracy": 0.9, "test_ece": 0.02, "test_nll": 0.3, "test_raw_accuracy": 0.9,
                                    "test_raw_ece": 0.05, "test_raw_nll": 0.35, "temperature": 1.2,
                                    "method": "cross-entropy"}))  # fmt: skip
    rows = train_vit.baseline_rows(str(baseline))
    assert rows["baseline (cross-entropy)"]["ece"] == 0.05
    assert rows["baseline (cross-entropy + temperature scaling)"]["ece"] == 0.02
    with pytest.raises(FileNotFoundError, match="no such folder"):
        run(tmp_path, "--model_name_or_path", str(tmp_path / "not_there"))
    with pytest.raises(OSError, match="no such local folder exists"):
        run(tmp_path, "--model_name_or_path", "not_there/either")


def test_two_processes(tmp_path):
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    env = {**os.environ, "PROBE_DIR": str(probe_dir), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        str(ROOT / "tests" / "scripts" / "ddp_probe.py"), *FAST, "--output_dir", str(tmp_path / "out"),
        "--ddp_find_unused_parameters", "false", "--cskd_mode", "pairs",
    ]  # fmt: skip
    command[command.index("29517")] = str(free_port())
    done = run_processes(command, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "rank 0: world_size=2 is_main=True" in done.stdout
    assert "rank 1: world_size=2 is_main=False" in done.stdout
    records = {r: [json.loads(line) for line in open(probe_dir / f"rank{r}.jsonl")] for r in (0, 1)}
    anchors = {r: {rec[1] for rec in recs} for r, recs in records.items()}
    assert len(records[0]) >= 4 * 16 and len(records[1]) >= 4 * 16
    assert not anchors[0] & anchors[1]  # each rank trains on its own shard
    for recs in records.values():
        assert all(anchor_label == pair_label for _, _, _, anchor_label, pair_label in recs)
        assert all(anchor != pair for _, anchor, pair, _, _ in recs)
    out = tmp_path / "out"
    card = (out / "README.md").read_text()
    assert "| world_size | 2 |" in card
    assert AutoModelForImageClassification.from_pretrained(out).config.num_labels == 10


def test_bf16_on_cpu_keeps_the_kd_term_in_float32(tmp_path, monkeypatch):
    seen = []
    original = hf_cskd.losses.training_loss.class_wise_kd_loss

    def spy(logits, target_logits, *args, **kwargs):
        loss = original(logits, target_logits, *args, **kwargs)
        seen.append((logits.dtype, loss.dtype))
        return loss

    forwards = []
    original_forward = ViTForImageClassification.forward

    @functools.wraps(original_forward)  # keeps the signature Trainer inspects for label names
    def forward_spy(self, *args, **kwargs):
        forwards.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(hf_cskd.losses.training_loss, "class_wise_kd_loss", spy)
    monkeypatch.setattr(ViTForImageClassification, "forward", forward_spy)
    trainer = run(tmp_path, "--bf16", "--use_cpu", "--logging_steps", "1", "--no_calibrate", "--cskd_mode", "pairs")
    assert seen and all(out == torch.float32 for _, out in seen)
    assert forwards and all(forwards)  # anchor and pair forwards really ran under bf16 autocast
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 4 and all(np.isfinite([log["loss"], log["ce_loss"], log["cskd_loss"]]).all() for log in logs)


def test_imagefolder_with_class_names(tmp_path):
    train_dir = write_imagefolder(tmp_path / "train", ["cat", "dog"])
    trainer = run(tmp_path, "--train_dir", str(train_dir), "--train_val_split", "0.25")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog"}
    assert trainer.model.config.label2id == {"cat": 0, "dog": 1}


@pytest.fixture
def local_checkpoint(tmp_path):
    """A 'Hub' checkpoint saved to a local folder: a ViT with a 5-class head and its image processor."""
    from transformers import ViTImageProcessorPil

    config = ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=5)  # fmt: skip
    folder = tmp_path / "checkpoint"
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.4] * 3, image_std=[0.2] * 3).save_pretrained(
        folder
    )
    return folder


def test_pretrained_checkpoint_path(tmp_path, local_checkpoint):
    train_dir = write_imagefolder(tmp_path / "train", ["ant", "bee", "cow"])
    flags = ["--model_name_or_path", str(local_checkpoint), "--train_dir", str(train_dir), "--train_val_split", "0.34"]
    with pytest.raises(ValueError, match="head for 5 classes but the dataset has 3.*--ignore_mismatched_sizes"):
        run(tmp_path, *flags)
    trainer = run(tmp_path, *flags, "--ignore_mismatched_sizes")
    assert trainer.model.config.id2label == {0: "ant", 1: "bee", 2: "cow"}
    assert trainer.model.classifier.out_features == 3
    assert trainer.args.learning_rate == 5e-5  # fine-tuning keeps the TrainingArguments default
    assert list(AutoImageProcessor.from_pretrained(tmp_path / "out").image_mean) == [0.4] * 3


def test_per_class_subset_is_seeded_stratified_and_disjoint_from_validation(tmp_path):
    trainer = run(tmp_path, "--max_train_samples_per_class", "3", "--seed", "5")
    assert len(trainer.train_dataset) == 30  # the flag reaches the trainer
    data_args = train_vit.DataArguments(max_train_samples_per_class=3)
    splits = [train_vit.load_splits(data_args, train_vit.ModelArguments(), seed) for seed in (5, 5, 6)]
    rows = [{bytes(image["bytes"]) for image in split["train"].cast_column("image", ImageFeature(decode=False))["image"]}
            for split in splits]  # fmt: skip
    held_out = {
        bytes(i["bytes"]) for i in splits[0]["validation"].cast_column("image", ImageFeature(decode=False))["image"]
    }
    assert rows[0] == rows[1] and rows[0] != rows[2]  # same seed, same subset; another seed, another one
    assert len(rows[0]) == 30 and not rows[0] & held_out  # never a validation image
    assert np.bincount(splits[0]["train"]["label"], minlength=10).tolist() == [3] * 10
    with pytest.raises(ValueError, match="at least 1"):
        train_vit.per_class_subset(splits[0]["train"], "label", 0, seed=0)
    with pytest.raises(ValueError, match="--max_train_samples_per_class .* drop --streaming"):
        train_vit.main(["--streaming", "--max_steps", "2", "--max_train_samples_per_class", "3"])


def test_wrong_input_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="Column 'img' not found.*--image_column_name"):
        run(tmp_path, "--image_column_name", "img")
    with pytest.raises(ValueError, match="Column 'target' not found.*--label_column_name"):
        run(tmp_path, "--label_column_name", "target")
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    Dataset.from_dict({"image": [Image.new("RGB", (4, 4))] * 2, "label": [0, 1]}).to_parquet(only_test / "test.parquet")
    with pytest.raises(ValueError, match="no 'train' split"):
        run(tmp_path, "--dataset_name", str(only_test))


def test_json_and_yaml_argument_files(tmp_path):
    arguments = {"max_steps": 2, "output_dir": str(tmp_path / "out"), "cskd_lambda": 0.5, "disable_tqdm": True}
    (tmp_path / "args.json").write_text(json.dumps(arguments))
    model_args, data_args, training_args = train_vit.parse_arguments([str(tmp_path / "args.json")])
    assert training_args.cskd_lambda == 0.5 and training_args.learning_rate == 1e-3  # from-scratch defaults
    assert training_args.cskd_mode == "queue"  # the embedded run's default (chosen on validation)
    assert data_args.horizontal_flip is False and model_args.model_name_or_path is None
    (tmp_path / "args.yaml").write_text("max_steps: 2\ndataset_name: beans\nlearning_rate: 0.01\n")
    _, data_args, training_args = train_vit.parse_arguments([str(tmp_path / "args.yaml")])
    assert training_args.learning_rate == 0.01 and data_args.horizontal_flip is True
    assert training_args.cskd_mode == "pairs"  # the paper's mode everywhere else


def test_metrics_on_the_report_split_match_calibration_functions(tmp_path):
    trainer = run(tmp_path)
    prediction = trainer.predict(trainer.eval_dataset)
    expected = calibration_metrics(prediction.predictions, prediction.label_ids)
    for name, value in expected.items():
        assert prediction.metrics[f"test_{name}"] == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(
    "name, distributed_type, precision",
    [("cpu", "NO", "no"), ("multi_gpu_fp16", "MULTI_GPU", "fp16"), ("multi_gpu_bf16", "MULTI_GPU", "bf16"),
     ("fsdp", "FSDP", "bf16"), ("fsdp1", "FSDP", "bf16"), ("deepspeed_zero2", "DEEPSPEED", "bf16"),
     ("deepspeed_zero3", "DEEPSPEED", "bf16")],
)  # fmt: skip
def test_accelerate_configs_load(name, distributed_type, precision):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "recipes" / "accelerate_configs" / f"{name}.yaml"))
    assert str(config.distributed_type).endswith(distributed_type) and config.mixed_precision == precision
    if name.startswith("fsdp"):
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # save_model writes safetensors
        assert config.fsdp_config["fsdp_version"] == (1 if name == "fsdp1" else 2)


def test_bf16_run_is_calibrated(tmp_path):
    # Accelerate wraps forward in bf16 autocast; baking the temperature must still be checked exactly.
    run(tmp_path, "--bf16", "--use_cpu")
    results = json.loads((tmp_path / "out" / "test_results.json").read_text())
    assert results["temperature"] > 0 and (tmp_path / "out" / "calibration.json").is_file()


@pytest.mark.parametrize("mode", ["pairs", "queue"])
def test_streaming_recipe_on_the_embedded_digits(tmp_path, mode):
    trainer = run(tmp_path, "--streaming", "--cskd_mode", mode, "--logging_steps", "1")
    out = tmp_path / "out"
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.num_labels == 10 and (out / "README.md").is_file() and (out / "calibration.json").is_file()
    logs = [log for log in trainer.state.log_history if "cskd_loss" in log]
    assert len(logs) == 4 and ("cskd_self_pair" in logs[0] if mode == "pairs" else "cskd_queue_hit" in logs[0])
    assert json.loads((out / "test_results.json").read_text())["test_accuracy"] >= 0
    with pytest.raises(ValueError, match="--streaming .* pass --max_steps"):
        train_vit.main(["--streaming", "--output_dir", str(tmp_path / "other")])


def test_streaming_an_imagefolder_and_bf16_queue_mode(tmp_path, monkeypatch):
    train_dir = write_imagefolder(tmp_path / "train", ["cat", "dog"], per_class=12)
    validation_dir = write_imagefolder(tmp_path / "validation", ["cat", "dog"], per_class=3)  # a stream in folder
    flags = ["--train_dir", str(train_dir), "--validation_dir", str(validation_dir), "--streaming", "--cskd_mode",
             "queue", "--bf16", "--use_cpu"]  # order cannot give its own hold-out  # fmt: skip
    trainer = run(tmp_path, *flags)
    queue = trainer.cskd_targets.queue
    assert queue.logits.dtype == torch.float32 and queue.filled.any()  # the queue stays float32 under bf16
    assert trainer.model.config.id2label == {0: "cat", 1: "dog"}
    assert "validation_accuracy" in json.loads((tmp_path / "out" / "validation_results.json").read_text())
