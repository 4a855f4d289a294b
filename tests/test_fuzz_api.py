"""Fuzzing the admin REST API of a real `edrvctl serve` (the module's `server` fixture).

1. schemathesis, driven by the server's own `/openapi.json`: positive and negative inputs for
   every operation, a bounded number per operation, with the token. Path ids are sometimes
   swapped for a station that exists, so PATCH/DELETE/connectors reach the store too.
2. Targeted cases: every route without (or with a bad) token, malformed JSON bodies, an
   oversized body, unicode endpoints, path ids with slashes and percent-encoding.

Invariant everywhere (docs/api.md): no 5xx, and every response is a `{ok, message, result}`
envelope with a JSON content type, `ok` true exactly below 400, and nothing in the server's log
is a Traceback. The bugs this found are regression tests at the end of the file.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from urllib.parse import quote

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from timing import scaled

BASE = "/v1.1/chargestations"
_seq = itertools.count(1)


def uniq(prefix: str = "fa") -> str:
    """A fresh valid endpoint (<= 48 characters of the allowed set)."""
    return f"{prefix}-{os.getpid()}-{next(_seq)}-{time.monotonic_ns() % 10**6}"


def auth(server) -> dict:
    return {"Authorization": f"Bearer {server.token}"}


def assert_envelope(
    status: int,
    content_type: str | None,
    content: bytes,
    what: str = "",
    expect: int | tuple[int, ...] | None = None,
) -> dict:
    """The API's contract for every response; returns the parsed body."""
    shown = f"{what}: {status} {content[:300]!r}"
    assert status < 500, shown
    if expect is not None:
        assert status in ((expect,) if isinstance(expect, int) else expect), shown
    assert (content_type or "").split(";")[0].strip() == "application/json", (
        f"{what}: content-type {content_type!r} ({status})"
    )
    body = json.loads(content)
    assert isinstance(body, dict), shown
    assert {"ok", "message", "result"} <= body.keys(), shown
    assert body["ok"] is (status < 400), shown
    assert isinstance(body["message"], str), shown
    if status >= 400:
        assert body["message"], f"{what}: an error without a message: {shown}"
    return body


def check(r: httpx.Response, what: str = "", expect=None) -> dict:
    return assert_envelope(
        r.status_code,
        r.headers.get("content-type"),
        r.content,
        what or f"{r.request.method} {r.request.url}",
        expect,
    )


_clients: dict[str, httpx.Client] = {}


def request(server, method: str, path, *, token: bool = True, **kw) -> httpx.Response:
    """One request, on a new connection each time: uvicorn drops a keep-alive connection after
    a 500, which would otherwise show up as an error in the next, unrelated request. (One
    client per server: creating an httpx.Client costs ~50 ms, mostly its SSL context.)"""
    client = _clients.get(server.api_url)
    if client is None:
        client = _clients[server.api_url] = httpx.Client(
            base_url=server.api_url,
            timeout=scaled(30),
            limits=httpx.Limits(max_keepalive_connections=0),
        )
    headers = {**(auth(server) if token else {}), **kw.pop("headers", {})}
    return client.request(method, path, headers=headers, **kw)


def raw(server, path: str) -> httpx.URL:
    """The URL with exactly this path and query: httpx neither re-encodes nor removes dot
    segments."""
    ascii_path = quote(path, safe="".join(map(chr, range(0x21, 0x7F))))  # only non-ASCII
    return httpx.URL(server.api_url).copy_with(raw_path=ascii_path.encode())


def create(server, endpoint: str, **body) -> dict:
    r = request(server, "POST", BASE, json={"endpoint": endpoint, **body})
    assert r.status_code == 201, r.text
    return r.json()["result"]


@pytest.fixture(autouse=True)
def no_traceback_logged(server):
    """After each test: nothing it did made the server log a Traceback. (Per test, so that it
    holds in any order and names the test that caused it.)"""
    since = len(server.logs())
    yield
    new = server.logs()[since:]
    assert "Traceback" not in new, new[max(0, new.find("Traceback") - 300) :][:3000]


