"""Shell completion: the committed scripts, the generated command tree, and the fast path that
answers a TAB without importing typer (edrvctl.__main__ -> edrvctl.completion)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import hermetic_env
from edrvctl.cli import app
from timing import scaled

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("edrvctl")  # the installed console script
runner = CliRunner()

# Modules a TAB must not pay for (the design: completion speed is start-up speed).
HEAVY_FOR_COMPLETION = {
    "typer",
    "click",
    "httpx",
    "ocpp",
    "websockets",
    "rich",
    "pydantic",
    "fastapi",
    "uvicorn",
}
HEAVY_FOR_CLI_IMPORT = {"httpx", "ocpp", "websockets", "fastapi", "uvicorn", "pydantic"}

_COMPLETION_VARS = (
    "_EDRVCTL_COMPLETE",
    "COMP_WORDS",
    "COMP_CWORD",
    "_TYPER_COMPLETE_ARGS",
    "_TYPER_COMPLETE_FISH_ACTION",
)


def invoke(args: list[str], env: dict):
    """The Typer app in-process, without the developer's EDRV*/completion variables."""
    clear = dict.fromkeys(("EDRV_API_URL", "EDRV_TOKEN", "EDRVCTL_CONTEXT", *_COMPLETION_VARS))
    return runner.invoke(app, args, env={**clear, **env}, prog_name="edrvctl")


def base_env(tmp_path: Path) -> dict:
    env = hermetic_env(tmp_path)
    for k in _COMPLETION_VARS:
        env.pop(k, None)
    return env


def complete(
    env: dict,
    shell: str = "bash",
    words: str | None = None,
    cword: int | str | None = None,
    args: str | None = None,
    fish_action: str | None = None,
    python_flags: tuple[str, ...] = (),
):
    """Run the real program the way Typer's shell script does at a TAB."""
    env = {**env, "_EDRVCTL_COMPLETE": f"complete_{shell}"}
    if words is not None:
        env["COMP_WORDS"] = words
        env["COMP_CWORD"] = str(len(words.split(" ")) - 1 if cword is None else cword)
    if args is not None:
        env["_TYPER_COMPLETE_ARGS"] = args
    if fish_action is not None:
        env["_TYPER_COMPLETE_FISH_ACTION"] = fish_action
    cmd = [sys.executable, *python_flags, "-m", "edrvctl"] if python_flags else [str(SCRIPT)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=scaled(30))


def lines(p) -> list[str]:
    return p.stdout.splitlines()


# --------------------------------------------------------------------------- generated files


@pytest.mark.parametrize(
    "shell,name", [("bash", "edrvctl.bash"), ("zsh", "_edrvctl"), ("fish", "edrvctl.fish")]
)
def test_committed_scripts_match_what_typer_generates(shell, name):
    r = invoke([], {"_EDRVCTL_COMPLETE": f"source_{shell}"})
    assert r.exit_code == 0, r.stderr
    assert "edrvctl" in r.stdout and f"complete_{shell}" in r.stdout
    committed = ROOT / "completions" / name
    assert committed.read_text() == r.stdout, (
        f"completions/{name} is stale; regenerate with "
        f"`_EDRVCTL_COMPLETE=source_{shell} edrvctl > completions/{name}`"
    )


def test_cli_tree_has_not_drifted_from_the_typer_app():
    from edrvctl.completion import render_tree

    committed = (ROOT / "edrvctl" / "_cli_tree.py").read_text()
    assert committed == render_tree(), (
        "edrvctl/_cli_tree.py is stale; run `python -m edrvctl.completion --write`"
    )


