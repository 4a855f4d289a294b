"""Shell completion, answered without importing typer (a TAB re-runs the whole program).

The shell scripts in completions/ are Typer's own; at every TAB they run `edrvctl` with
`_EDRVCTL_COMPLETE=complete_<shell>`, and `edrvctl.__main__` sends that here. Commands and
options come from `_cli_tree.py`, generated from the Typer app (`python -m edrvctl.completion
--write`; a test fails when it drifts). Station ids and endpoints come from a local cache that
`list`, `create` and `delete` keep current; completion never touches the network.
"""

from __future__ import annotations

import os
import sys

# Only os and sys at the top: a TAB must not pay for json, re, pathlib or shlex (~10 ms).

CACHE_NAME = "stations.json"
MAX_CACHED = 20000


def _cache_path() -> str:
    """paths.cache_dir() / CACHE_NAME, without importing pathlib."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edrvctl", CACHE_NAME)


# --- the station cache ---


def _read_cache() -> dict:
    import orjson

    try:
        with open(_cache_path(), "rb") as f:
            return orjson.loads(f.read())
    except (OSError, ValueError):
        return {}


def remember(
    api_url: str, docs: list[dict], replace: bool = False, forget: list[str] | tuple[str, ...] = ()
) -> None:
    """Record stations for completion. Never fails the command that called it."""
    entries: dict[str, list] = {}
    cache_entries(docs, entries)
    remember_entries(api_url, entries, replace, forget)


def cache_entries(docs: list[dict], into: dict[str, list]) -> None:
    """What completion keeps of each station, added to `into`: endpoint -> [_id, label]."""
    labels: dict[tuple, str] = {}  # (a list has few: each one made once)
    for d in docs:
        key = (d.get("online"), d.get("status"))
        label = labels.get(key)
        if label is None:
            state = "online" if key[0] else "offline"
            label = labels[key] = f"{state}, {key[1] or 'no status'}"
        into[d["endpoint"]] = [d["_id"], label]


def remember_entries(
    api_url: str,
    entries: dict[str, list],
    replace: bool = False,
    forget: list[str] | tuple[str, ...] = (),
) -> None:
    """Record `cache_entries` for completion (`replace`: instead of those recorded). Never
    fails the command that called it."""
    import orjson

    try:
        cache = {} if replace else _read_cache()  # (replaced: ~5 ms not spent reading it)
        if replace or cache.get("api_url") != api_url:
            stations = entries
        else:
            stations = cache.get("stations", {})
            stations.update(entries)
        for endpoint in forget:
            stations.pop(endpoint, None)
        if len(stations) > MAX_CACHED:
            stations = dict(list(stations.items())[-MAX_CACHED:])
        path = _cache_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(orjson.dumps({"api_url": api_url, "stations": stations}))
        os.replace(path + ".tmp", path)
    except OSError:
        pass


def station_candidates(incomplete: str) -> list[tuple[str, str]]:
    out = []
    for endpoint, (sid, label) in _read_cache().get("stations", {}).items():
        if endpoint.startswith(incomplete):
            out.append((endpoint, label))
        elif incomplete and sid.startswith(incomplete):
            out.append((sid, f"{endpoint}, {label}"))
    return out


# --- answering a TAB ---


def _split(text: str) -> list[str]:
    try:
        if not any(q in text for q in "'\"\\"):
            return text.split()  # the common case, without importing shlex
        import shlex

        return shlex.split(text)
    except ValueError:  # an unclosed quote while typing
        return text.split()


def _args(shell: str) -> tuple[list[str], str]:
    if shell == "bash":
        words = _split(os.environ.get("COMP_WORDS", ""))
        cword = int(os.environ.get("COMP_CWORD", len(words)))
        return words[1:cword], words[cword] if cword < len(words) else ""
    line = os.environ.get("_TYPER_COMPLETE_ARGS", "")
    words = _split(line)[1:]
    if words and not line.endswith(" "):
        return words[:-1], words[-1]
    return words, ""


def candidates(args: list[str], incomplete: str) -> list[tuple[str, str]]:
    from edrvctl._cli_tree import TREE

    node, positional, pending = TREE, 0, None
    for arg in args:
        if pending is not None:
            pending = None
            continue
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            # global options (--context NAME ...) may follow a command too
            spec = node["options"].get(name) or TREE["options"].get(name)
            if spec is not None and spec["value"] and "=" not in arg:
                pending = spec
        elif arg in node.get("commands", {}):
            node, positional = _resolve(node["commands"][arg]), 0
        else:
            positional += 1
    if pending is not None:
        low = incomplete.lower()  # choices are taken in any case (`--status faulted`)
        return [(c, "") for c in pending.get("choices", []) if c.lower().startswith(low)]
    if incomplete.startswith("-"):
        return [
            (name, spec["help"])
            for name, spec in node["options"].items()
            if name.startswith(incomplete)
        ]
    if node.get("commands"):
        return [
            (name, sub["help"])
            for name, sub in node["commands"].items()
            if name.startswith(incomplete) and not sub.get("hidden")
        ]
    kinds = node.get("args", [])
    kind = kinds[min(positional, len(kinds) - 1)] if kinds else None
    if kind == "station":
        return station_candidates(incomplete)
    return []


def _resolve(node: dict) -> dict:
    """Aliases point at the node they repeat."""
    from edrvctl._cli_tree import TREE

    return TREE["commands"][node["alias"]] if "alias" in node else node


def _zsh_escape(s: str) -> str:
    return (
        s.replace('"', '""')
        .replace("'", "''")
        .replace("$", "\\$")
        .replace("`", "\\`")
        .replace(":", r"\\:")
    )


def complete(shell: str) -> int:
    """Print the candidates in the format Typer's script for `shell` reads; return exit code."""
    try:
        args, incomplete = _args(shell)
        items = candidates(args, incomplete)
    except Exception:  # never print an error into the user's command line
        items, incomplete = [], ""
    if shell == "bash":
        sys.stdout.write("\n".join(value for value, _ in items))
    elif shell == "zsh":
        lines = [
            f'"{_zsh_escape(v)}":"{_zsh_escape(h)}"' if h else f'"{_zsh_escape(v)}"'
            for v, h in items
        ]
        sys.stdout.write(f"_arguments '*: :(({chr(10).join(lines)}))'" if lines else "_files")
    elif shell == "fish":
        action = os.environ.get("_TYPER_COMPLETE_FISH_ACTION", "")
        if action == "is-args":
            return 0 if items else 1
        sys.stdout.write("\n".join(v + "\t" + " ".join(h.split()) if h else v for v, h in items))
    else:
        sys.stdout.write("\n".join(f"{v}:::{h or ' '}" for v, h in items))
    return 0


