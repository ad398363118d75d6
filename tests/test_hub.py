import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import start_server

SCRIPTS = Path(__file__).parent / "scripts"
SCRIPT = SCRIPTS / "hub_roundtrip.py"
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


@pytest.fixture
def hub():
    server, state = start_server()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def run_script(script: Path, tmp_path: Path, endpoint: str, *args: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    env.update(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("teacher", [False, True], ids=["student", "with-teacher"])
def test_push_download_and_refusals_against_a_local_hub(tmp_path, hub, teacher):
    endpoint, state = hub
    report = run_script(SCRIPT, tmp_path, endpoint, *(["--teacher"] if teacher else []))

    for files in (report["pushed"], report["folder_files"]):
        assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(files)
        assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]  # safetensors only
    assert report["max_prob_diff_from_pretrained"] < 1e-6
    # The push holds the student's tensors, bit for bit, and none of a teacher's.
    assert report["pushed_tensors_are_the_students"] and not report["pushed_tensors_match_the_teacher"]
    assert report["max_prob_diff_pipeline"] < 1e-5
    assert report["calibration_temperature"] > 0
    no_token, not_yours, trainer_not_yours = report["errors"]
    assert "hf auth login" in no_token and "--hub_model_id" in not_yours and "bob/stolen" in trainer_not_yours
    assert report["local_output_unchanged"]
    card = state.repos["alice/cskd-tiny"]["files"]["README.md"].decode()
    assert "hf_alice_write_token" not in card and "model-index" in card
    assert ("teacher distillation" in card) == teacher  # the card states the teacher's term when there was one
    assert set(state.repos) == {"alice/cskd-tiny", "alice/cskd-from-folder"}


def test_checkpoint_pushes_publish_no_pickled_model_folder_and_a_resumable_checkpoint(tmp_path, hub):
    endpoint, state = hub
    local = run_script(SCRIPTS / "hub_faults.py", tmp_path, endpoint, "strategies")
    pushed = {
        repo: [path for r, path in state.committed if r == repo] for repo in ("alice/every_save", "alice/checkpoint")
    }
    for repo, paths in pushed.items():
        assert "model.safetensors" in paths and "training_args.json" in paths, repo
        assert not [p for p in paths if "/" not in p and p.endswith(PICKLES)], (repo, paths)  # the model folder
    # hub_strategy="checkpoint" uploads a resumable last-checkpoint in Trainer's own format (its state files load
    # with weights_only=True), without the pickled training arguments, which the pushed .gitignore keeps off.
    assert {"last-checkpoint/optimizer.pt", "last-checkpoint/scheduler.pt", "last-checkpoint/rng_state.pth",
            "last-checkpoint/trainer_state.json", ".gitignore"} <= set(pushed["alice/checkpoint"])  # fmt: skip
    for repo in pushed:
        assert not [p for p in pushed[repo] if p.endswith("training_args.bin")], pushed[repo]
    for files in local.values():  # the local checkpoints are Trainer's own, training_args.bin included
        assert {"optimizer.pt", "training_args.bin", "training_args.json"} <= set(files), files


def test_a_private_push_with_a_token_given_to_push_to_hub(tmp_path, hub):
    endpoint, state = hub
    report = run_script(SCRIPTS / "hub_faults.py", tmp_path, endpoint, "private")
    repo = state.repos["alice/private-push"]
    assert repo["private"] is True and repo["by"] == "alice"  # created private, with the token given to the push
    assert {"model.safetensors", "README.md", "training_args.json", ".gitignore"} <= set(repo["files"])
    assert "training_args.bin" in report["local"] and "training_args.bin" not in repo["files"]
    assert not [p for p in repo["files"] if p.endswith(PICKLES)]


def test_failed_uploads_say_whether_anything_reached_the_hub(tmp_path, hub):
    endpoint, state = hub
    # push 1: two 500s then success (huggingface_hub's own bounded retries); push 2: 500 on all 6 tries;
    # push 3: the connection dropped 6 times; the trainer's push: 500 on all 6 tries.
    state.faults = ["500", "500", "ok"] + ["500"] * 6 + ["drop"] * 6 + ["500"] * 6
    report = run_script(SCRIPTS / "hub_faults.py", tmp_path, endpoint, "faults")
    assert "alice/flaky/commit/" in report["retried"]
    assert state.commit_requests == 3 + 6 + 6 + 6 and not state.faults  # bounded: 1 try + 5 retries
    for fault in ("500", "drop", "trainer"):
        assert report[fault]["reached_hub"] is False, fault
        assert "Nothing of this upload reached the Hub" in report[fault]["message"]
        assert "local output is unchanged" in report[fault]["message"]
    assert report["local_output_unchanged"] and report["trainer_output_intact"]
    assert "alice/trainer-push" in state.repos and not state.repos["alice/trainer-push"]["files"]


def test_fine_tuning_a_glyph_checkpoint_served_by_the_hub(tmp_path, hub):
    """The fine-tuning study's path, by repo id: pretrain, publish, then train_vit.py downloads and fine-tunes it."""
    endpoint, state = hub
    report = run_script(SCRIPTS / "hub_finetune.py", tmp_path, endpoint)
    assert "alice/glyphs-vit" in state.repos and report["num_labels"] == 10 and report["train_examples"] == 30
    assert report["encoder_unchanged"]  # at lr 0 the encoder is exactly the one downloaded from the Hub
    assert "fine-tuned version of [alice/glyphs-vit](https://huggingface.co/alice/glyphs-vit)" in report["card"]
    assert "base_model: alice/glyphs-vit" in report["card"]