# --------------------------------------------------------------------------- 1. schemathesis


@pytest.fixture(scope="module")
def api_schema(server):
    """The live server's own description (schemathesis' pytest plugin cannot be used here:
    its `from_fixture(...).parametrize()` sets `node._nodeid`, which pytest 9 no longer has,
    so operations are driven with plain hypothesis below)."""
    return schemathesis.openapi.from_url(f"{server.api_url}/openapi.json")


@pytest.fixture(scope="module")
def existing(server) -> list[str]:
    """Stations the generated cases may address: two endpoints and one _id (the endpoints are
    recreated when a generated DELETE removed them)."""
    eps = [uniq("fx16"), uniq("fx201")]
    first = create(server, eps[0], protocol="ocpp1.6")
    create(server, eps[1], protocol="ocpp2.0.1")
    return [*eps, first["_id"]]


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value
)
def test_openapi_operations_never_5xx_and_always_envelope(server, api_schema, existing, mode):
    # a stream answers for as long as the client reads (tests/test_events.py has them)
    operations = [
        op
        for op in (result.ok() for result in api_schema.get_all_operations())
        if not op.path.endswith("/stream")
    ]
    labels = sorted(op.label for op in operations)
    assert len(operations) >= 7, labels  # list, create, get, patch, delete, connectors, get_vars
    checks = [schemathesis.checks.not_a_server_error]
    if mode is GenerationMode.NEGATIVE:  # invalid inputs are refused, never accepted
        checks.append(schemathesis.checks.negative_data_rejection)

    session = requests.Session()
    for op in operations:

        @given(case=op.as_strategy(generation_mode=mode), pick=st.integers(-1, 2))
        @settings(
            max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def run(case, pick):
            if "id" in (case.path_parameters or {}) and pick >= 0:
                key = existing[pick]
                if pick < 2 and request(server, "GET", f"{BASE}/{key}").status_code == 404:
                    request(server, "POST", BASE, json={"endpoint": key})  # a case deleted it
                case.path_parameters["id"] = key
            if (
                mode is GenerationMode.POSITIVE
                and case.method == "POST"
                and op.path == BASE
                and isinstance(case.body, dict)
                and pick >= 0
            ):
                # the schema does not say what an endpoint may be (see the xfail below), so
                # most generated ones are refused: give some of them a valid one
                case.body["endpoint"] = uniq("fs")
            if (
                mode is GenerationMode.POSITIVE
                and op.path.endswith("/get_variables")
                and isinstance(case.body, dict)
                and isinstance(case.body.get("timeout"), (int, float))
            ):
                # stations here are offline: nothing is waited for, but keep it short anyway
                case.body["timeout"] = min(case.body["timeout"], scaled(1))
            response = case.call(headers=auth(server), timeout=scaled(30), session=session)
            what = f"{mode.value} {case.method} {case.formatted_path} {case.as_curl_command()}"
            assert_envelope(
                response.status_code,
                (response.headers.get("content-type") or [None])[0],
                response.content,
                what[:2000],
            )
            if mode is GenerationMode.NEGATIVE and response.status_code == 413:
                return  # refused for its size (a body past MAX_BODY): a rejection too
            case.validate_response(response, checks=checks)

        t0 = time.monotonic()
        try:
            run()
        except Unsatisfiable:
            # nothing invalid to generate (e.g. a path id that is any string): fine for
            # negative mode, a problem for positive
            assert mode is GenerationMode.NEGATIVE, op.label
        except Exception as e:
            e.add_note(f"operation: {op.label} ({mode.value})")
            raise
        finally:
            print(f"{op.label} ({mode.value}): {time.monotonic() - t0:.1f} s")


# --------------------------------------------------------------------------- 2. authentication


def _routes(server) -> list[tuple[str, str]]:
    doc = request(server, "GET", "/openapi.json", token=False).json()
    routes = []
    for path, ops in doc["paths"].items():
        for method in ops:
            routes.append((method.upper(), path.replace("{id}", "some-station")))
    return routes


BAD_TOKENS = [
    None,
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": "bearer {token}"},  # the scheme is compared exactly
    {"Authorization": "Bearer  {token}"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "{token}"},
    {"Authorization": b"Bearer \xe9\xff"},  # not ASCII, not UTF-8
    {"Authorization": "Bearer " + "x" * 8000},
]


@pytest.mark.parametrize("headers", BAD_TOKENS, ids=lambda h: repr(h)[:40])
def test_every_route_without_a_valid_token_is_401(server, headers):
    if headers is not None:
        headers = {
            k: v.replace("{token}", server.token) if isinstance(v, str) else v
            for k, v in headers.items()
        }
    routes = _routes(server)
    assert len(routes) >= 6, routes
    for method, path in routes:
        kw = {"json": {"endpoint": uniq()}} if method in ("POST", "PATCH") else {}
        r = request(server, method, path, token=False, headers=headers or {}, **kw)
        body = check(r, f"{method} {path} with {headers!r:.40}", expect=401)
        assert "token" in body["message"]
    # the description of the API is public; an unknown path is 401 or 404 without a token
    r = request(server, "GET", "/openapi.json", token=False)
    assert r.status_code == 200 and r.json()["paths"]
    check(
        request(server, "GET", "/v1.1/nothing-here", token=False, headers=headers or {}),
        expect=(401, 404),
    )


# --------------------------------------------------------------------------- 3. bodies

MALFORMED = [
    b"{",
    b'{"endpoint":',
    b'{"endpoint": "x",}',
    b'{"endpoint": "x"} trailing',
    b"{'endpoint': 'x'}",
    b'{"endpoint": "x"',
    b"[1, 2",
    b"\xff\xfe\x00{",
    b"\x00",
    b'{"endpoint": "\xc3\x28"}',  # invalid UTF-8 inside a string
    b"\xef\xbb\xbf{",  # a BOM and a broken object
    b"{" * 100_000,
]


@pytest.mark.parametrize("body", MALFORMED, ids=lambda b: repr(b[:20]))
@pytest.mark.parametrize("route", ["POST create", "PATCH", "POST get_variables"])
def test_malformed_json_bodies_are_400(server, existing, body, route):
    method, path = {
        "POST create": ("POST", BASE),
        "PATCH": ("PATCH", f"{BASE}/{existing[0]}"),
        "POST get_variables": ("POST", f"{BASE}/{existing[0]}/get_variables"),
    }[route]
    r = request(server, method, path, content=body, headers={"Content-Type": "application/json"})
    check(r, f"{route} {body[:30]!r}", expect=400)


@pytest.mark.parametrize(
    "body",
    [
        b"null",
        b"[]",
        b"1",
        b'"text"',
        b"true",
        b"{}",
        b'{"endpoint": 5}',
        b'{"endpoint": "ok-1", "nope": 1}',
        b'{"endpoint": "ok-2", "protocol": "ocpp9"}',
        b'{"endpoint": "ok-3", "coordinates": [1]}',
        b'{"endpoint": "ok-4", "meta_data": []}',
    ],
)
def test_well_formed_but_invalid_bodies_are_422(server, body):
    r = request(server, "POST", BASE, content=body, headers={"Content-Type": "application/json"})
    check(r, f"POST {body!r}", expect=422)


def test_wrong_or_missing_content_type(server):
    body = json.dumps({"endpoint": uniq()}).encode()
    for ctype in (
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json; charset=latin-1",
        "application/xml",
        "*/*",
        "application/json-patch+json",
    ):
        headers = {"Content-Type": ctype} if ctype else {}
        r = request(server, "POST", BASE, content=body, headers=headers)
        check(r, f"content-type {ctype!r}")


def test_oversized_bodies(server, existing):
    # a big but well-formed record: accepted or refused, never a crash
    big = {"endpoint": uniq(), "meta_data": {"blob": "x" * 4_000_000}}
    r = request(server, "POST", BASE, json=big)
    check(r, "4 MB meta_data", expect=413)  # over the API's body limit (256 KiB)
    # big malformed bodies are 400 without being stored
    check(
        request(
            server,
            "POST",
            BASE,
            content=b"[" + b"1," * 2_000_000,
            headers={"Content-Type": "application/json"},
        ),
        "4 MB garbage",
        expect=413,
    )
    # many keys; a very long list of keys for get_variables (the station is offline: 406)
    many = {"endpoint": uniq(), "meta_data": {f"k{i}": i for i in range(100_000)}}
    check(request(server, "POST", BASE, json=many), "100k keys")
    r = request(
        server,
        "POST",
        f"{BASE}/{existing[0]}/get_variables",
        json={"keys": ["K"] * 100_000, "timeout": scaled(1)},
    )
    check(r, "100k get_variables keys", expect=(400, 404, 406, 413, 422))
    # the server is still fine
    check(request(server, "GET", BASE, params={"paginate_limit": 5}), expect=200)


# --------------------------------------------------------------------------- 4. endpoints, ids

BAD_ENDPOINTS = [
    "",
    ".",
    "..",
    "...",
    "a b",
    "a/b",
    "a?b",
    "a#b",
    "a%2Fb",
    "é",
    "Ünïcødé",
    "😀",
    "日本",
    "\x00",
    "a\x00b",
    "\u202e",
    "a\nb",
    "x" * 49,
    "-" * 49,
    "\ud800",
    " a",
    "a ",
    "\t",
]
GOOD_ENDPOINTS = ["a:b", "A.b_c~d-e", "~", "-", "_", ":", ".a", "a.", "x" * 48, "0"]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS, ids=lambda e: repr(e)[:20])
def test_unicode_and_invalid_endpoints_are_refused(server, endpoint):
    if endpoint == "\ud800":  # a lone surrogate cannot be UTF-8: send it escaped
        content = b'{"endpoint": "\\ud800"}'
    else:
        content = json.dumps({"endpoint": endpoint}, ensure_ascii=False).encode()
    r = request(server, "POST", BASE, content=content, headers={"Content-Type": "application/json"})
    check(r, f"create {endpoint!r}", expect=422)
    # (dot segments are resolved by the HTTP layer: /chargestations/. is the list)
    if endpoint.strip(".") and endpoint != "\ud800":
        path = f"{BASE}/{quote(endpoint, safe='')}"
        for method in ("GET", "PATCH", "DELETE"):
            kw = {"json": {"location": "x"}} if method == "PATCH" else {}
            check(request(server, method, raw(server, path), **kw), f"{method} {path}", expect=404)


