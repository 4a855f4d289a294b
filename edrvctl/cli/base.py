"""The command classes behind every edrvctl command: how help reads, where global options may
go, and the one place where failures become a message and a documented exit code.

- Help: values are named by one placeholder style, UPPERCASE words (`STATION`, `N`,
  `SECONDS`), never a Python type (`<list[str]>`, `<int range>`); command summaries are whole
  sentences, never cut with "..."; `edrvctl` or `edrvctl cs` alone prints help and exits 0.
- Global options (--api-url, --context, --color, --debug) may come after the command too
  (kubectl, gh): `edrvctl cs list --context prod` is `edrvctl --context prod cs list`.
- Errors: `EdrvError` -> `error: ...` (and `hint: ...`) on stderr and its exit code, also with
  --debug (which prints the traceback first); Ctrl-C -> 130; anything unexpected -> exit 1 with
  one line (the traceback with --debug). Messages are shown as text (`textsafe.printable`).
"""

from __future__ import annotations

import inspect
import re
import sys
import traceback
from typing import Any

import typer
from typer import _click
from typer._click.exceptions import BadParameter
from typer._click.formatting import join_options
from typer.core import TyperCommand, TyperGroup

from edrvctl.cli.fast import GLOBAL_OPTIONS
from edrvctl.errors import EXIT_INTERRUPTED, EdrvError
from edrvctl.textsafe import printable


class State:
    api_url: str | None = None
    context: str | None = None
    debug: bool = False


state = State()


# --- help ---


def _metavar(param: Any) -> str:
    """The placeholder of an option's value: its own metavar, else an UPPERCASE word."""
    if param.metavar:
        return str(param.metavar)
    desc = getattr(param, "type_descriptor", None)
    if param.param_type_name == "argument" or desc is None or desc.is_choice or desc.is_list:
        return str(param.name).upper()
    if desc.is_path:
        return "PATH"
    return {int: "INTEGER", float: "NUMBER"}.get(desc.annotation, "TEXT")


def _usage_piece(param: Any) -> str:
    if " " in _metavar(param):  # a whole usage of its own: "[STATION...] MESSAGE"
        return _metavar(param)
    text = _metavar(param) + ("..." if param.nargs != 1 else "")
    return text if param.required else f"[{text}]"


def _help_record(param: Any, ctx: _click.Context) -> tuple[str, str] | None:
    record = param.get_help_record(ctx)  # Typer's: (names with "<type>", help with extras)
    if record is None:
        return None
    _, help_text = record
    if param.param_type_name == "argument":
        if " " in _metavar(param):
            return _metavar(param), help_text
        return _metavar(param) + ("..." if param.nargs != 1 else ""), help_text

    def names(opts: list[str]) -> str:
        text, _ = join_options(opts)
        return text if param.is_flag or param.count else f"{text} {_metavar(param)}"

    shown = [names(param.opts)] + ([names(param.secondary_opts)] if param.secondary_opts else [])
    return " / ".join(shown), help_text


def _format_params(cmd: _click.Command, ctx: _click.Context, formatter: Any) -> None:
    args: list[tuple[str, str]] = []
    opts: list[tuple[str, str]] = []
    for param in cmd.get_params(ctx):
        record = _help_record(param, ctx)
        if record is not None:
            (args if param.param_type_name == "argument" else opts).append(record)
    if args:
        with formatter.section("Arguments"):
            formatter.write_dl(args)
    if opts:
        with formatter.section("Options"):
            formatter.write_dl(opts)


def summary(cmd: _click.Command) -> str:
    """A command's one-line summary: its short_help, else the first sentence of its help,
    whole (the help screen wraps it; it is never cut with "...")."""
    if cmd.short_help:
        return " ".join(cmd.short_help.split())
    text = " ".join((cmd.help or "").split("\n\n")[0].split())
    m = re.match(r"(.+?\.)(\s|$)", text)
    return m.group(1) if m else text


def _keep_examples(text: str) -> str:
    """Paragraphs made only of `edrvctl ...` lines are examples: marked so that the help
    formatter never rewraps them (a command is not broken across lines)."""
    paragraphs = text.split("\n\n")
    for i, para in enumerate(paragraphs):
        lines = [line for line in para.split("\n") if line.strip()]
        if lines and all(line.strip().startswith("edrvctl ") for line in lines):
            paragraphs[i] = "\b\n" + para
    return "\n\n".join(paragraphs)


def _format_help_text(cmd: _click.Command, formatter: Any) -> None:
    text = inspect.cleandoc(cmd.help or "").partition("\f")[0]
    if text:
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(_keep_examples(text))


_NOT_ONE_OF = re.compile(r"^(?:Value error, )?(.+?) is not one of .*$", re.S)


