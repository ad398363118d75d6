import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import AutoConfig, AutoModelForImageClassification

from hf_cskd import CifarResNetConfig, CifarResNetForImageClassification

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import reproduce_cifar100  # noqa: E402


def test_cifar_resnet18_is_the_papers_architecture_and_round_trips(tmp_path):
    model = CifarResNetForImageClassification(CifarResNetConfig(num_labels=100)).eval()
    assert sum(p.numel() for p in model.parameters()) == 11_220_132  # ResNet-18 for CIFAR-100
    stem = model.stem[0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert AutoConfig.from_pretrained(tmp_path).model_type == "cifar_resnet"
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is CifarResNetForImageClassification
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)


@pytest.fixture
def cifar_stand_in(tmp_path):
    """A local folder shaped like uoft-cs/cifar100: train/test parquet, `img` and `fine_label` columns."""
    rng = np.random.default_rng(0)
    features = Features({"img": Image(), "fine_label": ClassLabel(names=[f"class_{i}" for i in range(100)])})
    folder = tmp_path / "cifar100"
    folder.mkdir()
    for split, size in (("train", 200), ("test", 40)):
        images = [PILImage.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(size)]
        Dataset.from_dict({"img": images, "fine_label": [i % 100 for i in range(size)]}, features=features).to_parquet(
            folder / f"{split}.parquet"
        )
    return folder


def test_reproduction_recipe_on_a_local_stand_in(tmp_path, cifar_stand_in):
    trainer = reproduce_cifar100.main([
        "--dataset_name", str(cifar_stand_in), "--output_dir", str(tmp_path / "out"), "--max_steps", "4",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "20", "--logging_steps", "1",
        "--dataloader_num_workers", "0", "--save_strategy", "no", "--disable_tqdm", "true",
    ])  # fmt: skip
    rates = [log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log]
    # LR x0.1 at 50 % and 75 % of the 4 steps; each log holds the rate that step used.
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert (trainer.args.cskd_temperature, trainer.args.cskd_lambda) == (4.0, 1.0)
    logs = [log for log in trainer.state.log_history if "cskd_loss" in log]
    assert len(logs) == 4 and all(np.isfinite(log["loss"]) for log in logs)
    out = tmp_path / "out"
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.id2label[7] == "class_7" and (out / "test_results.json").is_file()


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory) -> dict[str, Path]:
    """Glyph checkpoints of both kinds after 2 pretraining steps: the fine-tuning regimes' smallest configuration."""
    import pretrain_glyphs

    folders = {}
    for kind in ("vit", "resnet"):
        folders[kind] = tmp_path_factory.mktemp("pretrained") / f"glyphs-{kind}"
        pretrain_glyphs.main(["--model", kind, "--per_class", "2", "--eval_per_class", "1", "--max_steps", "2",
                              "--output_dir", str(folders[kind])])  # fmt: skip
    return folders


@pytest.mark.parametrize("regime", ["scratch-cnn", "scratch-vit", "finetune-vit-10", "finetune-resnet-10"])
def test_quality_study_runs_resumes_and_reports(tmp_path, regime, request):
    import quality_study
    import report

    results = tmp_path / "runs.jsonl"
    command = [sys.executable, str(ROOT / "recipes" / "quality_study.py"), "--regime", regime, "--seeds", "2",
               "--sensitivity_seeds", "0", "--epochs", "1", "--per_class", "3", "--val_per_class", "2", "--workers",
               "1", "--results", str(results)]  # fmt: skip
    arms = dict(quality_study.ARMS)
    pretrained = quality_study.REGIMES[regime].pretrained
    if pretrained:
        command += ["--pretrained", str(request.getfixturevalue("tiny_pretrained")[pretrained])]
        arms[quality_study.FROM_SCRATCH] = {}
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(runs) == 2 * len(arms) and {r["regime"] for r in runs} == {regime}
    assert {r["method"] for r in runs} == set(arms)
    for run in runs:
        assert 0 <= run["raw"]["accuracy"] <= 1 and run["temperature_fit"] > 0
        assert run["scaled"]["accuracy"] == run["raw"]["accuracy"]  # TS never changes predictions
    assert {r["epochs"] for r in runs} == {1, 1.35} and {r["mode"] for r in runs if r["lambda"] > 0} == {
        "pairs",
        "queue",
    }
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)  # resumes: nothing left to run
    assert second.returncode == 0 and "0 to go" in second.stdout
    assert len(results.read_text().splitlines()) == len(runs)
    # Every row says what made it, and the report (recipes/report.py) pairs the arms by seed.
    assert {r["provenance"]["command"] for r in runs} == {shlex.join(["python", "recipes/quality_study.py",
                                                                      *command[2:]])}  # fmt: skip
    assert {r["provenance"]["versions"]["torch"] for r in runs} == {torch.__version__}
    # the library the rows were made with is this tree's (else the commit would not describe it: marked dirty)
    assert {Path(r["provenance"]["commit"]["library"]).resolve() for r in runs} == {(ROOT / "hf_cskd").resolve()}
    text = "\n".join(report.regime_section(regime, report.load(tmp_path)[results.stem]))
    assert "| CS-KD queue | 2 | " in text and re.search(r"\| CS-KD queue \| cross-entropy \| [-+]\d", text)


