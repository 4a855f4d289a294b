"""The REST client: eDRV-style envelopes in, typed `edrvctl.errors` exceptions out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from edrvctl import __version__
from edrvctl.errors import BY_STATUS, EdrvError, StationTimeout, Unavailable, UsageError

PAGE = 1000  # the API's largest page


class Client:
    def __init__(self, api_url: str, token: str | None, timeout: float = 30.0, auth_hint: str = ""):
        self.api_url = api_url.rstrip("/")
        self.auth_hint = auth_hint  # where the token came from or was looked for, on a 401
        headers = {"User-Agent": f"edrvctl/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            self.http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout)
            self.http.build_request("GET", "/")  # a bad host or port shows here, not later
        except (httpx.InvalidURL, ValueError) as e:
            raise UsageError(f"invalid API URL {api_url!r}: {e}") from None

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> dict:
        """Send one request; return the whole envelope, or raise the error it stands for."""
        envelope, error = self._send(method, path, params=params, body=body, timeout=timeout)
        if error is not None:
            raise error
        return envelope

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> tuple[dict, EdrvError | None]:
        """The envelope, and the error it stands for (None on success)."""
        kwargs: dict[str, Any] = {"params": params}
        if body is not None:
            kwargs["content"] = orjson.dumps(body)
            kwargs["headers"] = {"Content-Type": "application/json"}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise StationTimeout(f"the API at {self.api_url} did not answer in time") from None
        except httpx.TransportError as e:
            raise Unavailable(
                f"cannot reach the API at {self.api_url} ({e})",
                hint="start one with `edrvctl serve`, or set --api-url / EDRV_API_URL",
            ) from None
        try:
            envelope = orjson.loads(r.content)
            ok, message = envelope["ok"], envelope.get("message") or ""
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise EdrvError(
                f"{method} {path}: unexpected {r.status_code} response from "
                f"{self.api_url}: {r.text[:200]!r}"
            ) from None
        if not ok or r.status_code >= 400:
            hint = self.auth_hint if r.status_code == 401 else None
            error = BY_STATUS.get(r.status_code, EdrvError)(
                message or f"HTTP {r.status_code}", hint
            )
            return envelope, error
        return envelope, None

    # --- files (serve's files listener) ---

    def upload_file(self, path: str, timeout: float = 600) -> dict:
        """POST a local file to /v1.1/files (streamed); its record {_id, name, size, url}."""
        import os

        name = os.path.basename(path)
        try:
            f = open(path, "rb")  # noqa: SIM115  (closed below; httpx streams it)
        except OSError as e:
            raise UsageError(f"cannot read {path!r}: {e.strerror}") from None
        with f:
            try:
                r = self.http.post(
                    "/v1.1/files",
                    params={"name": name},
                    content=iter(lambda: f.read(64 * 1024), b""),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(os.fstat(f.fileno()).st_size),
                    },
                    timeout=timeout,
                )
            except httpx.TimeoutException:
                raise StationTimeout(f"the API at {self.api_url} did not answer in time") from None
            except httpx.TransportError as e:
                raise Unavailable(f"cannot reach the API at {self.api_url} ({e})") from None
        return self._checked(r, "POST", "/v1.1/files")["result"]

    def download(self, path: str, dest: str, timeout: float = 600) -> int:
        """GET `path` into the local file `dest` (written beside it, then renamed); bytes."""
        import os
        import tempfile

        folder = os.path.dirname(os.path.abspath(dest))
        try:
            with self.http.stream("GET", path, timeout=timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    self._checked(r, "GET", path)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".edrvctl-")
                size = 0
                try:
                    with os.fdopen(fd, "wb") as out:
                        for chunk in r.iter_bytes():
                            out.write(chunk)
                            size += len(chunk)
                    os.replace(tmp, dest)
                except BaseException:
                    os.unlink(tmp)
                    raise
        except httpx.TimeoutException:
            raise StationTimeout(f"the API at {self.api_url} did not answer in time") from None
        except httpx.TransportError as e:
            raise Unavailable(f"cannot reach the API at {self.api_url} ({e})") from None
        except OSError as e:
            raise UsageError(f"cannot write {dest!r}: {e.strerror}") from None
        return size

    # --- live streams (server-sent events) ---

    def stream(
        self, path: str, params: dict | None = None, after: int | None = None
    ) -> Iterator[tuple[int, str, Any] | None]:
        """The events of an SSE stream as (id, event name, data), for as long as the caller
        iterates; None for each keep-alive (so a caller can redraw or give up). A dropped
        connection is opened again, resuming after the last id seen; an error answer
        (401, 404, ...) raises."""
        last = after
        delay = 0.5
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                # no read timeout: a quiet stream sends a keep-alive every 15 s
                timeout = httpx.Timeout(self.http.timeout.connect or 10.0, read=60.0)
                with self.http.stream(
                    "GET", path, params=params, headers=headers, timeout=timeout
                ) as r:
                    if r.status_code >= 400:
                        r.read()
                        self._checked(r, "GET", path)
                    delay = 0.5
                    for item in _sse_events(r.iter_lines()):
                        if item is not None:
                            last = item[0]
                        yield item
            except (httpx.TimeoutException, httpx.TransportError):
                import time

                time.sleep(delay)  # the server restarts, or the network blinks: resume
                delay = min(delay * 2, 10.0)

    def _checked(self, r: httpx.Response, method: str, path: str) -> dict:
        try:
            envelope = orjson.loads(r.content)
            ok, message = envelope["ok"], envelope.get("message") or ""
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise EdrvError(
                f"{method} {path}: unexpected {r.status_code} response from "
                f"{self.api_url}: {r.text[:200]!r}"
            ) from None
        if not ok or r.status_code >= 400:
            hint = self.auth_hint if r.status_code == 401 else None
            raise BY_STATUS.get(r.status_code, EdrvError)(message or f"HTTP {r.status_code}", hint)
        return envelope

    # --- commands: each one an Action ---

    def act(
        self, method: str, path: str, body: Any = None, params: dict | None = None, wait: float = 30
    ) -> tuple[Any, EdrvError | None]:
        """Send a command (`wait`: seconds the server waits for the station). Returns the
        Action (a list of them for configurations) and, when it was refused, timed out or
        failed, the error it stands for. An error before anything was recorded is raised."""
        envelope, error = self._send(
            method, path, params={**(params or {}), "wait": wait}, body=body, timeout=wait + 15
        )
        result = envelope.get("result")
        if error is not None and not result:
            raise error
        return result, error

    def get_action(self, action_id: str) -> dict:
        return self.request("GET", f"/v1.1/actions/{_seg(action_id)}")["result"]

    def list_actions(self, filters: dict, limit: int | None) -> Iterator[dict]:
        return self._pages("/v1.1/actions", filters, limit)

    # --- sessions ---

    def _pages(self, path: str, params: dict, limit: int | None) -> Iterator[dict]:
        """The items of a paged list, following its pages; at most `limit` of them."""
        size = PAGE if limit is None else max(1, min(PAGE, limit))
        page, seen = 1, 0
        while True:
            env = self.request(
                "GET", path, params={**params, "paginate_limit": size, "paginate_page": page}
            )
            for doc in env["result"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield doc
            if not env.get("hasNext") or (limit is not None and seen >= limit):
                return
            page += 1

    def list_sessions(self, filters: dict, limit: int | None) -> Iterator[dict]:
        return self._pages("/v1.1/sessions", filters, limit)

    def get_session(self, session_id: str) -> dict:
        return self.request("GET", f"/v1.1/sessions/{_seg(session_id, 'session')}")["result"]

    def session_meter_values(self, session_id: str, limit: int | None = None) -> Iterator[dict]:
        return self._pages(f"/v1.1/sessions/{_seg(session_id, 'session')}/meter_values", {}, limit)

    def close_session(self, session_id: str, reason: str, force: bool, timeout: float) -> dict:
        return self.request(
            "POST",
            f"/v1.1/sessions/{_seg(session_id, 'session')}/close",
            body={"reason": reason, "force": force, "timeout": timeout},
            timeout=timeout + 15,
        )["result"]

    # --- chargestations ---

    def list_stations(self, filters: dict, limit: int | None) -> Iterator[dict]:
        """Stations matching `filters`, following the API's pages; at most `limit` of them."""
        return self._pages("/v1.1/chargestations", filters, limit)

    def create_station(self, body: dict) -> dict:
        return self.request("POST", "/v1.1/chargestations", body=body)["result"]

    def get_station(self, key: str) -> dict:
        return self.request("GET", f"/v1.1/chargestations/{_seg(key)}")["result"]

    def update_station(self, key: str, body: dict) -> dict:
        return self.request("PATCH", f"/v1.1/chargestations/{_seg(key)}", body=body)["result"]

    def delete_station(self, key: str) -> dict:
        return self.request("DELETE", f"/v1.1/chargestations/{_seg(key)}")["result"]

    def rotate_password(self, key: str) -> dict:
        return self.request("PATCH", f"/v1.1/chargestations/{_seg(key)}/reset_password")["result"]

    def get_variables(self, key: str, keys: list[str], timeout: float) -> dict:
        return self.request(
            "POST",
            f"/v1.1/chargestations/{_seg(key)}/get_variables",
            body={"keys": keys, "timeout": timeout},
            timeout=timeout + 10,
        )["result"]

    # --- batches ---

    def create_batch(self, body: dict) -> dict:
        """Start a batch (the server answers at once, 202) or a dry run (201)."""
        return self.request("POST", "/v1.1/actions/batch", params={"wait": 0}, body=body)["result"]

    def get_batch(self, batch_id: str) -> dict:
        return self.request("GET", f"/v1.1/actions/batch/{_seg(batch_id)}")["result"]


MAX_EVENT = 1 << 20  # characters of one server-sent event read; past it, the event is skipped


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[int, str, Any] | None]:
    """Parse server-sent events (id, event, data lines; a blank line ends one; a comment
    line is a keep-alive, yielded as None)."""
    seq: int | None = None
    name, size = "message", 0
    data: list[str] = []
    for line in lines:
        if not line:
            if data and seq is not None and size <= MAX_EVENT:
                try:
                    yield seq, name, orjson.loads("\n".join(data))
                except orjson.JSONDecodeError:
                    pass
            seq, name, data, size = None, "message", [], 0
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "":
            yield None
        elif field == "id":
            seq = int(value) if value.isdigit() else None
        elif field == "event":
            name = value
        elif field == "data":
            size += len(value)
            if size <= MAX_EVENT:
                data.append(value)


def _seg(key: str, what: str = "chargestation") -> str:
    """A station's `_id` or endpoint (or another record's `_id`) as one path segment."""
    from urllib.parse import quote

    if not key.strip():
        names = "_id or endpoint" if what == "chargestation" else "_id"
        raise UsageError(f"a {what} {names} is required, not an empty string")
    return quote(key, safe="")
