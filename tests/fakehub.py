"""A loopback Hugging Face Hub for offline tests: the part of the Hub's HTTP API that
`huggingface_hub` uses to download (repo info, tree listings, `resolve` with HEAD, GET and
ranges), to list datasets through `HfFileSystem`, and to upload (`create_repo`,
`create_branch`, preupload, NDJSON commits). The real client talks to it through
`HF_ENDPOINT`, as the S3 tests talk to moto.

Every upload is answered as a regular (non-LFS) file: LFS and Xet need storage services a test
cannot fake, and the client has no size limit for regular files. Commits are content-addressed
(the parent and the files), so the same uploads give the same commit ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

KINDS = {"models": "model", "datasets": "dataset"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self):
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}
        self.refs["main"] = self.commit(None, {})

    def commit(self, parent: str | None, files: dict[str, bytes]) -> str:
        content = json.dumps([parent, sorted((p, git_blob_sha1(d)) for p, d in files.items())])
        sha = hashlib.sha1(content.encode()).hexdigest()
        self.commits[sha] = dict(files)
        return sha

    def resolve(self, revision: str) -> str | None:
        return self.refs.get(revision) or (revision if revision in self.commits else None)


class FakeHub:
    """`with FakeHub() as hub:` serves on `hub.endpoint`; `hub.requests` logs every call."""

    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], kind: str = "model",
            branch: str = "main") -> str:
        """Commit `files` to a repo (made if new) directly; returns the commit id."""
        repo = self.repos.setdefault((kind, repo_id), Repo())
        parent = repo.refs.get(branch, repo.refs["main"])
        repo.refs[branch] = repo.commit(parent, {**repo.commits[parent], **files})
        return repo.refs[branch]

    def files(self, repo_id: str, revision: str = "main", kind: str = "model") -> dict:
        repo = self.repos[(kind, repo_id)]
        return repo.commits[repo.resolve(revision)]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: the test log shows `hub.requests`
                pass

            def do_GET(self):
                self.route()

            do_HEAD = do_POST = do_GET

            def send(self, code: int, body=b"", headers: dict | None = None) -> None:
                if isinstance(body, dict | list):
                    body = json.dumps(body).encode()
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def error(self, code: int, error_code: str, message: str, **headers) -> None:
                self.send(code, {"error": message},
                          {"X-Error-Code": error_code, "X-Error-Message": message, **headers})

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def route(self) -> None:
                url = urlsplit(self.path)
                parts = [unquote(p) for p in url.path.split("/")[1:]]
                hub.requests.append((self.command, url.path))
                if parts[0] == "api":
                    self.api(parts[1:], parse_qs(url.query))
                else:
                    self.resolve(parts)

            def url(self, kind: str, repo_id: str) -> str:
                return f"{hub.endpoint}/{'' if kind == 'model' else kind + 's/'}{repo_id}"

            def api(self, parts: list[str], query: dict) -> None:
                if parts == ["repos", "create"]:
                    request = json.loads(self.body())
                    kind = request.get("type") or "model"
                    repo_id = f"{request['organization']}/{request['name']}"
                    exists = (kind, repo_id) in hub.repos
                    hub.repos.setdefault((kind, repo_id), Repo())
                    return self.send(409 if exists else 200, {"url": self.url(kind, repo_id)})
                if parts == ["validate-yaml"]:
                    self.body()
                    return self.send(200, {"errors": [], "warnings": []})
                if len(parts) < 3 or parts[0] not in KINDS:
                    return self.error(404, "NotFound", f"no route /api/{'/'.join(parts)}")
                kind, repo_id = KINDS[parts[0]], "/".join(parts[1:3])
                repo = hub.repos.get((kind, repo_id))
                if repo is None:
                    return self.error(404, "RepoNotFound", f"{repo_id}: repository not found")
                action, rest = (parts[3], parts[4:]) if len(parts) > 3 else ("revision", [])
                if action == "branch":
                    request = json.loads(self.body() or b"{}")
                    if rest[0] in repo.refs:
                        return self.error(409, "BranchExists", "reference already exists")
                    repo.refs[rest[0]] = repo.resolve(request.get("startingPoint", "main"))
                    return self.send(200, {})
                revision = rest[0] if rest else "main"
                sha = repo.resolve(revision)
                if sha is None:
                    return self.error(404, "RevisionNotFound", f"invalid rev id: {revision}")
                files = repo.commits[sha]
                if action == "revision":
                    return self.send(200, {"id": repo_id, "sha": sha, "siblings": [
                        {"rfilename": name} for name in sorted(files)]})
                if action == "tree":
                    return self.tree(files, "/".join(rest[1:]),
                                     query.get("recursive", ["false"])[0] == "true")
                if action == "paths-info":
                    asked = parse_qs(self.body().decode()).get("paths", [])
                    return self.send(200, [entry(p, files[p]) for p in asked if p in files])
                if action == "preupload":
                    asked = json.loads(self.body())["files"]
                    return self.send(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                         "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
                        for f in asked]})
                if action == "commit":
                    return self.commit(kind, repo_id, repo, revision, sha)
                return self.error(404, "NotFound", f"no route {action}")

            def tree(self, files: dict, path: str, recursive: bool) -> None:
                prefix = f"{path}/" if path else ""
                entries, folders = [], set()
                for name in sorted(files):
                    if not name.startswith(prefix):
                        continue
                    below = name[len(prefix):].split("/")
                    for depth in range(1, len(below)):
                        folder = prefix + "/".join(below[:depth])
                        if (recursive or depth == 1) and folder not in folders:
                            folders.add(folder)
                            entries.append({"type": "directory", "path": folder,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest()})
                    if recursive or len(below) == 1:
                        entries.append(entry(name, files[name]))
                if path and not entries:
                    return self.error(404, "EntryNotFound", f"{path} does not exist")
                self.send(200, entries)

            def commit(self, kind: str, repo_id: str, repo: Repo, revision: str,
                       parent: str) -> None:
                files = dict(repo.commits[parent])
                for line in self.body().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "deletedFile":
                        files.pop(item["value"]["path"], None)
                    elif item["key"] != "header":
                        return self.error(400, "BadRequest", f"unsupported {item['key']}")
                sha = repo.refs[revision] = repo.commit(parent, files)
                self.send(200, {"commitOid": sha,
                                "commitUrl": f"{self.url(kind, repo_id)}/commit/{sha}"})

            def resolve(self, parts: list[str]) -> None:
                kind = "model"
                if parts[0] == "datasets":
                    kind, parts = "dataset", parts[1:]
                if len(parts) < 5 or parts[2] != "resolve":
                    return self.error(404, "NotFound", f"no route {self.path}")
                repo = hub.repos.get((kind, "/".join(parts[:2])))
                if repo is None:
                    return self.error(404, "RepoNotFound", "repository not found")
                sha = repo.resolve(parts[3])
                if sha is None:
                    return self.error(404, "RevisionNotFound", f"invalid rev id: {parts[3]}")
                path, files = "/".join(parts[4:]), repo.commits[sha]
                if path not in files:
                    return self.error(404, "EntryNotFound", f"{path} does not exist",
                                      **{"X-Repo-Commit": sha})
                data = files[path]
                headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(data)}"',
                           "Accept-Ranges": "bytes"}
                ranged = self.headers.get("Range")
                if ranged and self.command == "GET":
                    first, last = ranged.removeprefix("bytes=").split("-")
                    start, end = int(first), int(last) if last else len(data) - 1
                    if start >= len(data):
                        return self.send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    part = data[start:end + 1]
                    headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
                    return self.send(206, part, headers)
                self.send(200, data, headers)

        return Handler


def entry(path: str, data: bytes) -> dict:
    return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
