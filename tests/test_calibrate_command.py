"""`hf-cskd calibrate MODEL`: a checkpoint trained by plain `Trainer`, calibrated from imagefolders, checked
against the source model's own predictions (through `pipeline`), and every bad input refused in one line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_imagefolder

from hf_cskd.calibration.command import main as calibrate
from hf_cskd.calibration.metrics import calibration_metrics
from hf_cskd.calibration.temperature import fit_temperature
from hf_cskd.data.splits import class_index_map

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
import calibrate_plain_trainer  # noqa: E402


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The embedded digits as imagefolders and a ViT trained on them by plain `transformers.Trainer`."""
    root = tmp_path_factory.mktemp("plain")
    folders = calibrate_plain_trainer.write_digits_imagefolders(root / "digits")
    model = calibrate_plain_trainer.train_with_plain_trainer(folders["train"], root / "vit", epochs=12, hidden=32)
    return folders, model


def source_log_probs(model: Path, folder: Path) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """The source model's log-probabilities for every image of an imagefolder, through `pipeline` (not the code
    under test), with the labels by folder name."""
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(model))
    names = classify.model.config.id2label
    paths = sorted(folder.glob("*/*.png"))
    scores = classify([str(p) for p in paths], batch_size=64, top_k=len(names))
    probs = np.array([[{r["label"]: r["score"] for r in rows}[names[k]] for k in range(len(names))] for rows in scores])
    labels = np.array([int(p.parent.name) for p in paths])
    return np.log(probs), labels, paths


def run(argv: list[str], capsys) -> tuple[int, str]:
    """`hf-cskd calibrate` in this process: its exit status and what it printed to stderr."""
    try:
        calibrate(argv)
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def test_a_plain_trainer_checkpoint_calibrated_gives_the_source_softmax_over_t_through_pipeline(tmp_path, plain):
    folders, model = plain
    out = tmp_path / "calibrated"
    record = calibrate([str(model), "--validation_dir", str(folders["validation"]), "--test_dir", str(folders["test"]),
                        "--output_dir", str(out), "--bootstrap_resamples", "200"])  # fmt: skip

    # T is the NLL-minimizing temperature of the source model's own validation predictions.
    log_probs, labels, _ = source_log_probs(model, folders["validation"])
    assert record["temperature"] == pytest.approx(fit_temperature(log_probs, labels), rel=1e-3)
    assert record["baked"] and record["split"] == "validation" and record["examples"] == len(labels)
    temperature = record["temperature"]
    assert json.loads((out / "calibration.json").read_text())["temperature"] == temperature
    assert json.loads((out / "config.json").read_text())["calibration_temperature"] == pytest.approx(temperature)

    # The calibrated checkpoint, through pipeline, returns softmax(source logits / T); the predictions are the same.
    test_log_probs, test_labels, paths = source_log_probs(model, folders["test"])
    calibrated, _, _ = source_log_probs(out, folders["test"])
    expected = torch.log_softmax(torch.tensor(test_log_probs) / temperature, dim=-1).numpy()
    np.testing.assert_allclose(np.exp(calibrated), np.exp(expected), atol=2e-5)
    assert (calibrated.argmax(1) == test_log_probs.argmax(1)).all()

    # Every reported metric, before and after, is the metric of the source model's predictions (with intervals).
    test = record["reported"]["test"]
    for when, logits in (("before", test_log_probs), ("after", test_log_probs / temperature)):
        reference = calibration_metrics(logits, test_labels)
        for key in ("accuracy", "ece", "ace", "classwise_ece", "smece", "nll", "brier"):
            assert test[when][key] == pytest.approx(reference[key], abs=1e-4), (when, key)
            low, high = test[when][f"{key}_ci"]
            assert low <= high
    assert test["after"]["nll"] < test["before"]["nll"] + 0.05  # fitted on validation; close on test

    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "preprocessor_config.json", "reliability_diagram_before.png",
            "reliability_diagram_after.png", "README.md"} <= files  # fmt: skip
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    card = (out / "README.md").read_text()
    assert f"T = {temperature:.4f}" in card and "nothing is known here about how it was trained" in card
    assert f"| test, after | {100 * test['after']['accuracy']:.2f}% [" in card  # the table, with intervals
    assert str(tmp_path) not in card + (out / "calibration.json").read_text()  # no local path published


def test_no_bake_only_reports(tmp_path, plain):
    folders, model = plain
    out = tmp_path / "report"
    record = calibrate([str(model), "--validation_dir", str(folders["validation"]), "--output_dir", str(out),
                        "--no_bake", "--bootstrap_resamples", "0"])  # fmt: skip
    assert record["baked"] is False and "ece_ci" not in record["before"]
    assert {p.name for p in out.iterdir()} == {"calibration.json", "reliability_diagram_before.png",
                                                "reliability_diagram_after.png"}  # fmt: skip