def test_cli_tree_knows_every_command_and_option():
    from edrvctl._cli_tree import TREE

    cs = TREE["commands"]["chargestations"]["commands"]
    assert set(cs) >= {
        "list",
        "create",
        "inspect",
        "update",
        "activate",
        "deactivate",
        "delete",
        "config",
    }
    assert cs["delete"]["args"] == ["station"] and cs["update"]["args"] == ["station"]
    assert TREE["commands"]["cs"]["alias"] == "chargestations"
    assert cs["inspect"]["args"] == ["station"]
    assert cs["list"]["options"]["-o"]["choices"] == ["table", "wide", "plain", "json", "yaml"]
    assert cs["list"]["options"]["--online"]["value"] is False
    assert cs["list"]["options"]["--limit"]["value"] is True


def test_install_completion_is_kept(tmp_path):
    r = invoke(["--help"], base_env(tmp_path))
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout


# --------------------------------------------------------------------------- the fast path


def test_bash_completes_a_subcommand_through_the_alias(tmp_path):
    assert SCRIPT.exists(), f"the console script is not installed at {SCRIPT}"
    p = complete(base_env(tmp_path), words="edrvctl cs ins", cword=2)
    assert p.returncode == 0 and p.stderr == ""
    assert lines(p) == ["inspect"]


def test_bash_words_as_typers_script_sends_them(tmp_path):
    # The bash script sets IFS to a newline, so "${COMP_WORDS[*]}" joins words with newlines.
    p = complete(base_env(tmp_path), words="edrvctl\nchargestations\nde", cword=2)
    assert lines(p) == ["deactivate", "delete"]


def test_bash_top_level(tmp_path):
    p = complete(base_env(tmp_path), words="edrvctl ", cword=1)
    assert {"chargestations", "serve"} <= set(lines(p))
    p = complete(base_env(tmp_path), words="edrvctl se", cword=1)
    assert set(lines(p)) == {"serve", "sessions"}
    p = complete(base_env(tmp_path), words="edrvctl ser", cword=1)
    assert lines(p) == ["serve"]


def test_option_names(tmp_path):
    p = complete(base_env(tmp_path), words="edrvctl cs list --st", cword=3)
    assert lines(p) == ["--status"]
    p = complete(base_env(tmp_path), words="edrvctl cs list --o", cword=3)
    assert set(lines(p)) == {"--online", "--offline", "--organization", "--output"}


@pytest.mark.parametrize(
    "words,cword,expected",
    [
        ("edrvctl cs list -o ", 4, ["table", "wide", "plain", "json", "yaml"]),
        ("edrvctl cs list --output j", 4, ["json"]),
        ("edrvctl cs inspect x -o y", 5, ["yaml"]),
        ("edrvctl cs create x --protocol ", 5, ["ocpp1.6", "ocpp2.0.1"]),
        ("edrvctl cs list --status S", 4, ["SuspendedEV", "SuspendedEVSE"]),
        ("edrvctl cs list --location ", 4, []),  # a free value: nothing to offer
        ("edrvctl cs list --status fa", 4, ["Faulted"]),  # choices are taken in any case
        ("edrvctl cs update x --security BASIC", 5, ["basic_auth"]),
        # a global option after the command takes its value: the next word is not an argument
        ("edrvctl cs list --context prod -o ", 6, ["table", "wide", "plain", "json", "yaml"]),
        ("edrvctl cs list --color ", 4, []),
    ],
)
def test_option_values(tmp_path, words, cword, expected):
    p = complete(base_env(tmp_path), words=words, cword=cword)
    assert p.returncode == 0 and p.stderr == ""
    assert lines(p) == expected


def test_zsh_format(tmp_path):
    p = complete(base_env(tmp_path), "zsh", args="edrvctl cs ins")
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout.startswith('_arguments \'*: :(("inspect":"Show everything')
    assert p.stdout.endswith("))'")
    p = complete(base_env(tmp_path), "zsh", args="edrvctl cs list -o ")
    assert p.stdout == '_arguments \'*: :(("table"\n"wide"\n"plain"\n"json"\n"yaml"))\''
    p = complete(base_env(tmp_path), "zsh", args="edrvctl cs zzz")
    assert p.stdout == "_files"


