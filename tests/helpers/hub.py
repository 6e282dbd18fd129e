"""A Hugging Face hub on 127.0.0.1 that serves local folders as model repositories.

Just the endpoints huggingface_hub's ``snapshot_download`` and ``list_repo_files`` use: the repo's
revision (``/api/models/<id>/revision/<rev>``), its file tree (``/api/models/<id>/tree/<rev>``) and
the files (``HEAD``/``GET /<id>/resolve/<rev>/<path>``, with the ``X-Repo-Commit`` and ``ETag``
headers the client keys its cache on). Point a process at it with ``HF_ENDPOINT`` (read when
huggingface_hub is imported: a subprocess).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Hub:
    repos: dict[str, Path]  # repo id -> folder
    downloads: list[str] = field(default_factory=list)  # "<repo id>/<file>" of every file GET
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _json(self, value) -> None:
            body = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _repo(self, rest: str, marker: str) -> tuple[str, str] | None:
            repo, sep, tail = rest.partition(marker)
            return (repo, tail) if sep and repo in hub.repos else None

        def _serve(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            if path.startswith("/api/models/"):
                rest = path.removeprefix("/api/models/")
                if found := self._repo(rest, "/revision/"):
                    repo = found[0]
                    return self._json(
                        {"id": repo, "modelId": repo, "sha": hub.commit(repo), "private": False,
                         "siblings": [{"rfilename": f} for f in hub.files(repo)]}
                    )  # fmt: skip
                if found := self._repo(rest, "/tree/"):
                    repo = found[0]
                    root = hub.repos[repo]
                    return self._json(
                        [
                            {"type": "file", "path": f, "size": (root / f).stat().st_size,
                             "oid": hashlib.sha1((root / f).read_bytes()).hexdigest()}
                            for f in hub.files(repo)
                        ]
                    )  # fmt: skip
            elif found := self._repo(path.removeprefix("/"), "/resolve/"):
                repo, tail = found
                name = tail.partition("/")[2]
                file = hub.repos[repo] / name
                if file.is_file():
                    data = file.read_bytes()
                    self.send_response(200)
                    self.send_header("X-Repo-Commit", hub.commit(repo))
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if body:  # logged before it is sent: the client may have it, and be gone, before this thread goes on
                        hub.downloads.append(f"{repo}/{name}")
                        self.wfile.write(data)
                    return
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

    return Handler


class serve_hub:
    """Context manager: ``with serve_hub({"org/model": folder}) as hub: ... hub.endpoint``."""

    def __init__(self, repos: dict[str, Path]):
        self.hub = Hub(dict(repos))

    def __enter__(self) -> Hub:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        self.hub.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self.hub

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
