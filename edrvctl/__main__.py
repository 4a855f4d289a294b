"""Entry point. A TAB completion request is answered here without importing the CLI (typer and
pydantic cost ~0.3 s), and `cs list` without Typer (edrvctl.cli.fast); everything else goes to
the Typer app."""

from __future__ import annotations

import os
import sys


def main() -> None:
    if os.environ.get("_EDRVCTL_COMPLETE", "").startswith("complete_"):
        from edrvctl.completion import complete

        sys.exit(complete(os.environ["_EDRVCTL_COMPLETE"][len("complete_") :]))
    from edrvctl.cli import fast

    code = fast.main(sys.argv[1:])
    if code == 0:
        # A list that went well ends here, without the interpreter's teardown (a last
        # collection, every module freed: ~10 ms of a 10,000-station list). Nothing is left to
        # do at exit but to flush what was written; a flush that fails is left to sys.exit.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(code)
        os._exit(0)
    if code is not None:
        sys.exit(code)
    from edrvctl.cli import run

    run()


if __name__ == "__main__":
    main()
