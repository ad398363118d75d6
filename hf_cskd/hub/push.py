"""Publishing a trained folder to the Hub: weights, config, processor, card, diagram; no pickles."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from transformers.utils import logging

try:  # the transport huggingface_hub uses: its connection errors are transient
    from httpx2 import TransportError as _TransportError
except ImportError:  # pragma: no cover - another transport
    _TransportError = ConnectionError

logger = logging.get_logger(__name__)
T = TypeVar("T")

# What a calibrated CS-KD checkpoint consists of; anything else in the folder stays local.
PUBLISHED_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.model", "README.md", "*.png"]
PICKLES = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle"]
"""Never uploaded: files that unpickle (run code) when loaded."""
NEVER_PUBLISHED = ["checkpoint-*", "checkpoint-*/**", "runs/**", *PICKLES, "trainer_state.json"]
HUB_GITIGNORE = "# Written by hf-cskd: the Hub skips these on upload (pickled training arguments).\ntraining_args.bin\n"
"""`Trainer` pickles its arguments into `training_args.bin` and uploads it with the model. A `.gitignore` in the
pushed folder makes the Hub skip it (the Hub applies a repository's `.gitignore` to every upload), at any depth:
the model folder and `last-checkpoint/` alike. The arguments stay readable in `training_args.json`."""


def write_hub_gitignore(folder: str | Path) -> None:
    """Write (or extend) `folder/.gitignore` so that pushes of it leave the pickled training arguments out."""
    path = Path(folder) / ".gitignore"
    existing = path.read_text() if path.is_file() else ""
    if "training_args.bin" not in existing.splitlines():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(existing + ("\n" if existing and not existing.endswith("\n") else "") + HUB_GITIGNORE)


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

    Raises `PermissionError` with the fix when the Hub refuses (no token, no write access), and
    `HubUploadError` (saying whether anything reached the Hub) when server errors or dropped
    connections outlast huggingface_hub's retries; the local folder is never modified.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: pass the output_dir of a finished training run.")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    except HfHubHTTPError as error:
        raise hub_permission_error(error, repo_id) from error
    upload = lambda: api.upload_folder(  # noqa: E731
        repo_id=repo_id,
        folder_path=folder,
        revision=revision,
        commit_message=commit_message,
        allow_patterns=PUBLISHED_FILES,
        ignore_patterns=NEVER_PUBLISHED,
    )
    return upload_or_explain(upload, api, repo_id, revision)


class HubUploadError(RuntimeError):
    """An upload that still failed after its retries. `reached_hub`: whether its commit landed (None: unknown)."""

    def __init__(self, message: str, reached_hub: bool | None):
        super().__init__(message)
        self.reached_hub = reached_hub


def _is_transient(error: Exception) -> bool:
    """Server errors (5xx) and broken connections (which huggingface_hub retries), not refusals or bugs."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status is not None:
        return status >= 500
    return isinstance(error, _TransportError | ConnectionError | TimeoutError)


def _head(api: HfApi, repo_id: str, revision: str | None) -> str | None:
    """The repository's head commit, `None` if it does not exist, `UNKNOWN` if the Hub does not answer."""
    try:
        return api.repo_info(repo_id, revision=revision).sha
    except RepositoryNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - any failure means we cannot tell
        return UNKNOWN


UNKNOWN = "unknown"


def upload_or_explain(upload: Callable[[], T], api: HfApi | None, repo_id: str, revision: str | None = None,
                      token: str | None = None) -> T:  # fmt: skip
    """Run `upload`; when it fails for good, say what to do and whether anything reached the Hub.

    huggingface_hub already retries server errors (5xx) and dropped connections a bounded number
    of times (5 retries, waiting 1 to 8 s); a failure that outlasts them becomes a `HubUploadError`
    that compares the repository's head commit before and after. 401/403 become the
    `PermissionError`s of `hub_permission_error`. Local files are never touched. `api` defaults to an
    `HfApi(token=token)`.
    """
    api = api if api is not None else HfApi(token=token)
    before = _head(api, repo_id, revision)
    try:
        return upload()
    except Exception as error:
        if isinstance(error, HfHubHTTPError) and not _is_transient(error):
            raise hub_permission_error(error, repo_id) from error
        if not _is_transient(error):
            raise
        after = _head(api, repo_id, revision)
        if after == UNKNOWN:
            reached, what = None, "Whether any of it reached the Hub could not be checked (the Hub did not answer)."
        elif after == before:
            reached, what = False, "Nothing of this upload reached the Hub (the repository's head is unchanged)."
        else:
            reached, what = (
                True,
                f"The upload did reach the Hub (new head commit {after}) although the connection failed.",
            )
        raise HubUploadError(
            f"Uploading to {repo_id!r} failed, retries included: {error}. {what} Your local output is unchanged; run "
            "the push again later (e.g. `hf_cskd.hub.push.push_folder_to_hub(output_dir, repo_id)`).",
            reached,
        ) from error


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


@contextmanager
def explained_refusals(repo_id: str) -> Iterator[None]:
    """Run a block that talks to the Hub; a 401/403 becomes the `PermissionError` of `hub_permission_error`."""
    try:
        yield
    except HfHubHTTPError as error:
        raise hub_permission_error(error, repo_id) from error
