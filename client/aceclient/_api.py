"""What the clients of the server's APIs (`ACEServerCalculator`, `ACEJobs`, `ACELearning`) share: one
keep-alive connection pool, the bearer token on every request, msgpack (or JSON) bodies, replies
decoded with their arrays as numpy, the error document of a 4xx/5xx raised as the matching
`ACEServerError`, and retries while the server warms up (503 `not_ready`, `ready_timeout`)."""
from __future__ import annotations

import json
import time
from typing import Any

import msgpack
import numpy as np
import urllib3

from .errors import ACEServerConnectionError, from_response

MSGPACK = "application/msgpack"
JSON = "application/json"
ARRAY_KEYS = {"dtype", "shape", "data"}


def _pack_array(a: np.ndarray, dtype: str) -> dict:
    """A numpy array as the API's msgpack array map (raw little-endian C-order bytes)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()}


def _unpack(obj: Any) -> Any:
    """A decoded msgpack document with its array maps as numpy arrays."""
    if isinstance(obj, dict):
        if obj.keys() == ARRAY_KEYS and isinstance(obj["data"], bytes):
            return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v) for v in obj]
    return obj


def decode(r: urllib3.BaseHTTPResponse) -> Any:
    """A reply's document by its Content-Type: msgpack (arrays as numpy) or JSON; else its text."""
    try:
        if r.headers.get("content-type", "").startswith(MSGPACK):
            return _unpack(msgpack.unpackb(r.data, raw=False))
        return json.loads(r.data)
    except ValueError:
        return r.data.decode("utf-8", "replace")


class APIClient:
    """url: the server; token: its bearer token, if it has one; timeout: seconds to read a reply;
    binary: `_call` sends and accepts msgpack (else JSON); ready_timeout: seconds to keep retrying a
    request the server answers 503 `not_ready` (still compiling its kernels; 0: raise at once)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, *, timeout: float = 300.0,
                 maxsize: int = 4, binary: bool = True, ready_timeout: float = 0.0):
        self.url = url.rstrip("/")
        self.binary = binary
        self.ready_timeout = ready_timeout
        self._headers = {"Accept": JSON}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        codec = MSGPACK if binary else JSON
        self._call_headers = {**self._headers, "Accept": codec, "Content-Type": codec}
        # urllib3 keeps the connection alive between calls; it costs less per request than httpx
        self._http = urllib3.PoolManager(num_pools=1, maxsize=maxsize, retries=False,
                                         timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout))

    def _request(self, method: str, path: str, body: Any = None, *, headers: dict | None = None,
                 **kw) -> urllib3.BaseHTTPResponse:
        """The reply of a request (a msgpack body if given; headers: all of the request's, the token
        included, e.g. `_call_headers`); its error document raised as an exception."""
        if headers is None:
            # a request's own headers replace the pool's in urllib3: the token goes with every request here
            headers = {**self._headers, "Content-Type": MSGPACK} if body is not None else self._headers
        content = None
        if body is not None:
            content = (json.dumps(body).encode() if headers.get("Content-Type") == JSON
                       else msgpack.packb(body, use_bin_type=True))
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                r = self._http.request(method, self.url + path, headers=headers, body=content, **kw)
            except urllib3.exceptions.HTTPError as ex:
                raise ACEServerConnectionError(f"{method} {self.url}{path} failed: {type(ex).__name__}: {ex}") from ex
            if r.status < 400:
                return r
            error = from_response(r.status, decode(r))
            if error.kind != "not_ready" or time.monotonic() > deadline:
                raise error
            time.sleep(0.5)   # the server is still compiling its kernels

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded reply of a request sent and answered in this client's codec (`binary`)."""
        return decode(self._request(method, path, body, headers=self._call_headers))

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON reply of a request."""
        return json.loads(self._request(method, path, body).data)

    def close(self) -> None:
        self._http.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