@pytest.mark.parametrize(("regime", "modes"), [("scratch-cnn", {"pairs"}), ("finetune-vit-30", {"pairs", "queue"})])
def test_study_jobs_pair_arms_by_seed_and_vary_t_and_lambda(regime, modes):
    import argparse

    import quality_study

    args = argparse.Namespace(regime=regime, seeds=2, sensitivity_seeds=1, per_class=30, val_per_class=20, epochs=10,
                              pretrained="ckpt", arms=None)  # fmt: skip
    jobs = quality_study.make_jobs(args)
    main = [job for job in jobs if job["group"] == "main"]
    arms = set(quality_study.ARMS) | ({quality_study.FROM_SCRATCH} if regime.startswith("finetune") else set())
    assert {job["method"] for job in main} == arms and len(main) == 2 * len(arms)
    assert {job["epochs"] for job in main} == {10, 13.5}  # the equal-compute arms: 1.35x the epochs
    sensitivity = [job for job in jobs if job["group"] == "sensitivity"]
    assert {job["mode"] for job in sensitivity} == modes and len(sensitivity) == 4 * len(modes)
    assert {(job["lambda"], job["temperature"]) for job in sensitivity} == set(quality_study.SENSITIVITY)
    assert all(job["method"].startswith(f"CS-KD {job['mode']} (") for job in sensitivity)
    assert len({quality_study.job_key(job) for job in jobs}) == len(jobs)  # every run resumable on its own


def test_glyph_pretraining_set_is_deterministic_and_latin_only():
    sys.path.insert(0, str(ROOT / "recipes" / "data"))
    import glyphs

    fonts = {path.stem for path in glyphs.latin_fonts()}
    assert {"DejaVuSans", "DejaVuSerif-Italic", "STIXGeneral", "cmr10"} <= fonts
    assert not fonts & {"cmsy10", "cmex10", "LastResortHE-Regular"} and not any(f.startswith("STIXSiz") for f in fonts)
    a, b, other = glyphs.glyph_dataset(2, seed=0), glyphs.glyph_dataset(2, seed=0), glyphs.glyph_dataset(2, seed=1)
    assert len(a) == 124 and a.features["label"].names == glyphs.CLASSES and len(glyphs.CLASSES) == 62
    assert np.bincount(a["label"]).tolist() == [2] * 62
    raw = [np.asarray(image) for image in a["image"]]
    assert all(image.shape == (8, 8) and image.dtype == np.uint8 for image in raw)
    assert all(np.array_equal(x, np.asarray(y)) for x, y in zip(raw, b["image"]))  # same seed: same pixels
    assert sum(not np.array_equal(x, np.asarray(y)) for x, y in zip(raw, other["image"])) > 100


def test_glyph_pretraining_then_fine_tuning_through_the_recipe(tmp_path):
    import pretrain_glyphs
    import train_vit

    pretrained = tmp_path / "glyphs-vit"
    trainer = pretrain_glyphs.main(["--per_class", "2", "--eval_per_class", "1", "--max_steps", "2",
                                    "--output_dir", str(pretrained)])  # fmt: skip
    assert trainer.model.config.num_labels == 62 and (pretrained / "preprocessor_config.json").is_file()
    encoder = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.startswith("classifier")}
    fine = train_vit.main(["--model_name_or_path", str(pretrained), "--ignore_mismatched_sizes", "--max_steps", "1",
                           "--learning_rate", "0", "--max_eval_samples", "16", "--disable_tqdm", "true",
                           "--output_dir", str(tmp_path / "fine")])  # fmt: skip
    assert fine.model.config.num_labels == 10 and fine.model.classifier.out_features == 10
    tuned = fine.model.state_dict()
    assert set(encoder) <= set(tuned)  # every pretrained encoder weight is in the fine-tuned model ...
    for name, value in encoder.items():  # ... unchanged at lr 0: the encoder is exactly the pretrained one
        torch.testing.assert_close(tuned[name], value, msg=name)
    assert "huggingface.co/" not in (tmp_path / "fine" / "README.md").read_text()  # a local base: never linked