@pytest.mark.parametrize("endpoint", GOOD_ENDPOINTS)
def test_unusual_valid_endpoints_round_trip(server, endpoint):
    # the first run of a module creates them; a rerun against the same store sees 409
    r = request(server, "POST", BASE, json={"endpoint": endpoint})
    check(r, f"create {endpoint!r}", expect=(201, 409))
    for path in (
        f"{BASE}/{endpoint}",
        f"{BASE}/{quote(endpoint, safe='')}",
        f"{BASE}/{''.join(f'%{b:02X}' for b in endpoint.encode())}",
    ):
        body = check(request(server, "GET", raw(server, path)), path, expect=200)
        assert body["result"]["endpoint"] == endpoint
        check(request(server, "GET", raw(server, path + "/connectors")), path, expect=200)
    check(request(server, "DELETE", f"{BASE}/{quote(endpoint, safe='')}"), expect=200)
    check(request(server, "GET", f"{BASE}/{quote(endpoint, safe='')}"), expect=404)


ODD_IDS = [
    "a%2Fb",
    "%2F..%2F",
    "..%2F..%2Fopenapi.json",
    "%252F",
    "%25",
    "%00",
    "%ff",
    "%C3%A9",
    "%F0%9F%98%80",
    "a%20b",
    "%2e%2e",
    "%2E",
    ";a",
    "a;b=c",
    "%3F",
    "%23",
    "a%0Ab",
    "%0D%0ASet-Cookie:x=1",
    "%uD800",
    "%",
    "%%",
    "%zz",
    "x" * 5000,
    "6b04" + "0" * 20,
    "A" * 24,
    "%E2%80%AE",
    "..",
    "%2e",
]


