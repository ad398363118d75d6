"""Runs killed with SIGKILL (mid-epoch, while saving, while evaluating) resume to the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_image_dataset, make_vit, training_args
from safetensors.torch import load_file

from hf_cskd import CSKDTrainer
from hf_cskd.trainer.checkpoints import checkpoint_is_complete, last_complete_checkpoint

SCRIPT = Path(__file__).parent / "scripts" / "killed_run.py"


def script(out: Path, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), str(out), mode], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    done = script(out, "full")
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(out / "final" / "model.safetensors")


@pytest.mark.parametrize("mode, last_complete", [("kill-step", 4), ("kill-save", 4), ("kill-eval", 4)])
def test_killed_runs_resume_to_the_uninterrupted_weights(tmp_path, mode, last_complete, reference_weights):
    out = tmp_path / "out"
    killed = script(out, mode)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert last_complete_checkpoint(str(out)) == str(out / f"checkpoint-{last_complete}")
    if mode == "kill-save":
        half = out / "checkpoint-8"
        assert (half / "model.safetensors").is_file() and not checkpoint_is_complete(str(half))
    resumed = script(out, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if mode == "kill-save":
        assert "Skipping" in resumed.stderr and "checkpoint-8: it is incomplete" in resumed.stderr
    weights = load_file(out / "final" / "model.safetensors")
    assert weights.keys() == reference_weights.keys()
    for name, value in reference_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
    history = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["log_history"]
    assert [log["step"] for log in history if "eval_loss" in log] == [3, 6, 9, 12]


def test_a_path_to_a_half_written_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"log_hi')  # cut short
    assert not checkpoint_is_complete(str(tmp_path / "checkpoint-3"))
    trainer = CSKDTrainer(model=make_vit(), args=training_args(tmp_path), train_dataset=make_image_dataset())
    with pytest.raises(ValueError, match="checkpoint-3 is not a complete checkpoint.*Resume from an earlier"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_resume_errors_say_what_the_folder_is_and_name_save_strategy(tmp_path):
    trainer = CSKDTrainer(model=make_vit(), args=training_args(tmp_path), train_dataset=make_image_dataset())
    out = tmp_path / "out"  # a run with save_strategy "no": the final model only
    trainer.save_model(str(out))
    with pytest.raises(ValueError, match=r"No complete checkpoint found in .*--save_strategy epoch"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match=r"out holds no checkpoint .*--save_strategy epoch"):
        trainer.train(resume_from_checkpoint=str(out))
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match=r"out is an output folder, not a checkpoint: resume from .*checkpoint-2"):
        trainer.train(resume_from_checkpoint=str(out))
    with pytest.raises(ValueError, match="no such folder"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "missing"))
