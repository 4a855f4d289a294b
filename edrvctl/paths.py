"""Where things live on disk (XDG base directories). Shared by `serve` and the CLI; cheap to
import.

A store's folder holds, beside the SQLite file, what one `edrvctl serve` and the CLI share:
`token` (the admin token), `server.json` (the running server's URLs: the discovery file) and
`serve.lock` (held with flock(2) by the server for its whole life: one server per folder)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

APP = "edrvctl"
STORE_ENV = "EDRVCTL_STORE"  # the CLI and `serve`: which store (its folder) to use


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / APP


def config_file() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / APP / "config.yaml"


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / APP


def default_store() -> Path:
    return data_dir() / "edrvctl.db"


def token_file(store: Path) -> Path:
    """The admin token `serve` creates lives beside its store."""
    return store.parent / "token"


def server_file(store: Path) -> Path:
    """Where a running `serve` writes its URLs, so the CLI finds a local server by itself."""
    return store.parent / "server.json"


def lock_file(store: Path) -> Path:
    """Held (flock) by the `serve` that uses this store's folder, for as long as it runs."""
    return store.parent / "serve.lock"


def store_of(given: str | os.PathLike) -> Path:
    """What EDRVCTL_STORE names, as a store path: the store file itself, the folder that holds
    it, or its discovery file (server.json). Only the folder matters to the CLI."""
    path = Path(given).expanduser()
    if path.is_dir():
        return path / "edrvctl.db"
    return path


class PrivateFileError(Exception):
    """A file that holds a secret, or says where to send one, is not safely ours."""


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) readable by its owner only, if it does not exist."""
    old = os.umask(0o077)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old)


def write_secret(path: Path, text: str) -> None:
    """Write a file readable by its owner only (mode 0600 from the start, never wider), in a
    folder created 0700. The text is written beside it and renamed into place, so a reader
    never sees half of it, and a symlink planted at `path` is replaced, not followed."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash of a process that had our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_secret(path: Path, text: str) -> None:
    """Create a new file readable by its owner only; FileExistsError if there is one already
    (never overwrite what someone else put there)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_private(path: Path, what: str = "file") -> str:
    """The text of a file that only we may have written or read: it must be a regular file
    owned by the current user, not readable or writable by group or others, and not empty.
    FileNotFoundError if it does not exist; PrivateFileError (saying why) otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise
        if e.errno == errno.ELOOP:
            raise PrivateFileError(f"the {what} {path} is a symbolic link; refusing it") from None
        raise PrivateFileError(f"cannot read the {what} {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        import stat

        if not stat.S_ISREG(st.st_mode):
            raise PrivateFileError(f"the {what} {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise PrivateFileError(
                f"the {what} {path} belongs to another user (uid {st.st_uid}), not to you "
                f"(uid {os.geteuid()}); refusing to trust it"
            )
        if st.st_mode & 0o077:
            raise PrivateFileError(
                f"the {what} {path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"refusing to trust it: make it yours alone (chmod 600 {path})"
            )
        text = f.read(1 << 16).decode("utf-8", "replace").strip()
    if not text:
        raise PrivateFileError(f"the {what} {path} is empty")
    return text


# --- one server per store folder ----------------------------------------------------------


class StoreInUse(Exception):
    def __init__(self, pid: int | None):
        super().__init__(pid)
        self.pid = pid


class ServeLock:
    """flock(2) on `serve.lock` beside the store, held while a server runs. The kernel lets
    go of it when the process ends however it ends (kill -9 too), so a leftover file never
    blocks the next start."""

    def __init__(self, store: Path):
        self.path = lock_file(store)
        self.fd: int | None = None

    def acquire(self, patience: float = 0.5) -> None:
        """Take the lock, or raise StoreInUse with the holder's pid. A CLI that checks whether
        a server runs holds a shared lock for an instant: wait up to `patience` s for that."""
        import fcntl
        import time

        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise StoreInUse(pid) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


def serving(store: Path) -> bool:
    """Whether an `edrvctl serve` holds this store's lock now (it is running). Probes with a
    shared lock, released at once; creates nothing."""
    import fcntl

    try:
        fd = os.open(lock_file(store), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken
    return False
