"""A minimal Hub-compatible HTTP server for tests: the endpoints `huggingface_hub` uses to create a
repo, upload a commit and download files (see shared/REFERENCE.md). Loopback only, in memory.

Tokens map to users (`TOKENS`); a request without a token gets 401, a write to a namespace
the token's user does not own gets 403.
"""

import base64
import fnmatch
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

TOKENS = {"hf_alice_write_token": "alice", "hf_bob_write_token": "bob"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def gitignored(gitignore: str):
    """As the Hub does at preupload: the commit's `.gitignore` (else the hosted one) marks files to skip.
    Only the patterns the tests need: names without a slash match at any depth (fnmatch on each part)."""
    patterns = [line.strip() for line in gitignore.splitlines() if line.strip() and not line.startswith("#")]
    return lambda path: any(fnmatch.fnmatch(part, p) for p in patterns for part in path.split("/"))


class HubState:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo_id -> {"files": {path: bytes}, "sha": str, "private": bool, "by": user}
        self.committed: list[tuple[str, str]] = []  # (repo_id, path) of every file ever committed
        self.commit_requests = 0
        # Faults for the next commit requests, consumed in order: "500" (answer 500, apply nothing),
        # "drop" (close the connection without an answer, apply nothing), "ok" (no fault).
        self.faults: list[str] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    # ---- helpers --------------------------------------------------------------------------

    def user(self) -> str | None:
        header = self.headers.get("Authorization", "")
        return TOKENS.get(header.removeprefix("Bearer ").strip()) if header.startswith("Bearer ") else None

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def reply(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None, head=False):
        data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def not_found(self, code: str, head=False):
        self.reply(404, {"error": code}, {"X-Error-Code": code}, head=head)

    def check_write(self, repo_id: str) -> bool:
        user = self.user()
        if user is None:
            self.reply(401, {"error": "Invalid credentials in Authorization header"})
            return False
        if repo_id.split("/")[0] != user:
            self.reply(403, {"error": f"You don't have the rights to write to {repo_id}"})
            return False
        return True

    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    # ---- routes ---------------------------------------------------------------------------

    def do_POST(self):
        path = urlparse(self.path).path
        if path == "/api/validate-yaml":
            self.body()
            return self.reply(200, {"errors": [], "warnings": []})
        if path == "/api/repos/create":
            request = json.loads(self.body() or b"{}")
            user = self.user()
            namespace = request.get("organization") or user
            repo_id = f"{namespace}/{request['name']}"
            if not self.check_write(repo_id):
                return None
            with self.state.lock:
                if repo_id in self.state.repos:
                    return self.reply(
                        409, {"error": "You already created this model repo", "url": f"{self.base_url()}/{repo_id}"}
                    )
                self.state.repos[repo_id] = {"files": {}, "sha": "0" * 40, "type": request.get("type", "model"), "private": bool(request.get("private")) or request.get("visibility") == "private",
                                             "by": user}  # fmt: skip
            return self.reply(200, {"url": f"{self.base_url()}/{repo_id}"})
        parts = path.split("/")
        # /api/{models,spaces}/{ns}/{name}/preupload/{rev}  or  .../commit/{rev}
        if len(parts) >= 7 and parts[1] == "api" and parts[2] in ("models", "spaces") and parts[5] in ("preupload", "commit"):
            repo_id = f"{parts[3]}/{parts[4]}"
            data = self.body()
            if not self.check_write(repo_id):
                return None
            if repo_id not in self.state.repos:
                return self.not_found("RepoNotFound")
            if parts[5] == "preupload":
                request = json.loads(data)
                hosted = self.state.repos[repo_id]["files"].get(".gitignore", b"").decode()
                ignored = gitignored(request.get("gitIgnore", hosted))
                return self.reply(200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": ignored(f["path"]), "oid": None}
                    for f in request["files"]
                ]})  # fmt: skip
            return self.commit(repo_id, data)
        return self.not_found("EntryNotFound")

    def commit(self, repo_id: str, data: bytes):
        repo = self.state.repos[repo_id]
        with self.state.lock:
            self.state.commit_requests += 1
            fault = self.state.faults.pop(0) if self.state.faults else None
        if fault == "500":
            return self.reply(500, {"error": "Internal Error (injected by the test)"})
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)  # no answer at all
            return None
        with self.state.lock:
            for line in data.decode().splitlines():
                if not line.strip():
                    continue
                entry = json.loads(line)
                if entry["key"] == "file":
                    repo["files"][entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                    self.state.committed.append((repo_id, entry["value"]["path"]))
                elif entry["key"] == "deletedFile":
                    repo["files"].pop(entry["value"]["path"], None)
            repo["sha"] = hashlib.sha1(
                json.dumps(sorted((k, git_blob_sha1(v)) for k, v in repo["files"].items())).encode()
            ).hexdigest()
        return self.reply(
            200, {"commitOid": repo["sha"], "commitUrl": f"{self.base_url()}/{repo_id}/commit/{repo['sha']}"}
        )

    def do_GET(self):
        self.get(head=False)

    def do_HEAD(self):
        self.get(head=True)

    def get(self, head: bool):
        path = unquote(urlparse(self.path).path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}"
            repo = self.state.repos.get(repo_id)
            if repo is None:
                return self.not_found("RepoNotFound", head)
            if len(parts) >= 5 and parts[4] == "tree":
                return self.reply(200, [
                    {"type": "file", "path": p, "size": len(d), "oid": git_blob_sha1(d)} for p, d in sorted(repo["files"].items())
                ], head=head)  # fmt: skip
            return self.reply(200, {
                "id": repo_id, "modelId": repo_id, "sha": repo["sha"], "private": repo["private"],
                "siblings": [{"rfilename": p} for p in sorted(repo["files"])],
            }, head=head)  # fmt: skip
        # /{ns}/{name}/resolve/{rev}/{file...}
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, filename = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
            repo = self.state.repos.get(repo_id)
            if repo is None:
                return self.not_found("RepoNotFound", head)
            if filename not in repo["files"]:
                return self.not_found("EntryNotFound", head)
            data = repo["files"][filename]
            headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{git_blob_sha1(data)}"'}
            return self.reply(200, headers=headers, raw=data, head=head)
        return self.not_found("EntryNotFound", head)


def start_server() -> tuple[ThreadingHTTPServer, HubState]:
    """Start on a free loopback port in a daemon thread; `server.shutdown()` stops it."""
    state = HubState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state
