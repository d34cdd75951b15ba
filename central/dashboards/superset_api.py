"""A small client of Superset's REST API: log in, import and export asset bundles.

Superset's API wants a bearer token for every call and, for the ones that change state, a CSRF
token bound to the session cookie; both come from the login here.
"""

from __future__ import annotations

import http.cookiejar
import json
import secrets
import time
import urllib.error
import urllib.request
from typing import Any


class SupersetError(RuntimeError):
    """Superset answered with an error (its message is kept)."""


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "eiot-" + secrets.token_hex(12)
    parts: list[bytes] = []
    for name, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(f"{head}{value}\r\n".encode())
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/zip\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class SupersetClient:
    """One logged-in session with a Superset server at ``base_url``."""

    def __init__(self, base_url: str, username: str, password: str, timeout_s: float = 120) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        token = self._call(
            "POST",
            "/api/v1/security/login",
            json.dumps(
                {"username": username, "password": password, "provider": "db", "refresh": False}
            ).encode(),
            {"Content-Type": "application/json"},
            auth=False,
        )["access_token"]
        self._headers = {"Authorization": f"Bearer {token}"}
        self._headers["X-CSRFToken"] = self._call("GET", "/api/v1/security/csrf_token/")["result"]
        self._headers["Referer"] = self.base_url

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        raw: bool = False,
    ) -> Any:
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        for key, value in {**(self._headers if auth else {}), **(headers or {})}.items():
            request.add_header(key, value)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise SupersetError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        return data if raw else json.loads(data)

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._json("POST", path, body)

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self._json("PUT", path, body)

    def _json(self, method: str, path: str, body: dict[str, Any]) -> Any:
        data = json.dumps(body).encode()
        return self._call(method, path, data, {"Content-Type": "application/json"})

    def import_assets(self, bundle: bytes, passwords: dict[str, str]) -> None:
        """Import a bundle (databases, datasets, charts, dashboards); existing objects with the
        same UUIDs are overwritten, so importing twice leaves one copy of each."""
        body, content_type = _multipart(
            {"passwords": json.dumps(passwords)}, {"bundle": ("bundle.zip", bundle)}
        )
        self._call("POST", "/api/v1/assets/import/", body, {"Content-Type": content_type})

    def export_assets(self) -> bytes:
        """Every database, dataset, chart and dashboard (and saved query) as one ZIP bundle."""
        data: bytes = self._call("GET", "/api/v1/assets/export/", raw=True)
        return data


def wait_healthy(base_url: str, timeout_s: float = 180, proc_alive: Any = None) -> None:
    """Until ``/health`` answers OK; raises if ``proc_alive()`` turns false or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc_alive is not None and not proc_alive():
            raise SupersetError("Superset exited while starting (see its log)")
        try:
            with urllib.request.urlopen(base_url.rstrip("/") + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SupersetError(f"Superset did not answer on {base_url} within {timeout_s:.0f} s")
