"""Publishing a trained folder to the Hub: weights, config, processor, card, diagram; no pickles."""

from pathlib import Path

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError

# What a calibrated CS-KD checkpoint consists of; anything else in the folder stays local.
PUBLISHED_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.model", "README.md", "*.png"]
NEVER_PUBLISHED = [
    "checkpoint-*",
    "checkpoint-*/**",
    "runs/**",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "trainer_state.json",
]


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload CS-KD model",
    endpoint: str | None = None,
) -> CommitInfo:
    """Create `repo_id` if needed and upload the model files of an already-trained output folder.

    Raises `PermissionError` with the fix when the Hub refuses (no token, no write access); the
    local folder is never modified.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: pass the output_dir of a finished training run.")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message,
            allow_patterns=PUBLISHED_FILES,
            ignore_patterns=NEVER_PUBLISHED,
        )
    except HfHubHTTPError as error:
        raise hub_permission_error(error, repo_id) from error


def hub_permission_error(error: HfHubHTTPError, repo_id: str) -> Exception:
    """Turn a 401/403 from the Hub into an error that says what to do; other errors pass unchanged."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status == 401:
        return PermissionError(
            f"The Hub refused to publish {repo_id!r}: not authenticated (HTTP 401). Log in with `hf auth login`, "
            "set the HF_TOKEN environment variable, or pass a write token (`--hub_token`). Your local output is "
            "unchanged."
        )
    if status == 403:
        return PermissionError(
            f"The Hub refused to publish {repo_id!r}: this token cannot write to that repository (HTTP 403). Use "
            "a namespace you own (`--hub_model_id your-name/model`) or a token with write access to it. Your "
            "local output is unchanged."
        )
    return error
