"""What counting one OCPP message costs: `Metrics.message` (edrvctl/metrics.py) beside a bare
dict increment, and beside prometheus_client's labelled Counter when it is installed (it is a
test dependency, not a runtime one).

    python bench/metrics.py [--n 1000000] [--rounds 5]

Each figure is the best of --rounds of --n calls, in ns per call, over the same mix of keys (a
Heartbeat-heavy mix of 8 actions), interleaved so that machine noise hits all alike.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from edrvctl.metrics import Metrics

MIX = [
    ("Heartbeat", "ok"),
    ("Heartbeat", "ok"),
    ("MeterValues", "ok"),
    ("MeterValues", "ok"),
    ("StatusNotification", "ok"),
    ("Heartbeat", "ok"),
    ("TransactionEvent", "ok"),
    ("MeterValues", "FormatViolation"),
]


def timed(fn: Callable[[str, str], None], n: int) -> float:
    keys = (MIX * (n // len(MIX) + 1))[:n]
    t = time.perf_counter()
    for action, result in keys:
        fn(action, result)
    return time.perf_counter() - t


def loop_only(n: int) -> float:
    keys = (MIX * (n // len(MIX) + 1))[:n]
    t = time.perf_counter()
    for _action, _result in keys:
        pass
    return time.perf_counter() - t


def contenders() -> dict[str, Callable[[str, str], None]]:
    counts: dict[tuple[str, str], int] = {}

    def bare(action: str, result: str) -> None:
        key = (action, result)
        counts[key] = counts.get(key, 0) + 1

    out: dict[str, Callable[[str, str], None]] = {
        "dict increment": bare,
        "Metrics.message": Metrics().message,
    }
    try:
        from prometheus_client import CollectorRegistry, Counter
    except ImportError:
        return out
    c = Counter("m", "m", ["action", "result"], registry=CollectorRegistry())

    def prom(action: str, result: str) -> None:
        c.labels(action, result).inc()

    out["prometheus_client Counter.labels().inc()"] = prom
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    fns = contenders()
    best = dict.fromkeys(fns, float("inf"))
    empty = float("inf")
    for _ in range(a.rounds):
        empty = min(empty, loop_only(a.n))
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, a.n))
    print(f"{a.n:,} calls, best of {a.rounds}; ns per call, the loop itself taken off")
    print("| counting one message | ns |")
    print("|---|---:|")
    for name, t in best.items():
        print(f"| {name} | {(t - empty) / a.n * 1e9:.0f} |")


if __name__ == "__main__":
    main()
