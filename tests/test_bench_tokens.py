"""Smoke test of bench/tokens.py in --quick mode (1,000 tokens, 50 Authorize per version): it
runs and produces its figures. The targets are not asserted: the machine is shared."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

from conftest import sqlite_only

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load():
    sys.path.insert(0, str(BENCH))  # bench/tokens.py imports bench/run.py as `run`
    spec = importlib.util.spec_from_file_location("bench_tokens", BENCH / "tokens.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_tokens"] = module
    spec.loader.exec_module(module)
    return module


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@sqlite_only
def test_tokens_quick():
    res = load().main(["--quick"])
    f = res.figures
    assert f["tokens"] == 1_000
    assert f["import_message"] == "1000 token(s) imported: 1000 created, 0 updated"
    assert f["reimport_result"] == {"rows": 1000, "created": 0, "updated": 1000}
    assert positive(f["import_cli_s"]) and positive(f["reimport_api_s"])
    for key in ("16", "201"):
        assert 0 < f[f"auth_{key}_p50_ms"] <= f[f"auth_{key}_p99_ms"]
        assert positive(f[f"heartbeat_{key}_p50_ms"]) and positive(f[f"unknown_{key}_p50_ms"])
        assert sum(f[f"statuses_{key}"].values()) == 50
        assert set(f[f"statuses_{key}"]) <= {"Accepted", "Blocked"}
    md = res.markdown()
    assert md.startswith(f"## {res.title}") and "`python bench/tokens.py --quick`" in md
    assert len(res.checks) == 2 and all(
        f"**{'met' if ok else 'MISSED'}**" in md for _, ok in res.checks
    )