def test_fish_format(tmp_path):
    p = complete(base_env(tmp_path), "fish", args="edrvctl cs ins", fish_action="get-args")
    assert p.returncode == 0 and p.stderr == ""
    value, help_ = p.stdout.split("\t")
    assert value == "inspect" and help_.startswith("Show everything")
    assert (
        complete(
            base_env(tmp_path), "fish", args="edrvctl cs ins", fish_action="is-args"
        ).returncode
        == 0
    )
    assert (
        complete(
            base_env(tmp_path), "fish", args="edrvctl cs zzz", fish_action="is-args"
        ).returncode
        == 1
    )
    p = complete(base_env(tmp_path), "fish", args="edrvctl cs list -o ", fish_action="get-args")
    assert lines(p) == ["table", "wide", "plain", "json", "yaml"]


@pytest.mark.parametrize(
    "words,cword",
    [
        ("edrvctl cs ", 2),
        ("edrvctl cs list --", 3),
        ("edrvctl cs inspect x --", 4),
        ("edrvctl serve --", 2),
        ("edrvctl --", 1),
        ("edrvctl cs list -o ", 4),
        ("edrvctl chargestations list --status ", 4),
    ],
)
def test_fast_path_agrees_with_typers_own_completion(tmp_path, words, cword):
    env = {"_EDRVCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    typer_says = set(invoke([], env).stdout.split())
    fast = set(lines(complete(base_env(tmp_path), words=words, cword=cword)))
    assert typer_says - {"-h"} <= fast
    assert fast - typer_says <= {"cs"}  # the alias is hidden from help, offered at a TAB


def test_fast_path_offers_short_help(tmp_path):
    p = complete(base_env(tmp_path), words="edrvctl cs inspect -", cword=3)
    assert "-h" in lines(p)


@pytest.mark.parametrize(
    "shell,kw",
    [
        ("bash", {"words": "edrvctl zzz", "cword": 1}),
        ("bash", {"words": "edrvctl cs list --nosuch", "cword": 3}),
        ("bash", {"words": "edrvctl cs list -o zz", "cword": 4}),
        ("bash", {"words": "edrvctl cs inspect 'unclosed", "cword": 3}),
        ("bash", {"words": "edrvctl serve --log-level ", "cword": 3}),
        ("zsh", {"args": 'edrvctl cs "unclosed --x'}),
        ("fish", {"args": 'edrvctl ☃ cs "', "fish_action": "get-args"}),
    ],
    ids=repr,
)
def test_garbage_gives_no_output_and_exit_0(tmp_path, shell, kw):
    p = complete(base_env(tmp_path), shell, **kw)
    assert p.returncode == 0
    assert p.stdout in ("", "_files")
    assert p.stderr == ""


@pytest.mark.parametrize("cword", ["abc", "-5", ""])
def test_garbage_comp_cword_gives_no_output_and_exit_0(tmp_path, cword):
    p = complete(base_env(tmp_path), words="edrvctl cs", cword=cword)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


def test_completion_does_not_import_heavy_modules(tmp_path):
    env = {**base_env(tmp_path), "EDRV_API_URL": "http://127.0.0.1:1"}
    p = complete(env, words="edrvctl cs ins", cword=2, python_flags=("-X", "importtime"))
    assert p.returncode == 0 and p.stdout == "inspect"
    imported = {
        line.split("|")[-1].strip()
        for line in p.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "edrvctl.completion" in imported  # the measurement worked
    heavy = {m for m in imported if m.split(".")[0] in HEAVY_FOR_COMPLETION}
    assert not heavy, sorted(heavy)


def test_importing_the_cli_does_not_import_network_or_ocpp_modules(tmp_path):
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import edrvctl.cli.main"],
        env=base_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert p.returncode == 0, p.stderr
    imported = {
        line.split("|")[-1].strip()
        for line in p.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "edrvctl.cli.main" in imported and "typer" in imported
    heavy = {m for m in imported if m.split(".")[0] in HEAVY_FOR_CLI_IMPORT}
    assert not heavy, sorted(heavy)


# --------------------------------------------------------------------------- station ids


def test_stations_are_completed_from_the_cache_a_list_wrote(server, cli_env):
    loc = f"comp-{os.getpid()}"
    a = server.create(f"compA-{os.getpid()}", location=loc)
    b = server.create(f"compB-{os.getpid()}", location=loc)
    env = {k: v for k, v in cli_env.items() if k not in _COMPLETION_VARS}
    words = "edrvctl cs inspect comp"

    assert lines(complete(env, words=words, cword=3)) == []  # nothing cached yet

    r = invoke(["cs", "list", "--location", loc, "-q"], env)
    assert r.exit_code == 0, r.stderr
    assert (Path(env["XDG_CACHE_HOME"]) / "edrvctl" / "stations.json").exists()

    # no network at a TAB: the API is pointed somewhere dead and the answer still comes
    offline_env = {**env, "EDRV_API_URL": "http://127.0.0.1:1"}
    assert sorted(lines(complete(offline_env, words=words, cword=3))) == [
        a["endpoint"],
        b["endpoint"],
    ]
    assert lines(complete(offline_env, words="edrvctl cs inspect compB", cword=3)) == [
        b["endpoint"]
    ]
    # an id prefix completes to the id, for every command taking a station
    for verb in ("inspect", "activate", "deactivate", "delete", "config"):
        p = complete(offline_env, words=f"edrvctl chargestations {verb} {a['_id'][:18]}", cword=3)
        assert a["_id"] in lines(p), verb
    # zsh and fish show what the cache knows about the station
    z = complete(offline_env, "zsh", args=f"edrvctl cs delete {b['endpoint']}").stdout
    assert f'"{b["endpoint"]}":"offline' in z
    f = complete(
        offline_env, "fish", args=f"edrvctl cs activate {b['endpoint']}", fish_action="get-args"
    ).stdout
    assert f.startswith(f"{b['endpoint']}\toffline")

    # create adds to the cache and delete removes from it
    c_ep = f"compC-{os.getpid()}"
    assert invoke(["cs", "create", c_ep], env).exit_code == 0
    assert invoke(["cs", "delete", a["endpoint"], "--yes"], env).exit_code == 0
    assert sorted(lines(complete(offline_env, words=words, cword=3))) == [b["endpoint"], c_ep]


def test_the_cache_keeps_each_stations_id_and_state():
    from edrvctl.completion import cache_entries

    docs = [
        {"endpoint": "a", "_id": "1", "online": True, "status": "Charging"},
        {"endpoint": "b", "_id": "2", "online": False},
        {"endpoint": "c", "_id": "3", "online": True, "status": "Charging"},
        {"endpoint": "d", "_id": "4", "online": True, "status": None},
        {"endpoint": "b", "_id": "5", "online": False, "status": "Faulted"},  # (a later page)
    ]
    entries: dict[str, list] = {"z": ["9", "online, Available"]}
    cache_entries(docs, entries)
    assert entries == {
        "z": ["9", "online, Available"],
        "a": ["1", "online, Charging"],
        "b": ["5", "offline, Faulted"],
        "c": ["3", "online, Charging"],
        "d": ["4", "online, no status"],
    }


@pytest.mark.parametrize(
    "content", ["{not json", '{"stations": []}', '{"stations": {"x": "not a pair"}}', "[]"]
)
def test_a_broken_cache_gives_no_candidates_and_no_error(tmp_path, content):
    env = base_env(tmp_path)
    cache = Path(env["XDG_CACHE_HOME"]) / "edrvctl" / "stations.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(content)
    p = complete(env, words="edrvctl cs inspect ", cword=3)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