@pytest.mark.parametrize("raw_id", ODD_IDS, ids=lambda i: i[:24])
def test_path_ids_with_slashes_and_percent_encoding(server, raw_id):
    for method, suffix, kw in (
        ("GET", "", {}),
        ("PATCH", "", {"json": {"location": "x"}}),
        ("DELETE", "", {}),
        ("GET", "/connectors", {}),
        ("POST", "/get_variables", {"json": {"timeout": scaled(1)}}),
    ):
        path = f"{BASE}/{raw_id}{suffix}"
        r = request(server, method, raw(server, path), **kw)
        body = check(r, f"{method} {path}", expect=(400, 404, 405))
        assert body["result"] is None


def test_query_strings_are_fuzz_safe(server):
    for qs in (
        "paginate_limit=0",
        "paginate_limit=1001",
        "paginate_page=0",
        "paginate_page=99999999999999999999",
        "paginate_limit=%00",
        "online=maybe",
        "protocol=ocpp9",
        "sort_order=up",
        "sort_by=%27;drop",
        "status=%FF",
        "createdAt%5B%24gte%5D=not-a-date",
        "createdAt[$gte]=9999-12-31T23:59:59-23:59",
        "createdAt[$lte]=" + "9" * 5000,
        "updatedAt[$gte]=2024-02-30",
        "location=%00",
        "location=" + "é" * 1000,
        "a=1",
        "=",
        "&&&",
        "online",
        "online=true&online=false",
        "paginate_enabled=false&paginate_limit=1",
    ):
        r = request(server, "GET", raw(server, f"{BASE}?{qs}"))
        check(r, qs[:60])


