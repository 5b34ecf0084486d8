"""What the clients of the server's JSON/msgpack APIs (`ACEJobs`, `ACELearning`) share: one
connection pool, the bearer token on every request, msgpack bodies, the error document of a 4xx/5xx
raised as the matching `ACEServerError`."""
from __future__ import annotations

import json
from typing import Any

import msgpack
import urllib3

from .calculator import JSON, MSGPACK
from .errors import ACEServerConnectionError, from_response


class APIClient:
    """url: the server; token: its bearer token, if it has one; timeout: seconds to read a reply."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, *, timeout: float = 300.0,
                 maxsize: int = 4):
        self.url = url.rstrip("/")
        self._headers = {"Accept": JSON}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._http = urllib3.PoolManager(num_pools=1, maxsize=maxsize, retries=False,
                                         timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout))

    def _request(self, method: str, path: str, body: Any = None, **kw) -> urllib3.BaseHTTPResponse:
        """The reply of a request (a msgpack body if given); its error document raised as an exception."""
        # a request's own headers replace the pool's in urllib3: the token goes with every request here
        headers = {**self._headers, "Content-Type": MSGPACK} if body is not None else self._headers
        try:
            r = self._http.request(method, self.url + path, headers=headers,
                                   body=None if body is None else msgpack.packb(body, use_bin_type=True), **kw)
        except urllib3.exceptions.HTTPError as ex:
            raise ACEServerConnectionError(f"{method} {self.url}{path} failed: {type(ex).__name__}: {ex}") from ex
        if r.status >= 400:
            try:
                data = json.loads(r.data)
            except ValueError:
                data = r.data.decode("utf-8", "replace")
            raise from_response(r.status, data)
        return r

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON reply of a request."""
        return json.loads(self._request(method, path, body).data)

    def close(self) -> None:
        self._http.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
