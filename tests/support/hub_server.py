"""A Hub-compatible HTTP endpoint on loopback, for testing the Hub path without the network.

The real Hugging Face Hub cannot be reached from the test machine. `LocalHub` answers the
calls restyle makes through `huggingface_hub` (the registry's Hub source; `snapshot_download` of
an `hf://` auxiliary model), over real HTTP, the way the Hub answers them (as of
huggingface_hub 2.4):

- `POST /api/models/{owner}/{name}/paths-info/{revision}` (form field `paths`, repeated): a
  JSON list of files with `size`, git blob `oid`, and an `lfs` block (`oid` = sha256) for
  .safetensors files;
- `GET /api/models/{owner}/{name}/revision/{revision}` (`model_info`): `id`, `sha` (the commit
  the revision names) and `siblings` (`[{"rfilename": ...}]`);
- `GET /api/models/{owner}/{name}/tree/{revision}[/{folder}]?recursive=..&expand=..`
  (`list_repo_tree`): the files (and, not recursive, the folders) as the paths-info entries,
  in one page (no `Link` header);
- `HEAD`/`GET /{owner}/{name}/resolve/{revision}/{path}` with `X-Repo-Commit`, `ETag` (the
  sha256 for LFS files, the git blob id otherwise), `Content-Length`, and `Range` support;
and refuses like the Hub: a gated repo without a token -> 401 `X-Error-Code: GatedRepo`; with a
token that has not accepted the licence -> 403 `GatedRepo`; an unknown repo -> 401
`RepoNotFound`; an unknown revision -> 404 `RevisionNotFound`; an unknown file -> 404
`EntryNotFound`. A revision is "main" or the repo's commit (`commits[repo]`, `COMMIT` unless a
test moves the branch with `push`); path segments arrive percent-encoded, as the client sends
them (a revision such as "refs/pr/1" is one segment).

    hub = LocalHub({"org/repo": {"a.safetensors": b"..."}}, gated={"org/repo": {"good-token"}})
    hub.start(); ... hub.endpoint ...; hub.stop()

`served` counts the GETs with a body per (repo, path); `corrupt(repo, path, data)` serves other
bytes than the metadata describes (a broken CDN object).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class LocalHub:
    def __init__(
        self, repos: dict[str, dict[str, bytes]], gated: dict[str, set[str]] | None = None
    ):
        self.repos = repos
        self.gated = gated or {}  # repo -> tokens that accepted the licence
        self.commits = dict.fromkeys(repos, COMMIT)
        self.served: Counter[tuple[str, str]] = Counter()
        self._corrupt: dict[tuple[str, str], bytes] = {}
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LocalHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def corrupt(self, repo: str, path: str, data: bytes) -> None:
        self._corrupt[(repo, path)] = data

    def push(self, repo: str, files: dict[str, bytes]) -> str:
        """Replace the repo's files with a new commit on "main"; its sha."""
        self.repos[repo] = files
        digest = hashlib.sha1(json.dumps(sorted(files)).encode())
        for name in sorted(files):
            digest.update(files[name])
        self.commits[repo] = digest.hexdigest()
        return self.commits[repo]

    # ------------------------------------------------------------------ answers
    def refusal(self, repo: str, authorization: str | None) -> tuple[int, dict[str, str]] | None:
        if repo not in self.repos:
            return 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
        if repo in self.gated:
            token = (authorization or "").removeprefix("Bearer ").strip()
            if not token:
                return 401, {
                    "X-Error-Code": "GatedRepo",
                    "X-Error-Message": f"Access to model {repo} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                }
            if token not in self.gated[repo]:
                return 403, {
                    "X-Error-Code": "GatedRepo",
                    "X-Error-Message": f"Access to model {repo} is restricted and you are not in the "
                    "authorized list.",
                }
        return None

    def commit(self, repo: str) -> str:
        return self.commits.get(repo, COMMIT)

    def unknown_revision(self, repo: str, revision: str) -> tuple[int, dict[str, str]] | None:
        if revision in ("main", self.commit(repo)):
            return None
        return 404, {
            "X-Error-Code": "RevisionNotFound",
            "X-Error-Message": f"Invalid rev id: {revision}",
        }

    def paths_info(self, repo: str, paths: list[str]) -> list[dict]:
        out = []
        for path in paths:
            data = self.repos[repo].get(path)
            if data is None:
                continue
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
            if path.endswith(".safetensors"):
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            out.append(entry)
        return out

    def model_info(self, repo: str) -> dict:
        return {
            "id": repo,
            "modelId": repo,
            "sha": self.commit(repo),
            "private": False,
            "gated": "manual" if repo in self.gated else False,
            "siblings": [{"rfilename": path} for path in sorted(self.repos[repo])],
        }

    def tree(self, repo: str, folder: str, recursive: bool) -> list[dict]:
        """The entries below `folder` ("" = the root): every file when recursive, else the
        files and first-level folders, as the Hub lists them."""
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        below = [p for p in sorted(self.repos[repo]) if p.startswith(prefix)]
        if recursive:
            return self.paths_info(repo, below)
        files = [p for p in below if "/" not in p[len(prefix) :]]
        folders = sorted({prefix + p[len(prefix) :].split("/")[0] for p in below} - set(files))
        return self.paths_info(repo, files) + [
            {"type": "directory", "path": f, "oid": git_blob_sha1(f.encode()), "size": 0}
            for f in folders
        ]

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(
                self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False
            ) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body and not head:
                    self.wfile.write(body)

            def do_POST(self) -> None:
                parts = unquote(self.path).strip("/").split("/")
                if len(parts) < 6 or parts[:2] != ["api", "models"] or parts[4] != "paths-info":
                    return self._send(404, {})
                repo = f"{parts[2]}/{parts[3]}"
                refused = hub.refusal(repo, self.headers.get("Authorization"))
                if refused:
                    return self._send(*refused)
                length = int(self.headers.get("Content-Length", 0))
                form = parse_qs(self.rfile.read(length).decode())
                body = json.dumps(hub.paths_info(repo, form.get("paths", []))).encode()
                self._send(200, {"Content-Type": "application/json"}, body)

            def do_HEAD(self) -> None:
                self._resolve(head=True)

            def do_GET(self) -> None:
                split = urlsplit(self.path)
                parts = [unquote(p) for p in split.path.strip("/").split("/")]
                if len(parts) >= 6 and parts[:2] == ["api", "models"]:
                    return self._api(parts, parse_qs(split.query))
                self._resolve(head=False)

            def _api(self, parts: list[str], query: dict[str, list[str]]) -> None:
                repo, call, revision = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
                refused = hub.refusal(repo, self.headers.get("Authorization"))
                refused = refused or hub.unknown_revision(repo, revision)
                if refused:
                    return self._send(*refused)
                if call == "revision":
                    answer: dict | list = hub.model_info(repo)
                elif call == "tree":
                    recursive = query.get("recursive", ["False"])[0].lower() == "true"
                    answer = hub.tree(repo, "/".join(parts[6:]), recursive)
                else:
                    return self._send(404, {})
                self._send(200, {"Content-Type": "application/json"}, json.dumps(answer).encode())

            def _resolve(self, head: bool) -> None:
                raw = urlsplit(self.path).path.strip("/").split("/")
                parts = [unquote(p) for p in raw]
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._send(404, {})
                repo, path = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
                refused = hub.refusal(repo, self.headers.get("Authorization"))
                refused = refused or hub.unknown_revision(repo, parts[3])
                if refused:
                    return self._send(*refused, head=head)
                data = hub.repos[repo].get(path)
                if data is None:
                    return self._send(
                        404,
                        {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.commit(repo)},
                        head=head,
                    )
                etag = (
                    hashlib.sha256(data).hexdigest()
                    if path.endswith(".safetensors")
                    else git_blob_sha1(data)
                )
                body = hub._corrupt.get((repo, path), data)
                headers = {
                    "X-Repo-Commit": hub.commit(repo),
                    "ETag": f'"{etag}"',
                    "Accept-Ranges": "bytes",
                }
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes=") and not head:
                    start = int(ranged[len("bytes=") :].split("-")[0] or 0)
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                if not head:
                    hub.served[(repo, path)] += 1
                self._send(206 if start else 200, headers, body[start:], head=head)

        return Handler