def test_wrong_methods_are_405_envelopes(server, existing):
    for method, path in (
        ("PUT", BASE),
        ("DELETE", BASE),
        ("PATCH", BASE),
        ("PUT", f"{BASE}/{existing[0]}"),
        ("POST", f"{BASE}/{existing[0]}"),
        ("GET", f"{BASE}/{existing[0]}/get_variables"),
        ("DELETE", f"{BASE}/{existing[0]}/connectors"),
    ):
        check(request(server, method, path), f"{method} {path}", expect=405)


# --------------------------------------------------------------------------- found bugs
# Each was a 500 (or a non-envelope answer) when this fuzzing found it (HEAD f8068c1 and the
# working tree after it), fixed in the working tree while these tests were written; they stay
# as regression tests.


def test_huge_integer_in_meta_data_is_not_a_500(server):
    """Was: 500 TypeError: orjson cannot store an integer outside 64 bits (sqlite.py _row)."""
    r = request(
        server,
        "POST",
        BASE,
        content=b'{"endpoint": "%s", "meta_data": {"n": 1%s}}' % (uniq().encode(), b"0" * 30),
        headers={"Content-Type": "application/json"},
    )
    check(r, "meta_data 10**30", expect=(201, 422))
    ep = create(server, uniq())["endpoint"]
    r = request(
        server,
        "PATCH",
        f"{BASE}/{ep}",
        content=b'{"meta_data": {"n": -1%s}}' % (b"0" * 30),
        headers={"Content-Type": "application/json"},
    )
    check(r, "PATCH meta_data -10**30", expect=(200, 422))
    check(request(server, "GET", f"{BASE}/{ep}"), expect=200)


