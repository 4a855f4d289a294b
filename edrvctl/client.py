"""The REST client: eDRV-style envelopes in, typed `edrvctl.errors` exceptions out.

`Client` speaks httpx (imported when one is made: ~60 ms). `pages` reads a long list (`cs list
--all`) through the standard library when it can, reading the next page while the caller shows
this one.

Imported by `cs list` before it asks for the first page: orjson, threading and typing are
imported where they are used, once the request is out (the API reads the page meanwhile)."""

from __future__ import annotations

from edrvctl import __version__
from edrvctl.errors import BY_STATUS, EdrvError, StationTimeout, Unavailable, UsageError

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: ~3 ms)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    import httpx

PAGE = 1000  # the API's largest page
TIMEOUT = 30.0  # seconds for the API to answer
UNAVAILABLE_HINT = "start one with `edrvctl serve`, or set --api-url / EDRV_API_URL"


def user_agent() -> str:
    return f"edrvctl/{__version__}"


def _envelope(
    status: int, content: bytes | bytearray, method: str, path: str, api_url: str, auth_hint: str
) -> tuple[dict, EdrvError | None]:
    """An answer's envelope, and the error it stands for (None on success); an answer that is
    no envelope raises."""
    import orjson

    try:
        envelope = orjson.loads(content)
        ok, message = envelope["ok"], envelope.get("message") or ""
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = content.decode("utf-8", "replace")
        raise EdrvError(
            f"{method} {path}: unexpected {status} response from {api_url}: {text[:200]!r}"
        ) from None
    if not ok or status >= 400:
        hint = auth_hint if status == 401 else None
        return envelope, BY_STATUS.get(status, EdrvError)(message or f"HTTP {status}", hint)
    return envelope, None


class Client:
    def __init__(
        self, api_url: str, token: str | None, timeout: float = TIMEOUT, auth_hint: str = ""
    ):
        import httpx

        self.api_url = api_url.rstrip("/")
        self.auth_hint = auth_hint  # where the token came from or was looked for, on a 401
        headers = {"User-Agent": user_agent(), "Accept": "application/json"}
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
        import httpx
        import orjson

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
                f"cannot reach the API at {self.api_url} ({e})", hint=UNAVAILABLE_HINT
            ) from None
        return _envelope(r.status_code, r.content, method, path, self.api_url, self.auth_hint)

    # --- files (serve's files listener) ---

    def upload_file(self, path: str, timeout: float = 600) -> dict:
        """POST a local file to /v1.1/files (streamed); its record {_id, name, size, url}."""
        import os

        import httpx

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

        import httpx

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
        import httpx

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
        envelope, error = _envelope(
            r.status_code, r.content, method, path, self.api_url, self.auth_hint
        )
        if error is not None:
            raise error
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

        def get(page: int, size: int) -> dict:
            return self.request(
                "GET", path, params={**params, "paginate_limit": size, "paginate_page": page}
            )

        for items in _paged(get, lambda env: env, limit):
            yield from items

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


AHEAD = 2  # pages read ahead of the one being shown


def page_size(limit: int | None) -> int:
    """The page size a list of at most `limit` items is read with."""
    return PAGE if limit is None else max(1, min(PAGE, limit))


