"""Which API the CLI talks to, and with which token.

Precedence: flag > environment > config-file context > the local server > built-in default.
- API URL: --api-url, EDRV_API_URL, the server running on EDRVCTL_STORE, the context's
  `api_url`, the URL a local `edrvctl serve` wrote beside its store (server.json), and only
  then http://127.0.0.1:7780 (and only with a token given: see below).
- Token: EDRV_TOKEN, the context's `token_file`, the local server's token file. There is no
  token flag: a flag's value leaks into `ps` and shell history.

The local server's token is only ever sent to the URL that server wrote in its server.json (an
`--api-url` that is that same URL finds it too), and only while that server runs (it holds the
store's lock): never to whatever else listens on a port. EDRVCTL_STORE names the server's store
(or its folder, or its server.json) when it is not the default one. Errors say where the token
was looked for.

Config file ($XDG_CONFIG_HOME/edrvctl/config.yaml):

    current-context: prod
    contexts:
      prod: {api_url: "https://cs.example.com", token_file: "~/.config/edrvctl/prod.token"}
"""

from __future__ import annotations

import os
from pathlib import Path

from edrvctl import paths
from edrvctl.errors import Unavailable, UsageError

DEFAULT_API_URL = "http://127.0.0.1:7780"


class Settings:
    """The API and token to use. (Plain classes here: `cs list` reads its settings before it
    asks for its first page, and a dataclass costs ~0.5 ms to make, its module ~5 ms to
    import.)"""

    def __init__(self, api_url: str, token: str | None, source: str, token_hint: str = ""):
        self.api_url = api_url
        self.token = token
        self.source = source  # where the URL came from, for error hints
        self.token_hint = token_hint  # where the token came from, or where it was looked for


def _load_context(name: str | None) -> dict:
    path = paths.config_file()
    if not path.exists():
        if name:
            raise UsageError(f"context {name!r} not found: there is no config file at {path}")
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"{path}: expected a mapping with 'contexts'")
    name = name or cfg.get("current-context")
    if not name:
        return {}
    contexts = cfg.get("contexts") or {}
    if name not in contexts or not isinstance(contexts[name], dict):
        raise UsageError(
            f"context {name!r} is not defined in {path} (defined: {', '.join(contexts) or 'none'})"
        )
    return contexts[name]


def _read_token(path: Path) -> str:
    """The token in `path`, if the file is one we can trust: owned by us, readable and
    writable by nobody else (a token planted by another user in a shared folder would send
    our requests with their credentials), and not empty (it would lock every request out)."""
    path = path.expanduser()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
                raise UsageError(
                    f"refusing the token file {path}: it belongs to another user (uid "
                    f"{st.st_uid}); a token file must be your own"
                )
            if st.st_mode & 0o077:
                raise UsageError(
                    f"refusing the token file {path}: other users may read or change it (mode "
                    f"{st.st_mode & 0o777:04o})",
                    hint=f"make it private with `chmod 600 {path}`",
                )
            token = f.read().decode("utf-8", "replace").strip()
    except OSError as e:
        raise UsageError(f"cannot read the token file {path}: {e.strerror}") from None
    if not token:
        raise UsageError(f"the token file {path} is empty")
    return token


class LocalServer:
    """The `edrvctl serve` of a store's folder, if one is running there."""

    def __init__(self, store: Path, named_by: str, info: dict | None, why_not: str = ""):
        self.store = store
        self.named_by = named_by  # "EDRVCTL_STORE=..." or "the default store"
        self.info = info  # its server.json, while it runs
        self.why_not = why_not  # when info is None


