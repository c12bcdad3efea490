"""HTTP to the hosts this plugin is granted (`http_hosts`). Each item (and session)
has a cookie jar: cookies a host sets are sent back on later requests."""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Union

from wit_world.imports import http as _http, types

from .errors import ApplicationError, host_call

Cookie = types.Cookie
Headers = Union[Mapping[str, str], Iterable[tuple[str, str]], None]


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status < 300

    def header(self, name: str) -> Optional[str]:
        """The first header of that name (any case), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def text(self) -> str:
        """The body as UTF-8 (invalid bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON; an ApplicationError if it is not."""
        try:
            return _json.loads(self.body)
        except ValueError as e:
            raise ApplicationError(
                f"HTTP {self.status}: the answer is not JSON ({e}): {self.text()[:200]}"
            ) from None


def _pairs(headers: Headers) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), str(v)) for k, v in items]


def send(
    method: str,
    url: str,
    headers: Headers = None,
    body: Union[bytes, str, None] = None,
    timeout_ms: Optional[int] = None,
    follow_redirects: bool = True,
) -> Response:
    """Send a request. Any status is an answer (check `status`); a host that is not
    granted, a timeout or a failed connection raise an error. With
    `follow_redirects=False` a 3xx comes back as it is, `location` header and all."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    request = _http.Request(method.upper(), url, _pairs(headers), body, timeout_ms)
    if follow_redirects:
        r = host_call(_http.send, request)
    else:
        r = host_call(_http.send_with, request, _http.SendOptions(follow_redirects=False))
    return Response(r.status, r.headers, r.body)


def get(url: str, headers: Headers = None, timeout_ms: Optional[int] = None) -> Response:
    return send("GET", url, headers, timeout_ms=timeout_ms)


def post_json(
    url: str, body: Any, headers: Headers = None, timeout_ms: Optional[int] = None
) -> Response:
    """POST `body` as JSON (`content-type: application/json`)."""
    h = _pairs(headers) + [("content-type", "application/json")]
    return send("POST", url, h, _json.dumps(body, ensure_ascii=False), timeout_ms)


def cookies() -> list[Cookie]:
    """The cookies in this item's jar."""
    return _http.cookies()