# --- generating the tree from the Typer app ---


def build_tree() -> dict:
    from enum import Enum

    import typer

    from edrvctl.cli import ALIASES, app

    def first_line(text: str | None) -> str:
        return (text or "").strip().split("\n")[0].replace("[", "").replace("]", "")

    def walk(cmd) -> dict:
        options = {}
        args = []
        for p in cmd.params:
            if p.param_type_name == "argument":
                args.append("station" if p.name in ("station", "stations") else "value")
                continue
            ann = p.type_descriptor.annotation
            choices = (
                [m.value for m in ann] if isinstance(ann, type) and issubclass(ann, Enum) else []
            )
            for name in [*p.opts, *p.secondary_opts]:
                options[name] = {
                    "value": not p.is_flag,
                    "help": first_line(p.help),
                    **({"choices": choices} if choices else {}),
                }
        for name in ("-h", "--help"):  # click adds these itself; they are not in cmd.params
            options.setdefault(name, {"value": False, "help": "Show this message and exit."})
        node: dict = {"help": first_line(cmd.help or cmd.short_help), "options": options}
        if args:
            node["args"] = args
        subs = getattr(cmd, "commands", None)
        if subs:
            node["commands"] = {}
            for name, sub in subs.items():
                if name in ALIASES:
                    node["commands"][name] = {
                        "alias": ALIASES[name],
                        "help": f"alias of {ALIASES[name]}",
                    }
                    continue
                node["commands"][name] = walk(sub)
                if sub.hidden:
                    node["commands"][name]["hidden"] = True
        return node

    return walk(typer.main.get_command(app))


def render_tree() -> str:
    import json

    # JSON is a Python literal once these three names exist.
    return (
        '"""Generated by `python -m edrvctl.completion --write`; do not edit."""\n\n'
        "true, false, null = True, False, None\n\n"
        f"TREE: dict = {json.dumps(build_tree(), indent=1, sort_keys=True)}\n"
    )


if __name__ == "__main__":
    from pathlib import Path

    target = Path(__file__).with_name("_cli_tree.py")
    if sys.argv[1:] == ["--write"]:
        target.write_text(render_tree())
    else:
        sys.stdout.write(render_tree())
