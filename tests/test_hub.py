import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import start_server

SCRIPT = Path(__file__).parent / "scripts" / "hub_roundtrip.py"


@pytest.fixture
def hub():
    server, state = start_server()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def test_push_download_and_refusals_against_a_local_hub(tmp_path, hub):
    endpoint, state = hub
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    env.update(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    for files in (report["pushed"], report["folder_files"]):
        assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(files)
        assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]  # safetensors only
    assert report["max_prob_diff_from_pretrained"] < 1e-6
    assert report["max_prob_diff_pipeline"] < 1e-5
    assert report["calibration_temperature"] > 0
    no_token, not_yours, trainer_not_yours = report["errors"]
    assert "hf auth login" in no_token and "--hub_model_id" in not_yours and "bob/stolen" in trainer_not_yours
    assert report["local_output_unchanged"]
    card = state.repos["alice/cskd-tiny"]["files"]["README.md"].decode()
    assert "hf_alice_write_token" not in card and "model-index" in card
    assert set(state.repos) == {"alice/cskd-tiny", "alice/cskd-from-folder"}
