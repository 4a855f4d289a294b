"""Issue 15: `edrvctl cs list` is answered without Typer (edrvctl.cli.fast) and dumps the pages
as they arrive. It prints what the Typer command prints, byte for byte, in every format; what
it does not understand (help, --watch, a bad value) goes to the Typer app; its failures are
the same messages and exit codes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading

import pytest
from typer.testing import CliRunner

from edrvctl.cli import app, fast, output
from edrvctl.client import _paged
from edrvctl.errors import Unavailable
from timing import scaled

LOC = f"fast-{os.getpid()}"
# What JSON leaves raw and the CLI escapes, what it keeps (non-ASCII text, numbers as orjson
# writes them), and what only looks like markup.
META = {
    "text": "\x1b]0;pwned\x07\u202eevil\u200b\x7f\x9b2J\u2028end",
    "plain": "é ü 漢字 🚗 [/bold]",
    "numbers": [1.5, 1e100, -0.0, 12345678901234567890, 0],
    "empty": {"list": [], "dict": {}},
}


@pytest.fixture(scope="module")
def stations(server):
    return [
        server.create(
            f"fast{os.getpid()}-{i}", location=LOC, organization="o\u202er", meta_data=META
        )
        for i in range(5)
    ]


def edrvctl(env: dict, *args: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m edrvctl ARGS` as a user runs it (stdout a pipe): the entry point that
    takes the fast path."""
    return subprocess.run(
        [sys.executable, *flags, "-m", "edrvctl", *args],
        env={**env, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        timeout=scaled(60),
    )


def typer_app(env: dict, *args: str):
    return CliRunner().invoke(app, list(args), env=env, prog_name="edrvctl")


@pytest.mark.parametrize(
    "args",
    [
        ["cs", "list", "--location", LOC, "-o", "json"],
        ["cs", "list", "--location", LOC, "--all", "-o", "yaml"],
        ["chargestations", "list", f"--location={LOC}", "--limit", "2", "-o", "plain"],
        ["--color", "never", "cs", "list", "--location", LOC, "-o", "table", "--no-headers"],
        ["cs", "list", "--location", LOC, "-q", "--offline", "--active"],
        ["cs", "list", "--location", LOC, "--protocol", "OCPP1.6", "--status", "available"],
        ["cs", "list", "--location", LOC, "--inactive", "-o", "json"],  # none: []
        ["cs", "list", "--location", LOC, "--limit", "3", "-o", "json", "--context", ""],
    ],
)
def test_it_prints_what_the_typer_command_prints(cli_env, stations, args):
    env = {**cli_env, "COLUMNS": "200"}
    fast_run, typer_run = edrvctl(env, *args), typer_app(env, *args)
    assert (fast_run.returncode, typer_run.exit_code) == (0, 0), fast_run.stderr
    assert fast_run.stdout == typer_run.stdout_bytes
    assert fast_run.stdout.strip()  # (something was listed, or `[]`)


def test_a_whole_list_in_json_skips_typer_and_httpx(cli_env, stations):
    r = edrvctl(cli_env, "cs", "list", "--all", "-o", "json", flags=("-X", "importtime"))
    assert r.returncode == 0, r.stderr
    imported = {
        line.split("|")[-1].strip()
        for line in r.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "edrvctl.cli.fast" in imported  # the measurement worked
    assert not {m for m in imported if m.split(".")[0] in ("typer", "httpx", "pydantic")}
    assert "typing" not in imported  # (~3 ms of a list's CPU)
    assert r.stdout == typer_app(cli_env, "cs", "list", "--all", "-o", "json").stdout_bytes


def test_its_failures_are_the_usual_messages_and_exit_codes(cli_env, stations):
    dead = {**cli_env, "EDRV_API_URL": "http://127.0.0.1:1"}
    r = edrvctl(dead, "cs", "list", "-o", "json")
    assert r.returncode == Unavailable.exit_code and r.stdout == b""
    assert r.stderr.decode().startswith("error: cannot reach the API at http://127.0.0.1:1 (")
    assert r.stderr == typer_app(dead, "cs", "list", "-o", "json").stderr_bytes

    r = edrvctl({**cli_env, "EDRV_TOKEN": "wrong-token-0123456789"}, "cs", "list", "--all")
    assert r.returncode == 4 and r.stdout == b"" and r.stderr.startswith(b"error: ")

    r = edrvctl(cli_env, "cs", "list", "--status", "nope")  # Typer's own message
    assert r.returncode == 2 and b"'nope' is not one of" in r.stderr
    assert r.stderr == typer_app(cli_env, "cs", "list", "--status", "nope").stderr_bytes


@pytest.mark.parametrize(
    "argv",
    [
        ["cs", "list", "--watch"],
        ["cs", "list", "-h"],
        ["--help", "cs", "list"],
        ["--version"],
        ["cs", "list", "--limit", "0"],
        ["cs", "list", "--limit", "+5"],
        ["cs", "list", "--limit"],
        ["cs", "list", "-qo", "json"],
        ["cs", "list", "-ojson"],
        ["cs", "list", "-o", "JSON"],
        ["cs", "list", "--status", "nope"],
        ["cs", "list", "--color", "blue"],
        ["cs", "list", "--all=yes"],
        ["cs", "list", "--location", "-x"],
        ["cs", "list", "extra"],
        ["cs", "--all", "list"],
        ["cs", "list", "--", "--all"],
        ["cs", "inspect", "x"],
        ["sessions", "list"],
        ["list"],
        [],
    ],
)
def test_what_it_does_not_understand_goes_to_typer(argv):
    assert fast.parse(argv) is None


def test_it_reads_arguments_as_typer_does(monkeypatch):
    monkeypatch.setenv("EDRV_API_URL", "http://env:1")
    monkeypatch.setenv("EDRVCTL_CONTEXT", "")  # empty: not given
    argv = "--debug chargestations list --status FAULTED --offline --online --limit=7"
    args = fast.parse(
        [*argv.split(), "-o", "yaml", "--context", "prod", "--organization=a=b", "-q"]
    )
    assert args == {
        "api_url": "http://env:1",
        "context": "prod",
        "color": "auto",
        "debug": True,
        "filters": {"online": "true", "status": "Faulted", "organization": "a=b"},
        "limit": 7,
        "all_": False,
        "out": "yaml",
        "quiet": True,
        "no_headers": False,
    }
    args = fast.parse(["cs", "list", "--api-url", "http://flag:2", "--all", "--color=never"])
    assert args is not None
    assert (args["api_url"], args["context"], args["color"], args["all_"], args["limit"]) == (
        "http://flag:2",
        None,
        "never",
        True,
        100,
    )


def test_it_knows_every_option_of_the_typer_command():
    """An option added to `cs list` (or to the root) and not here would be refused by the
    fast path: both lists are checked against the command tree generated from the app."""
    from edrvctl._cli_tree import TREE

    assert set(TREE["commands"]["chargestations"]["commands"]["list"]["options"]) == set(
        fast.LIST
    ) | set(fast.TYPER_ONLY)
    typer_only = {"--help", "-h", "--version", "--install-completion", "--show-completion"}
    assert set(TREE["options"]) == set(fast.GLOBAL) | typer_only
    assert TREE["commands"]["cs"]["alias"] == "chargestations"


def written(show, encoding: str = "utf-8") -> bytes:
    out = io.TextIOWrapper(io.BytesIO(), encoding=encoding, write_through=True)
    saved, sys.stdout = sys.stdout, out
    try:
        show()
    finally:
        sys.stdout = saved
    return out.buffer.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "pages",
    [[], [[]], [[{"a": 1}]], [[], [{"a": 1}, {"b": []}], [], [{"c": {}}]], [[META, META], [META]]],
)
def test_json_page_by_page_is_the_json_of_the_whole_list(pages):
    whole = [item for page in pages for item in page]
    assert written(lambda: output.dump_pages(iter(pages))) == written(
        lambda: output.dump(whole, "json")
    )


def test_json_page_by_page_to_a_stream_of_another_encoding_is_text_too():
    pages = [[{"name": "café", "n": 1}], [{"name": "\x9b"}]]
    whole = [item for page in pages for item in page]
    assert written(lambda: output.dump_pages(iter(pages)), "latin-1") == written(
        lambda: output.dump(whole, "json"), "latin-1"
    )


def same(env: dict) -> dict:
    return env


def fake_api(n: int, total: int | None = None, fail_at: int | None = None):
    """get(page, size) over n items; `total` as the envelope says it (a lying server)."""
    asked: list[int] = []
    lock = threading.Lock()

    def get(page: int, size: int) -> dict:
        with lock:
            asked.append(page)
        if page == fail_at:
            raise Unavailable("down")
        items = list(range((page - 1) * size, min(n, page * size)))
        env = {"result": items, "hasNext": page * size < n}
        if total is not None:
            env["total"] = total
        return env

    return get, asked


@pytest.mark.parametrize("total", [None, 2500, 0, 10**12])
def test_pages_are_followed_by_has_next_whatever_the_total_says(total, monkeypatch):
    monkeypatch.setattr("edrvctl.client.PAGE", 1000)
    get, asked = fake_api(2500, total)
    assert [x for page in _paged(get, same, None) for x in page] == list(range(2500))
    # a total that lies costs at most the pages read ahead, never a page more
    assert sorted(asked)[:3] == [1, 2, 3] and len(asked) <= 3 + 1 + 2


def test_a_limit_is_kept_and_read_ahead_no_further(monkeypatch):
    get, asked = fake_api(5000, 5000)
    assert [len(p) for p in _paged(get, same, 1500)] == [1000, 500]
    assert sorted(asked) == [1, 2]


def test_a_failure_of_a_page_read_ahead_is_raised_in_its_turn():
    get, _ = fake_api(5000, 5000, fail_at=3)
    pages = _paged(get, same, None)
    assert len(next(pages)) == 1000 and len(next(pages)) == 1000
    with pytest.raises(Unavailable):
        next(pages)


def test_a_page_shown_is_let_go_before_the_next_is_parsed():
    """So that the next page is made in the memory of the last (still in the CPU's caches)."""
    import dataclasses
    import weakref

    @dataclasses.dataclass(eq=False)
    class Item:  # (orjson dumps it as {"page": n}; a weak reference tells whether it lives)
        page: int

    alive: weakref.WeakSet = weakref.WeakSet()
    alive_at_parse: list[int] = []

    def parse(page: int) -> dict:
        alive_at_parse.append(len(alive))
        items = [Item(page), Item(page)]
        alive.update(items)
        return {"result": items, "hasNext": page < 3, "total": 6}

    shown = written(lambda: output.dump_pages(_paged(lambda page, size: page, parse, None)))
    assert shown.count(b'"page"') == 6
    assert alive_at_parse == [0, 0, 0]


class FakeApi:
    """A raw HTTP server on a thread: `answers` are sent as they are, one per request; after
    each, the connection is closed when `close_after` says so (without saying it)."""

    def __init__(self, answers: list[bytes], close_after: bool = False):
        import socket

        self.answers, self.close_after = answers, close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while self.answers:
            conn, _ = self.sock.accept()
            self.connections += 1
            with conn:
                data = b""
                while self.answers:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if b"\r\n\r\n" not in data:
                        break
                    request, _, data = data.partition(b"\r\n\r\n")
                    self.requests.append(request)
                    conn.sendall(self.answers.pop(0))
                    if self.close_after:
                        break


def envelope(result: list, has_next: bool, total: int) -> bytes:
    import orjson

    return orjson.dumps({"ok": True, "result": result, "hasNext": has_next, "total": total})


def answer(content: bytes, status: str = "200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(content), content)


def test_pages_are_read_again_over_a_connection_the_server_closed_while_idle():
    from edrvctl.client import pages

    api = FakeApi(
        [answer(envelope([1, 2], True, 3)), answer(envelope([3], False, 3))],
        close_after=True,  # as a server does with an idle kept-alive connection
    )
    got = list(pages(api.url, "tok", "/v1.1/chargestations", {"location": "a b"}, None))
    assert got == [[1, 2], [3]]
    assert api.connections == 2
    first = api.requests[0].decode()
    assert first.startswith("GET /v1.1/chargestations?location=a+b&paginate_limit=1000&")
    assert "\r\nAuthorization: Bearer tok" in first and "\r\nUser-Agent: edrvctl/" in first


def test_pages_are_read_over_one_kept_alive_connection():
    from edrvctl.client import pages

    api = FakeApi([answer(envelope([i], i < 4, 5)) for i in range(5)])
    assert list(pages(api.url, None, "/v1.1/chargestations", {}, None)) == [[i] for i in range(5)]
    assert api.connections == 1 and len(api.requests) == 5
    assert b"Authorization" not in api.requests[0]


def test_the_first_page_is_asked_for_before_the_pages_are_read():
    """`cs list` imports what shows the pages while the API reads the first one."""
    import time

    from edrvctl.client import pages

    api = FakeApi([answer(envelope([1], False, 1))])
    listed = pages(api.url, "tok", "/v1.1/chargestations", {}, None)
    deadline = time.monotonic() + scaled(10)
    while not api.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(api.requests) == 1  # before anything was read
    assert list(listed) == [[1]]


def test_an_api_that_does_not_answer_in_time_is_a_timeout(monkeypatch):
    import socket

    from edrvctl.client import pages
    from edrvctl.errors import StationTimeout

    monkeypatch.setattr("edrvctl.client.TIMEOUT", scaled(0.2))
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(StationTimeout, match="did not answer in time"):
            list(pages(url, "tok", "/v1.1/chargestations", {}, None))


@pytest.mark.parametrize(
    "reply, error",
    [
        (answer(b'{"ok":false,"message":"invalid token"}', "401 Unauthorized"), "invalid token"),
        (answer(b"hello"), "unexpected 200 response"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000 + b"\r\n", "cannot reach the API"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{", "cannot reach the API"),  # cut short
    ],
)
def test_pages_fail_as_the_client_does(reply, error):
    from edrvctl.client import pages
    from edrvctl.errors import EdrvError

    api = FakeApi([reply], close_after=True)
    with pytest.raises(EdrvError, match=error):
        list(pages(api.url, "tok", "/v1.1/chargestations", {}, None))


@pytest.mark.parametrize(
    "url, env, plain",
    [
        ("http://127.0.0.1:7780", {}, True),
        ("http://cs.example.com/base/", {}, True),
        ("http://localhost", {"NO_PROXY": "*"}, True),
        ("http://localhost", {"HTTP_PROXY": "http://proxy:3128"}, False),
        ("http://localhost", {"all_proxy": "socks5://proxy"}, False),
        ("https://cs.example.com", {}, False),
        ("http://user:secret@cs.example.com", {}, False),
        ("http://256.1.1.1:1", {}, False),
        ("http://01.2.3.4", {}, False),
        ("http://[::1]:7780", {}, False),
        ("http://[::1", {}, False),
        ("http://host:99999", {}, False),
        ("http://host/a path", {}, False),
        ("http://hóst", {}, False),
        ("http://host?x=1", {}, False),
    ],
)
def test_only_plain_http_is_read_without_httpx(monkeypatch, url, env, plain):
    """Anything httpx would treat its own way (TLS, proxies, credentials, IPv6, names to
    encode, URLs it refuses) goes through httpx."""
    from edrvctl.client import _plain_http

    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _plain_http(url) is plain


def test_a_list_that_fails_half_way_prints_nothing(cli_env):
    """As before pages were shown as they came: a script never reads half a list."""
    first = envelope([{"_id": "a" * 24, "endpoint": "a"}], True, 2)
    failed = b'{"ok":false,"message":"the store is gone"}'
    api = FakeApi([answer(first), answer(failed, "500 Internal Server Error")])
    r = edrvctl({**cli_env, "EDRV_API_URL": api.url}, "cs", "list", "--all", "-o", "json")
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr == b"error: the store is gone\n"