def test_class_folders_are_matched_to_the_model_labels_by_name():
    assert class_index_map(["b", "a"], ["a", "b"]).tolist() == [1, 0]
    assert class_index_map(["Golden Retriever"], ["tabby", "golden_retriever"]).tolist() == [1]
    with pytest.raises(ValueError, match=r"\['zebra'\] are not among the model's 2 labels \(a, b\)"):
        class_index_map(["a", "zebra"], ["a", "b"])


def test_a_reordered_class_folder_set_is_mapped_by_name_not_by_position(tmp_path, plain, capsys):
    """Folders holding only some digits (sorted '3', '7' -> 0, 1) are scored as the model's classes 3 and 7."""
    folders, model = plain
    subset = tmp_path / "subset"
    for digit in ("3", "7"):
        shutil.copytree(folders["validation"] / digit, subset / digit)
    record = calibrate([str(model), "--validation_dir", str(subset), "--output_dir", str(tmp_path / "o"),
                        "--no_bake", "--bootstrap_resamples", "0"])  # fmt: skip
    log_probs, labels, _ = source_log_probs(model, subset)
    assert record["before"]["accuracy"] == pytest.approx(float((log_probs.argmax(1) == labels).mean()))


def bad_inputs(tmp_path: Path, folders: dict[str, Path], model: Path) -> dict[str, tuple[list[str], str]]:
    one_class = tmp_path / "one"
    shutil.copytree(folders["validation"] / "3", one_class / "3")
    renamed = tmp_path / "renamed"
    write_imagefolder(renamed, ["cat", "dog"], per_class=3)
    broken = tmp_path / "broken"
    for digit in ("1", "2"):
        shutil.copytree(folders["validation"] / digit, broken / digit)
    (broken / "2" / "zz-broken.png").write_bytes(b"not a png")
    multi = tmp_path / "multi"
    shutil.copytree(model, multi)
    config = json.loads((multi / "config.json").read_text())
    (multi / "config.json").write_text(json.dumps({**config, "problem_type": "multi_label_classification"}))
    valid = ["--validation_dir", str(folders["validation"])]
    return {
        "test split": ([str(model), "--dataset_name", str(tmp_path), "--validation_split", "test"],
                       "--validation_split test: a temperature fitted on the test split"),
        "one class": ([str(model), "--validation_dir", str(one_class)], "holds a single class folder (3/)"),
        "names": ([str(model), "--validation_dir", str(renamed)], "['cat', 'dog'] are not among the model's 10 labels"),
        "unreadable": ([str(model), "--validation_dir", str(broken)], "zz-broken.png"),
        "multi-label": ([str(multi), *valid], "is a multi_label_classification model: temperature scaling"),
        "no data": ([str(model)], "No data given: pass --validation_dir DIR"),
        "no model": ([str(tmp_path / "nope"), *valid], "no such folder"),
    }  # fmt: skip


def test_bad_input_ends_with_one_line_that_names_the_fix(tmp_path, plain, capsys):
    folders, model = plain
    for case, (argv, expected) in bad_inputs(tmp_path, folders, model).items():
        code, err = run([*argv, "--output_dir", str(tmp_path / "out"), "--bootstrap_resamples", "0"], capsys)
        assert code == 1, case
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and expected in lines[0], (case, err[-2000:])
        assert not (tmp_path / "out" / "model.safetensors").exists(), case


def test_the_console_script_is_installed():
    executable = shutil.which("hf-cskd")
    assert executable, "pip install -e . installs the hf-cskd console script"
    done = subprocess.run([executable, "calibrate", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--validation_dir" in done.stdout and "--test_dir" in done.stdout


def test_push_to_hub_publishes_the_calibrated_checkpoint_without_the_token(tmp_path, plain, monkeypatch, capsys):
    """Against the local Hub server: the pushed repo holds the calibrated weights, card and record, no pickle and
    no token; a repo of another user is refused in one line."""
    from hub_server import start_server

    folders, model = plain
    server, state = start_server()
    try:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        common = [str(model), "--validation_dir", str(folders["validation"]), "--bootstrap_resamples", "0",
                  "--push_to_hub", "--hub_token", "hf_alice_write_token"]  # fmt: skip
        calibrate([*common, "--output_dir", str(tmp_path / "a"), "--hub_model_id", "alice/plain-vit-calibrated"])
        code, err = run([*common, "--output_dir", str(tmp_path / "b"), "--hub_model_id", "bob/stolen"], capsys)
    finally:
        server.shutdown()
    files = state.repos["alice/plain-vit-calibrated"]["files"]
    assert {"model.safetensors", "config.json", "calibration.json", "README.md", "reliability_diagram_after.png"} <= set(files)
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl"))]
    assert not [name for name, data in files.items() if b"hf_alice_write_token" in data]
    assert b"alice/plain-vit-calibrated" in files["README.md"]  # the usage example names the repo
    assert code == 1 and "bob/stolen" in err and "bob/stolen" not in state.repos
