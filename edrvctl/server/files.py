"""Files stations fetch and upload, on a listener of their own (`serve --files-port`).

Stations cannot reach the admin API (loopback by default) nor send its bearer token, so:

- `GET /files/firmware/{sha256}/{name}`: firmware an admin uploaded (`POST /v1.1/files`),
  unauthenticated: the content's hash is the capability. Kept in `files/` beside the store.
- `PUT|POST /uploads/{token}/{filename}`: the target of one diagnostics Action. The token is
  one-time and lives as long as the Action is followed (`Fleet.upload_target`); the body is
  raw or multipart/form-data (its first file part), capped at `max_bytes`. Kept in
  `uploads/<action id>/` beside the store, and recorded in the Action (`file`).

Bounded: bodies capped, transfers at once capped, names sanitised (no path traversal),
requests read within FILES_READ_TIMEOUT (server/api.py's protocol).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from edrvctl.errors import NotFound, UsageError

if TYPE_CHECKING:
    from edrvctl.fleet import Fleet

log = logging.getLogger("edrvctl.files")

DEFAULT_PORT = 9001
MAX_TRANSFERS = 16  # uploads and admin firmware uploads at once; beyond it, 503
FILES_READ_TIMEOUT = 600.0  # s to send a whole request: 50 MB at ~85 KB/s
FILES_MAX_CONNECTIONS = 256
CHUNK = 64 * 1024
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9._+-]")

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


class TooLarge(Exception):
    pass


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_name(name: str) -> str:
    """`name` if it is a plain file name (no folder, no leading dot, no `..`, at most 128
    characters of letters, digits and `._+-`); else Refused 400."""
    if not _NAME.match(name) or ".." in name:
        raise Refused(400, f"file name {name[:140]!r} refused: use letters, digits and ._+-")
    return name


def clean_name(name: str, default: str) -> str:
    """A name made safe from one a client gave (its last path part, odd characters as _)."""
    base = re.split(r"[\\/]", name)[-1]
    base = _BAD_CHARS.sub("_", base).lstrip("._")[:128].replace("..", "_")
    return base or default


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


class Files:
    """The firmware store, the upload targets and the station-facing ASGI app."""

    def __init__(self, store: Path, fleet: Fleet, max_bytes: int):
        self.fleet = fleet
        self.max_bytes = max_bytes
        self.firmware_dir = store.parent / "files"
        self.uploads_dir = store.parent / "uploads"
        self.public_url = ""  # set once the listener is bound (serve)
        self.transfers = 0
        self._busy: set[str] = set()  # upload tokens with a transfer under way

    def prepare(self) -> None:
        _private_dir(self.firmware_dir)
        _private_dir(self.uploads_dir)

    # --- firmware -----------------------------------------------------------------------

    def firmware(self, sha256: str) -> dict:
        """{_id, name, size, url} of a stored firmware file; NotFound if there is none."""
        if not SHA256.match(sha256):
            raise NotFound(f"firmware file {sha256[:80]!r} not found: give its sha256 _id")
        folder = self.firmware_dir / sha256
        names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        if not names:
            raise NotFound(f"firmware file {sha256} not found; upload it with POST /v1.1/files")
        path = folder / names[0]
        return self._describe(sha256, names[0], path.stat().st_size)

    def _describe(self, sha256: str, name: str, size: int) -> dict:
        url = f"{self.public_url}/files/firmware/{sha256}/{quote(name)}"
        return {"_id": sha256, "name": name, "size": size, "url": url}

    def list_firmware(self) -> list[dict]:
        found = []
        for folder in sorted(self.firmware_dir.iterdir()) if self.firmware_dir.is_dir() else []:
            if SHA256.match(folder.name):
                with contextlib.suppress(NotFound, OSError):
                    found.append(self.firmware(folder.name))
        return found

    async def add_firmware(self, name: str, headers: dict[bytes, bytes], receive: Receive) -> dict:
        """Store a firmware file from a raw request body (the admin's POST /v1.1/files)."""
        name = check_name(name)
        with self._transfer():
            tmp, size, digest = await self._receive(headers, receive, self.firmware_dir)
            try:
                folder = _private_dir(self.firmware_dir / digest)
                for old in folder.iterdir():  # the same content under another name: one name
                    old.unlink()
                os.replace(tmp, folder / name)
            finally:
                tmp.unlink(missing_ok=True)
        log.info("firmware %s stored as %s (%d bytes)", name, digest, size)
        return self._describe(digest, name, size)

    # --- transfers ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _transfer(self):
        if self.transfers >= MAX_TRANSFERS:
            raise Refused(503, f"{MAX_TRANSFERS} transfers under way; retry later")
        self.transfers += 1
        try:
            yield
        finally:
            self.transfers -= 1

    async def _receive(
        self, headers: dict[bytes, bytes], receive: Receive, folder: Path
    ) -> tuple[Path, int, str]:
        """The request body into a temporary file in `folder`: (path, size, sha256 hex).
        Refused 413 past max_bytes (said by Content-Length, or found while reading)."""
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise Refused(413, f"file over {self.max_bytes} bytes")
        tmp = folder / f".part-{secrets.token_hex(8)}"
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "xb") as f:
                os.chmod(tmp, 0o600)
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise Refused(400, "the client went away before the whole body")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise Refused(413, f"file over {self.max_bytes} bytes")
                    digest.update(chunk)
                    f.write(chunk)
                    if not message.get("more_body"):
                        break
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size, digest.hexdigest()

    async def upload(
        self, token: str, name: str, headers: dict[bytes, bytes], receive: Receive
    ) -> dict:
        """A station's upload to its one-time target: raw or multipart body."""
        action_id = self.fleet.upload_target(token)
        if action_id is None:
            raise Refused(404, "unknown, used or expired upload URL")
        if token in self._busy:
            raise Refused(409, "an upload to this URL is under way")
        if name:
            check_name(name)
        self._busy.add(token)
        try:
            with self._transfer():
                tmp, size, digest = await self._receive(headers, receive, self.uploads_dir)
                try:
                    ctype = headers.get(b"content-type", b"").decode("latin-1")
                    if ctype.lower().startswith("multipart/form-data"):
                        part_name, size, digest = _extract_part(tmp, ctype)
                        name = name or clean_name(part_name or "", "diagnostics")
                    name = name or "diagnostics"
                    folder = _private_dir(self.uploads_dir / action_id)
                    final = folder / name
                    os.replace(tmp, final)
                finally:
                    tmp.unlink(missing_ok=True)
        finally:
            self._busy.discard(token)
        info = {"name": name, "size": size, "sha256": digest}
        if not await self.fleet.file_uploaded(token, info):  # ended meanwhile
            final.unlink(missing_ok=True)
            raise Refused(410, "the diagnostics request ended before the upload finished")
        log.info("action %s: diagnostics file %s received (%d bytes)", action_id, name, size)
        return info

    def uploaded_path(self, action: dict) -> Path:
        file = action.get("file") or {}
        name = file.get("name")
        if not name:
            raise NotFound(f"action {action['_id']} has no uploaded file")
        path = self.uploads_dir / action["_id"] / check_name(name)
        if not path.is_file():
            raise NotFound(f"action {action['_id']}: its file {name} is no longer kept")
        return path

    # --- the station-facing app ---------------------------------------------------------

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, parts = scope["method"], scope["path"].split("/")
        headers = dict(scope.get("headers") or [])
        try:
            if (
                parts[1:3] == ["files", "firmware"]
                and len(parts) == 5
                and method in ("GET", "HEAD")
            ):
                await self._serve_firmware(parts[3], parts[4], scope, receive, send)
                return
            if parts[1:2] == ["uploads"] and len(parts) in (3, 4):
                if method not in ("PUT", "POST"):
                    raise Refused(405, "PUT or POST the file here")
                name = parts[3] if len(parts) == 4 else ""
                info = await self.upload(parts[2], name, headers, receive)
                await _json(send, 201, {"ok": True, "message": "file received", "result": info})
                return
            raise Refused(404, "not found")
        except Refused as e:
            await _json(send, e.status, {"ok": False, "message": e.message, "result": None})
        except (NotFound, UsageError) as e:
            await _json(send, e.http_status, {"ok": False, "message": e.message, "result": None})

    async def _serve_firmware(
        self, sha256: str, name: str, scope: dict, receive: Receive, send: Send
    ) -> None:
        from starlette.responses import FileResponse

        info = self.firmware(sha256)
        if info["name"] != name:
            raise Refused(404, "not found")
        path = self.firmware_dir / sha256 / check_name(name)
        await FileResponse(path, media_type="application/octet-stream")(scope, receive, send)


