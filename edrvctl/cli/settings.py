"""Which API the CLI talks to, and with which token.

Precedence: flag > environment > config-file context > the local server > built-in default.
- API URL: --api-url, EDRV_API_URL, the context's `api_url`, the URL a local `edrvctl serve`
  wrote beside its store, http://127.0.0.1:7780.
- Token: EDRV_TOKEN, the context's `token_file`, the local server's token file. There is no
  token flag: a flag's value leaks into `ps` and shell history.

Config file ($XDG_CONFIG_HOME/edrvctl/config.yaml):

    current-context: prod
    contexts:
      prod: {api_url: "https://cs.example.com", token_file: "~/.config/edrvctl/prod.token"}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edrvctl import paths
from edrvctl.errors import UsageError

DEFAULT_API_URL = "http://127.0.0.1:7780"


@dataclass
class Settings:
    api_url: str
    token: str | None
    source: str  # where the URL came from, for error hints


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


def resolve(api_url: str | None, context: str | None) -> Settings:
    ctx = _load_context(context or os.environ.get("EDRVCTL_CONTEXT"))
    local = {}
    server_file = paths.server_file(paths.default_store())
    if server_file.exists():
        try:
            local = json.loads(server_file.read_text())
        except (OSError, ValueError):
            local = {}

    url, source = next(
        (
            (v, s)
            for v, s in (
                (api_url, "--api-url"),
                (os.environ.get("EDRV_API_URL"), "EDRV_API_URL"),
                (ctx.get("api_url"), "context"),
                (local.get("api_url"), "local server"),
                (DEFAULT_API_URL, "default"),
            )
            if v
        )
    )

    token = os.environ.get("EDRV_TOKEN")
    if not token and ctx.get("token_file"):
        token = _read_token(Path(ctx["token_file"]))
    if not token and source in ("local server", "default"):
        local_token = paths.token_file(paths.default_store())
        if local_token.exists():
            token = _read_token(local_token)
    return Settings(url, token, source)