@pytest.mark.parametrize("depth", [40, 253, 300, 900])
def test_deeply_nested_meta_data_is_not_a_500(server, depth):
    """Was: 500 TypeError from 253 to ~1000 levels (orjson's recursion limit, sqlite.py _row);
    deeper ones were already refused by the JSON parser."""
    body = (
        b'{"endpoint": "%s", "meta_data": ' % uniq().encode()
        + b'{"a": ' * depth
        + b"1"
        + b"}" * depth
        + b"}"
    )
    r = request(server, "POST", BASE, content=body, headers={"Content-Type": "application/json"})
    check(r, f"meta_data nested {depth} deep", expect=(201, 400, 422))


def test_trailing_slash_is_an_envelope(server):
    """Was: a bare 307 redirect (no envelope, no JSON, before authentication)."""
    ep = create(server, uniq())["endpoint"]
    for path in (
        f"{BASE}/",
        f"{BASE}/{ep}/",
        f"{BASE}/%2F",
        "/openapi.json/",
        f"{BASE}//",
        f"{BASE}/{ep}/connectors/",
    ):
        check(request(server, "GET", raw(server, path), token=False), path, expect=(401, 404))
        check(request(server, "GET", raw(server, path)), path, expect=(200, 404))


@pytest.mark.parametrize(
    "body",
    [
        b'{"endpoint": "%s", "coordinates": [1e999, 0]}',
        b'{"endpoint": "%s", "coordinates": [NaN, 0]}',
        b'{"endpoint": "%s", "coordinates": [0, -Infinity]}',
        b'{"endpoint": "%s", "meta_data": {"x": Infinity}}',
        b'{"endpoint": "%s", "meta_data": {"x": [1, NaN]}}',
    ],
)
def test_non_finite_numbers_are_refused(server, body):
    """Was: accepted (201) and silently stored as null: coordinates [1e999, 0] -> [null, 0]."""
    r = request(
        server,
        "POST",
        BASE,
        content=body % uniq().encode(),
        headers={"Content-Type": "application/json"},
    )
    check(r, body.decode(), expect=(400, 422))


@pytest.mark.parametrize(
    "body",
    [
        b'{"endpoint": "%s", "location": "\\ud800"}',
        b'{"endpoint": "%s", "organization": "a\\udfffb"}',
        b'{"endpoint": "%s", "meta_data": {"\\ud800": 1}}',
        b'{"endpoint": "%s", "meta_data": {"k": ["\\udc00"]}}',
    ],
)
def test_lone_surrogates_are_refused(server, body):
    """Valid JSON escapes that are not Unicode text: refused, never a 500 from the store."""
    r = request(
        server,
        "POST",
        BASE,
        content=body % uniq().encode(),
        headers={"Content-Type": "application/json"},
    )
    check(r, body.decode(), expect=(400, 422))
    ep = create(server, uniq())["endpoint"]
    for patch in (b'{"location": "\\ud800"}', b'{"meta_data": {"a": "\\ud800"}}'):
        r = request(
            server,
            "PATCH",
            f"{BASE}/{ep}",
            content=patch,
            headers={"Content-Type": "application/json"},
        )
        check(r, patch.decode(), expect=(400, 422))
    r = request(
        server,
        "POST",
        f"{BASE}/{ep}/get_variables",
        content=b'{"keys": ["\\ud800"]}',
        headers={"Content-Type": "application/json"},
    )
    check(r, "get_variables key", expect=(400, 406, 422))


def test_no_traceback_in_the_server_log(server):
    """Nothing that ran so far made the server log a Traceback (the tests run in random order:
    `no_traceback_logged` checks after each one)."""
    log = server.logs()
    assert "Traceback" not in log, log[log.find("Traceback") - 300 :][:3000]


def test_openapi_describes_the_endpoint_constraint(server):
    doc = request(server, "GET", "/openapi.json", token=False).json()
    endpoint = doc["components"]["schemas"]["StationCreate"]["properties"]["endpoint"]
    assert endpoint.get("maxLength") == 48 and endpoint.get("minLength") == 1, endpoint
    assert "pattern" in endpoint, endpoint
