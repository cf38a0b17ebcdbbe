"""A small stand-in for Grafana's HTTP API that records requests and keeps state by uid.

No Grafana server can be installed on these machines (no Debian package, no
Docker engine), so ``fedsentinel grafana push`` is tested against this server.
It answers the endpoints the push uses the way Grafana 12 documents them
(https://grafana.com/docs/grafana/latest/developers/http_api/): bearer-token
auth (401 otherwise; ``/api/health`` is open), folders by uid (404 when
missing, 409 on a duplicate uid or title), datasources by uid (409 on a duplicate name
or uid on create), and ``POST /api/dashboards/db`` inserting or updating by
dashboard uid with a version counter (412 on a version mismatch without
``overwrite``).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass
class FakeGrafana:
    token: str
    requests: list[Recorded] = field(default_factory=list)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasource_role_ok: bool = True  # False: the token's role may not write datasources (403)
    url: str = ""
    _next_id: int = 1

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def handle(self, method: str, path: str, body: Any, auth: str | None) -> tuple[int, Any]:
        self.requests.append(Recorded(method, path, body, auth))
        if method == "GET" and path == "/api/health":
            return 200, {"database": "ok", "version": "12.3.0", "commit": "fake"}
        if auth != f"Bearer {self.token}":
            return 401, {"message": "Unauthorized"}

        if (m := re.fullmatch(r"/api/folders/([\w-]+)", path)) and method == "GET":
            found = self.folders.get(m[1])
            if found is None:
                return 404, {"message": "folder not found", "status": "not-found"}
            return 200, found
        if path == "/api/folders" and method == "GET":
            return 200, [
                {"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in self.folders.values()
            ]
        if path == "/api/folders" and method == "POST":
            uid = body.get("uid") or f"auto{self.next_id()}"
            if uid in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            if any(f["title"] == body["title"] for f in self.folders.values()):
                return 409, {"message": "a folder with the same name already exists"}
            folder = {"id": self.next_id(), "uid": uid, "title": body["title"], "url": f"/dashboards/f/{uid}/",
                      "version": 1}  # fmt: skip
            self.folders[uid] = folder
            return 200, folder

        if m := re.fullmatch(r"/api/datasources/uid/([\w-]+)", path):
            uid = m[1]
            if method == "GET":
                found = self.datasources.get(uid)
                return (200, found) if found else (404, {"message": "Data source not found"})
            if method == "PUT":
                if not self.datasource_role_ok:
                    return 403, {
                        "message": "You'll need additional permissions to perform this action."
                    }
                if uid not in self.datasources:
                    return 404, {"message": "Data source not found"}
                updated = {**self.datasources[uid], **body, "uid": uid,
                           "version": self.datasources[uid]["version"] + 1}  # fmt: skip
                self.datasources[uid] = updated
                return 200, {"datasource": updated, "id": updated["id"], "message": "Datasource updated",
                             "name": updated["name"]}  # fmt: skip
        if path == "/api/datasources" and method == "POST":
            if not self.datasource_role_ok:
                return 403, {
                    "message": "You'll need additional permissions to perform this action."
                }
            if (
                any(d["name"] == body["name"] for d in self.datasources.values())
                or body.get("uid") in self.datasources
            ):
                return 409, {"message": "data source with the same name already exists"}
            created = {**body, "id": self.next_id(), "version": 1}
            self.datasources[created["uid"]] = created
            return 200, {"datasource": created, "id": created["id"], "message": "Datasource added",
                         "name": created["name"]}  # fmt: skip

        if path == "/api/dashboards/db" and method == "POST":
            board = body["dashboard"]
            uid = board["uid"]
            folder = body.get("folderUid")
            if folder and folder not in self.folders:
                return 400, {"message": "folder not found"}
            existing = self.dashboards.get(uid)
            if (
                existing
                and not body.get("overwrite")
                and board.get("version") != existing["dashboard"]["version"]
            ):
                return 412, {
                    "message": "The dashboard has been changed by someone else",
                    "status": "version-mismatch",
                }
            if board.get("id") not in (None, existing and existing["dashboard"]["id"]):
                return 404, {"message": "Dashboard not found"}
            version = existing["dashboard"]["version"] + 1 if existing else 1
            ident = existing["dashboard"]["id"] if existing else self.next_id()
            self.dashboards[uid] = {
                "dashboard": {**board, "id": ident, "version": version},
                "folderUid": folder,
            }
            slug = re.sub(r"[^a-z0-9]+", "-", board["title"].lower()).strip("-")
            return 200, {"id": ident, "uid": uid, "url": f"/d/{uid}/{slug}", "status": "success",
                         "version": version, "slug": slug}  # fmt: skip
        return 404, {"message": "Not found"}


def serve(fake: FakeGrafana) -> ThreadingHTTPServer:
    """Start ``fake`` on a free loopback port in a daemon thread; sets ``fake.url``."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, payload = fake.handle(self.command, self.path.split("?")[0], body,
                                          self.headers.get("Authorization"))  # fmt: skip
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server