async def _json(send: Send, status: int, body: Any) -> None:
    data = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _extract_part(path: Path, content_type: str) -> tuple[str | None, int, str]:
    """Keep only the first file part (else the first part) of a multipart/form-data body in
    `path`, in place: (its filename, size, sha256 hex). Refused 400 if it is not one."""
    m = re.search(r'boundary="?([^";]{1,200})"?', content_type)
    if m is None:
        raise Refused(400, "multipart body without a boundary")
    delimiter = b"--" + m.group(1).encode("latin-1")
    chosen: tuple[int, int, str | None] | None = None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise Refused(400, "empty multipart body")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as body:
            pos = body.find(delimiter)
            while pos >= 0:
                start = pos + len(delimiter)
                if body[start : start + 2] == b"--":
                    break
                head_end = body.find(b"\r\n\r\n", start)
                if head_end < 0:
                    break
                head = body[start:head_end].decode("latin-1")
                end = body.find(b"\r\n" + delimiter, head_end + 4)
                if end < 0:
                    break
                found = re.search(r'filename="([^"]*)"', head)
                part = (head_end + 4, end, found.group(1) if found else None)
                if chosen is None or (chosen[2] is None and found):
                    chosen = part
                if found:
                    break
                pos = end + 2
            if chosen is None:
                raise Refused(400, "no file in the multipart body")
            first, last, filename = chosen
            digest = hashlib.sha256()
            out = path.with_name(path.name + ".x")
            with open(out, "xb") as o:
                os.chmod(out, 0o600)
                for i in range(first, last, CHUNK):
                    chunk = body[i : min(i + CHUNK, last)]
                    digest.update(chunk)
                    o.write(chunk)
    os.replace(out, path)
    return filename, last - first, digest.hexdigest()