def _bad_parameter(e: Any) -> None:
    """Typer's messages for a bad value, as a person should read them: no "Value error, "
    prefix, and a wrong choice answered with the choices as they are spelled (not
    case-folded)."""
    desc = getattr(e.param, "type_descriptor", None)
    m = _NOT_ONE_OF.match(e.message)
    if desc is not None and desc.is_choice and m:
        choices = ", ".join(str(getattr(c, "value", c)) for c in desc.choices or ())
        e.message = f"{m.group(1)} is not one of {choices}" + (
            "" if desc.case_sensitive else " (in any case)"
        )
    else:
        e.message = e.message.replace("Value error, ", "")


class Command(TyperCommand):
    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except BadParameter as e:
            _bad_parameter(e)
            raise

    def collect_usage_pieces(self, ctx: _click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [
            _usage_piece(p) for p in self.get_params(ctx) if p.param_type_name == "argument"
        ]

    def format_help_text(self, ctx: _click.Context, formatter: Any) -> None:
        _format_help_text(self, formatter)

    def format_options(self, ctx: _click.Context, formatter: Any) -> None:
        _format_params(self, ctx, formatter)


class Group(TyperGroup):
    """A noun: alone, it prints its help on stdout and exits 0 (kubectl, gh)."""

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            _click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        try:
            return super().parse_args(ctx, args)
        except BadParameter as e:
            _bad_parameter(e)
            raise

    def format_help_text(self, ctx: _click.Context, formatter: Any) -> None:
        _format_help_text(self, formatter)

    def format_options(self, ctx: _click.Context, formatter: Any) -> None:
        _format_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_commands(self, ctx: _click.Context, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, summary(cmd)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# --- global options anywhere ---


def _option(cmd: _click.Command, token: str) -> Any:
    name = token.split("=", 1)[0] if token.startswith("--") else token[:2]
    for p in getattr(cmd, "params", []):
        if p.param_type_name == "option" and name in (*p.opts, *p.secondary_opts):
            return p
    return None


def hoist_global_options(root: _click.Command, args: list[str]) -> list[str]:
    """`args` with the global options that follow a command moved in front of it. Only
    options the command itself does not define move; values of the command's own options and
    anything after `--` are left alone."""
    hoisted: list[str] = []
    rest: list[str] = []
    cmd, i = root, 0
    while i < len(args):
        token = args[i]
        if token == "--":
            rest += args[i:]
            break
        if token.startswith("-") and token != "-":
            own = _option(cmd, token)
            name = token.split("=", 1)[0]
            if own is None and cmd is not root and name in GLOBAL_OPTIONS:
                takes_value = GLOBAL_OPTIONS[name] and "=" not in token
                hoisted += args[i : i + (2 if takes_value else 1)]
                i += 2 if takes_value else 1
                continue
            takes_value = (
                own is not None
                and not own.is_flag
                and not own.count
                and (token in own.opts or token in own.secondary_opts)
            )
            rest += args[i : i + (2 if takes_value else 1)]
            i += 2 if takes_value else 1
            continue
        sub = getattr(cmd, "commands", {}).get(token)
        if sub is not None:
            cmd = sub
        rest.append(token)
        i += 1
    return hoisted + rest


# --- errors and exit codes ---

_PATTERN = re.compile(r"String should match pattern '[^']*'")


def humane(message: str) -> str:
    """A message as a person should read it: no validator's "Value error, " prefix, no raw
    regular expression; control characters made visible."""
    message = message.replace("Value error, ", "")
    message = _PATTERN.sub("has a character that is not allowed", message)
    return printable(message)


def report(error: EdrvError) -> None:
    print(f"error: {humane(error.message)}", file=sys.stderr)
    if error.hint:
        print(f"hint: {humane(error.hint)}", file=sys.stderr)


class Root(Group):
    """edrvctl itself."""

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(self, args))

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise
        except (Exception, KeyboardInterrupt) as e:
            raise typer.Exit(failure(e)) from None


def failure(e: BaseException) -> int:
    """Report a command's failure (called while handling it); its exit code."""
    if state.debug:
        traceback.print_exc()
    if isinstance(e, EdrvError):
        report(e)
        return e.exit_code
    if isinstance(e, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"error: internal error: {humane(f'{type(e).__name__}: {e}')}", file=sys.stderr)
    if not state.debug:
        print("hint: run it again with --debug for the traceback", file=sys.stderr)
    return 1


def confirm(question: str) -> bool:
    """Ask y/N on stderr (the caller has checked that stdin is a terminal). Ctrl-C is an
    interruption (exit 130), end of input is "no"."""
    while True:
        sys.stderr.write(f"{printable(question)} [y/N]: ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            sys.stderr.write("\n")
            return False
        answer = line.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("", "n", "no"):
            return False
        sys.stderr.write("please answer y or n\n")


def when_option(option: str, value: str | None) -> str | None:
    """A time option (--since, --until): ISO-8601 or a duration ago (30m, 2h, 7d), as the
    API's ISO-8601 UTC; a usage error names the option."""
    from edrvctl.errors import UsageError
    from edrvctl.timefmt import when

    if value is None:
        return None
    try:
        return when(value)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None