def local_server(given: str | None = None) -> LocalServer:
    """The server on EDRVCTL_STORE (or `given`), else on the default store. Its server.json is
    believed only while that server holds the store's lock, and only if the file is ours."""
    given = given or os.environ.get(paths.STORE_ENV)
    store = paths.store_of(given) if given else paths.default_store()
    named_by = f"{paths.STORE_ENV}={given}" if given else "the default store"
    server_file = paths.server_file(store)
    if not paths.serving(store):
        return LocalServer(
            store, named_by, None, f"no edrvctl serve is running on {store} ({named_by})"
        )
    import json

    try:
        info = json.loads(paths.read_private(server_file, "server file"))
        if not isinstance(info, dict) or not isinstance(info.get("api_url"), str):
            raise ValueError
    except FileNotFoundError:
        why = f"the edrvctl serve on {store} has not written {server_file} yet"
    except paths.PrivateFileError as e:
        why = str(e)
    except (OSError, ValueError):
        why = f"{server_file} is not an edrvctl server file"
    else:
        return LocalServer(store, named_by, info)
    return LocalServer(store, named_by, None, why)


def same_url(a: str, b: str) -> bool:
    """Whether two base URLs name the same server: scheme, host and port (default ports
    filled in), path without its trailing slash. `localhost` is not 127.0.0.1: it may be ::1,
    where someone else may listen."""
    from urllib.parse import urlsplit

    try:
        pa, pb = urlsplit(a.strip()), urlsplit(b.strip())
        ports = {"http": 80, "https": 443}
        key_a = (
            pa.scheme.lower(),
            (pa.hostname or "").lower(),
            pa.port or ports.get(pa.scheme.lower()),
            pa.path.rstrip("/"),
        )
        key_b = (
            pb.scheme.lower(),
            (pb.hostname or "").lower(),
            pb.port or ports.get(pb.scheme.lower()),
            pb.path.rstrip("/"),
        )
    except ValueError:
        return False
    return key_a == key_b


def resolve(api_url: str | None, context: str | None) -> Settings:
    context = context or os.environ.get("EDRVCTL_CONTEXT")
    ctx = _load_context(context)
    named = os.environ.get(paths.STORE_ENV)
    local = local_server(named)
    local_url = local.info["api_url"] if local.info else None

    candidates = [(api_url, "--api-url"), (os.environ.get("EDRV_API_URL"), "EDRV_API_URL")]
    if named:  # an environment variable: before the config file
        candidates.append((local_url, paths.STORE_ENV))
    candidates += [(ctx.get("api_url"), "context"), (local_url, "local server")]
    url, source = next(((v, s) for v, s in candidates if v), (None, "default"))
    if url is None and named:
        raise Unavailable(
            f"{local.why_not}: no API to talk to",
            hint=f"start it with `edrvctl serve --store {local.store}`, or unset {paths.STORE_ENV}",
        )

    token, hint, looked = None, "", []
    if os.environ.get("EDRV_TOKEN"):
        token, hint = os.environ["EDRV_TOKEN"], "the token came from EDRV_TOKEN"
    else:
        looked.append("EDRV_TOKEN (not set)")
        if ctx.get("token_file"):
            token = _read_token(Path(ctx["token_file"]))
            hint = f"the token came from {ctx['token_file']} (context {context or 'current'})"
        elif ctx:
            looked.append("the context (it has no token_file)")
    if not token:
        token_file = paths.token_file(local.store)
        if local.info is None:
            looked.append(f"the local server's token: {local.why_not}")
        elif url is not None and not same_url(url, local_url or ""):
            looked.append(
                f"the token of the edrvctl serve on {local.store}, which is only "
                f"sent to {local_url}, not to {url}"
            )
        elif local.info.get("token_file", str(token_file)) is None:
            looked.append(
                f"the edrvctl serve on {local.store} was started with EDRV_TOKEN: set it here too"
            )
        else:
            token = _read_token(token_file)
            hint = f"the token came from {token_file} (the local server's)"
    if url is None:
        if token is None:  # nothing to send to the default URL, nothing running: say so
            raise Unavailable(
                f"{local.why_not}, and no API is configured",
                hint="start one with `edrvctl serve`; or set --api-url / EDRV_API_URL (with "
                "EDRV_TOKEN), a context, or EDRVCTL_STORE for a server on another store",
            )
        url = DEFAULT_API_URL
    if token is None:
        hint = "no token was sent: looked in " + "; ".join(looked)
    return Settings(url, token, source, hint)