def _paged(
    fetch: Callable[[int, int], Any], parse: Callable[[Any], dict], limit: int | None
) -> Iterator[list]:
    """The items of a paged list, page by page, following `hasNext`; at most `limit` in all.
    `fetch(page, size)` reads one page's answer (for page 1, one may already have been asked
    for), `parse` makes it its envelope (or raises the
    error it stands for). The pages after the first (as many as its `total` says) are fetched
    by a thread, at most AHEAD ahead of the caller, which parses and shows them: the thread
    asks for the next page as soon as it has one, and the server answers on one core while the
    CLI works on the other."""
    import queue
    import threading

    size = page_size(limit)
    env = parse(fetch(1, size))
    total = env.get("total")
    last = 1
    if type(total) is int:
        last = -(-(total if limit is None else min(total, limit)) // size)
    ahead: queue.Queue | None = None
    stop = threading.Event()
    if last > 1:
        ahead = queue.Queue(maxsize=AHEAD)

        def read() -> None:
            for page in range(2, last + 1):
                if stop.is_set():
                    return
                try:
                    ahead.put((fetch(page, size), None))
                except BaseException as e:  # the caller raises it, in its own turn
                    ahead.put((None, e))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
    try:
        page, seen = 1, 0
        while True:
            items = env["result"]
            if limit is not None:
                items = items[: limit - seen]
            seen += len(items)
            more = env.get("hasNext") and not (limit is not None and seen >= limit)
            yield items
            # The page shown is let go before the next is parsed (the caller lets go of it too):
            # the next one is made in its memory, still in the CPU's caches, instead of in
            # memory new to the process (~25 ms of 10 pages of 1,000 stations).
            del env, items
            if not more:
                return
            page += 1
            if ahead is not None and page <= last:
                answer, error = ahead.get()
                if error is not None:
                    raise error
                env = parse(answer)
                del answer
            else:
                if ahead is not None:
                    reader.join()  # done: the connection is free again
                env = parse(fetch(page, size))
    finally:
        stop.set()
        if ahead is not None:
            while not ahead.empty():  # a reader waiting to hand a page over sees the stop
                ahead.get_nowait()


def _plain_http(api_url: str) -> bool:
    """Whether `pages` may read `api_url` with `_Http`, as httpx would: plain http to a host
    name of letters, digits, dots and dashes or to a valid IPv4 address, a plain path; no
    credentials in the URL, no proxy in the environment. Anything else (IPv6, a bad URL: httpx
    says what is wrong with it) goes through httpx."""
    import os
    import re
    from urllib.parse import urlsplit

    try:
        u = urlsplit(api_url)
        u.port  # noqa: B018  (raises on a bad one)
    except ValueError:
        return False
    host = u.hostname or ""
    if not re.fullmatch(r"[A-Za-z0-9._~/-]*", u.path):
        return False
    if re.fullmatch(r"[0-9]+(\.[0-9]+){3}", host):
        if any(not 0 <= int(part) <= 255 or str(int(part)) != part for part in host.split(".")):
            return False
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", host):
        return False
    proxies = [k for k in os.environ if k.lower().endswith("_proxy") and k.lower() != "no_proxy"]
    return u.scheme == "http" and not (u.username or u.password or u.query or u.fragment or proxies)


class _Http:
    """GET requests over one kept-alive connection (http.client: httpx's imports cost ~60 ms, a
    good part of a whole `cs list`), with Client's headers, timeout and errors. A connection
    the server closed while idle is opened again (GET)."""

    def __init__(self, api_url: str, token: str | None, auth_hint: str):
        from http.client import HTTPConnection
        from urllib.parse import urlsplit

        self.api_url, self.auth_hint = api_url.rstrip("/"), auth_hint
        u = urlsplit(self.api_url)
        self.conn = HTTPConnection(u.hostname or "", u.port, timeout=TIMEOUT)
        self.base = u.path
        self.headers = {"User-Agent": user_agent(), "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def fetch(self, path: str, params: dict) -> tuple[int, bytes]:
        """GET `path` with `params`: the answer's status and content."""
        self.start(path, params)
        return self.finish()

    def start(self, path: str, params: dict) -> None:
        """Send GET `path` with `params`; `finish` reads the answer. The caller may do something
        else meanwhile (the API works on another core)."""
        from http.client import HTTPException
        from urllib.parse import urlencode

        self.url = f"{self.base}{path}?{urlencode(params)}"
        self.reused = self.conn.sock is not None
        try:
            try:
                self.conn.request("GET", self.url, headers=self.headers)
            except ConnectionError:
                if not self.reused:
                    raise
                self._again()  # closed while idle: again
        except (OSError, HTTPException) as e:
            raise self._failure(e) from None

    def finish(self) -> tuple[int, bytes]:
        """The status and content of the answer to the request `start` sent."""
        from http.client import HTTPException

        try:
            try:
                response = self.conn.getresponse()
            except ConnectionError:
                if not self.reused:
                    raise
                self._again()  # closed while idle, before it answered: again
                response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, HTTPException) as e:
            raise self._failure(e) from None

    def _again(self) -> None:
        """The request again, over a new connection."""
        self.conn.close()
        self.reused = False
        self.conn.request("GET", self.url, headers=self.headers)

    def _failure(self, e: Exception) -> EdrvError:
        """The error a failed request stands for (its connection closed)."""
        self.conn.close()
        if isinstance(e, TimeoutError):
            return StationTimeout(f"the API at {self.api_url} did not answer in time")
        return Unavailable(f"cannot reach the API at {self.api_url} ({e})", hint=UNAVAILABLE_HINT)

    def envelope(self, path: str, status: int, content: bytes) -> dict:
        """The envelope of an answer to GET `path`, or the error it stands for raised."""
        envelope, error = _envelope(status, content, "GET", path, self.api_url, self.auth_hint)
        if error is not None:
            raise error
        return envelope


def pages(
    api_url: str, token: str | None, path: str, params: dict, limit: int | None, auth_hint: str = ""
) -> Iterator[list]:
    """The items of the list at `path` (filtered by `params`), page by page; at most `limit`.
    Plain http goes through `_Http`; anything else (https, a proxy, a token that is not plain
    text: httpx says what is wrong) through `Client`."""
    if not _plain_http(api_url) or not (token is None or (token.isascii() and token.isprintable())):
        client = Client(api_url, token, auth_hint=auth_hint)
        return _paged(
            lambda page, size: client.request(
                "GET", path, params={**params, "paginate_limit": size, "paginate_page": page}
            ),
            lambda env: env,
            limit,
        )
    http = _Http(api_url, token, auth_hint)
    size = page_size(limit)
    # The first page is asked for now: the API reads it while the caller imports what it shows
    # the pages with (~20 ms).
    http.start(path, {**params, "paginate_limit": size, "paginate_page": 1})
    return _paged(
        lambda page, size: (
            http.finish()
            if page == 1
            else http.fetch(path, {**params, "paginate_limit": size, "paginate_page": page})
        ),
        lambda answer: http.envelope(path, *answer),
        limit,
    )


MAX_EVENT = 1 << 20  # characters of one server-sent event read; past it, the event is skipped


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[int, str, Any] | None]:
    """Parse server-sent events (id, event, data lines; a blank line ends one; a comment
    line is a keep-alive, yielded as None)."""
    import orjson

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
