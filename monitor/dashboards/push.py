"""Upload the dashboards and their Prometheus datasource into an existing Grafana (HTTP API).

What is sent (Grafana's HTTP API, via ``grafana-client``):

* ``GET /api/health``: is Grafana there at all (no credentials needed);
* ``GET /api/folders/{uid}``, and ``POST /api/folders`` ``{"title", "uid"}`` when it is missing;
* ``GET /api/datasources/uid/{uid}``, then ``PUT /api/datasources/uid/{uid}`` (update) or
  ``POST /api/datasources`` (create), with the fixed uid every panel names;
* ``POST /api/dashboards/db`` ``{"dashboard", "folderUid", "overwrite": true, "message"}`` per
  dashboard; Grafana inserts or updates by the dashboard's ``uid``, so pushing twice updates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import niquests
from grafana_client import GrafanaApi, TokenAuth
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaServerError,
    GrafanaTimeoutError,
    GrafanaUnauthorizedError,
)

from monitor.dashboards.build import dashboards
from monitor.dashboards.kit import DATASOURCE_NAME, DATASOURCE_UID

__all__ = ["PushError", "PushResult", "datasource_model", "folder_uid", "push"]


class PushError(Exception):
    """A push that could not be done, with a sentence for the user (no traceback)."""


@dataclass
class PushResult:
    folder_uid: str
    datasource: str  # "created" | "updated" | "skipped"
    dashboards: list[dict[str, Any]] = field(
        default_factory=list
    )  # Grafana's answers (uid, url, version)


def folder_uid(name: str) -> str:
    """A Grafana folder uid derived from the folder name (lowercase, dashes, at most 40 characters)."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    return slug[:40] or "fedsentinel"


def datasource_model(prometheus_url: str) -> dict[str, Any]:
    """The Prometheus datasource as Grafana's datasource API takes it (same uid as provisioning)."""
    return {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": False,
        "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
    }


def _explain(exc: Exception, url: str, doing: str) -> PushError:
    if isinstance(exc, GrafanaUnauthorizedError):
        return PushError(f"Grafana at {url} rejected the token (401 Unauthorized) while {doing}: "
                         "check --token (a service-account token of this Grafana).")  # fmt: skip
    if isinstance(exc, GrafanaClientError) and exc.status_code == 403:
        return PushError(f"Grafana at {url} refused {doing} (403 Forbidden): the token needs the Editor role "
                         "for folders and dashboards and Admin for the datasource (or use --no-datasource).")  # fmt: skip
    if isinstance(exc, GrafanaTimeoutError):
        return PushError(f"Grafana at {url} did not answer in time while {doing}.")
    if isinstance(exc, GrafanaServerError | GrafanaClientError):
        return PushError(
            f"Grafana at {url} answered {exc.status_code} while {doing}: {exc.message}"
        )
    if isinstance(exc, GrafanaException | niquests.exceptions.RequestException | OSError):
        return PushError(f"cannot reach Grafana at {url}: {_reason(exc)}.")
    return PushError(f"{doing} failed: {exc}")


def _reason(exc: BaseException) -> str:
    """The root cause of a connection failure in a few words ("connection refused", "name not known")."""
    text = str(exc)
    for needle, reason in (("refused", "connection refused"), ("Name or service not known", "unknown host"),
                           ("timed out", "timed out"), ("CERTIFICATE", "TLS certificate not trusted")):  # fmt: skip
        if needle in text:
            return reason
    return f"{exc.__class__.__name__}: {text[:200]}"


def _missing(exc: Exception) -> bool:
    return isinstance(exc, GrafanaClientError) and exc.status_code == 404


class _Grafana:
    def __init__(self, url: str, token: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.api = GrafanaApi.from_url(self.url, credential=TokenAuth(token=token), timeout=timeout)

    def call(self, doing: str, fn, *args: Any, missing_ok: bool = False) -> Any:  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001  (every failure becomes a sentence)
            if missing_ok and _missing(exc):
                return None
            raise _explain(exc, self.url, doing) from exc


def push(url: str, token: str, *, folder: str = "fedsentinel", prometheus_url: str = "http://localhost:9090",
         datasource: bool = True, timeout: float = 10.0) -> PushResult:  # fmt: skip
    """Create or update the folder, the datasource and every dashboard; raises :class:`PushError`."""
    grafana = _Grafana(url, token, timeout)
    api = grafana.api
    grafana.call("checking /api/health", api.client.GET, "/health")

    uid = folder_uid(folder)
    found = grafana.call(f"looking up folder {uid!r}", api.folder.get_folder, uid, missing_ok=True)
    if found is None:
        try:
            api.folder.create_folder(folder, uid=uid)
        except GrafanaClientError as exc:
            if exc.status_code not in (409, 412):  # a folder with that title but another uid exists
                raise _explain(exc, grafana.url, f"creating folder {folder!r}") from exc
            folders = grafana.call("listing folders", api.folder.get_all_folders)
            same = [f for f in folders or [] if f.get("title") == folder]
            if not same:
                raise _explain(exc, grafana.url, f"creating folder {folder!r}") from exc
            uid = same[0]["uid"]
        except Exception as exc:  # noqa: BLE001
            raise _explain(exc, grafana.url, f"creating folder {folder!r}") from exc

    ds_state = "skipped"
    if datasource:
        body = datasource_model(prometheus_url)
        existing = grafana.call("looking up the datasource", api.datasource.get_datasource_by_uid,
                                DATASOURCE_UID, missing_ok=True)  # fmt: skip
        if existing is None:
            grafana.call("creating the datasource", api.datasource.create_datasource, body)
            ds_state = "created"
        else:
            grafana.call(
                "updating the datasource",
                api.datasource.update_datasource_by_uid,
                DATASOURCE_UID,
                body,
            )
            ds_state = "updated"

    result = PushResult(folder_uid=uid, datasource=ds_state)
    for board_uid, board in dashboards().items():
        payload = {"dashboard": {**board, "id": None}, "folderUid": uid, "overwrite": True,
                   "message": "fedsentinel grafana push"}  # fmt: skip
        answer = grafana.call(
            f"uploading dashboard {board_uid!r}", api.dashboard.update_dashboard, payload
        )
        result.dashboards.append(answer if isinstance(answer, dict) else {"uid": board_uid})
    return result
