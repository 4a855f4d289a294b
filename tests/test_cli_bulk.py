"""Many stations at once, end to end: a real `edrvctl serve`, simulated stations of both
versions, the batch API and the CLI's selector, --dry-run, --max-failures, exit codes and the
configuration baseline."""

from __future__ import annotations

import json

import pytest

from test_api_actions import Sim, answer, uniq
from test_cli import cli, ok
from timing import until


def booted(server, ep: str) -> None:
    def ready():
        doc = server.get(ep)
        return doc["online"] and doc.get("bootInfo") and doc["status"] == "Available"

    until(ready, 15, interval=0.05, what=f"{ep} online and booted")


@pytest.fixture(scope="module")
def depot(server):
    """Four online stations at one location (two of each version) and one offline one at
    another location shared with one of them."""
    loc, other = uniq("depot"), uniq("yard")
    eps, sims = [], []
    for protocol in ("ocpp1.6", "ocpp2.0.1", "ocpp1.6", "ocpp2.0.1"):
        ep = uniq("bulk")
        server.create(ep, protocol=protocol, location=loc)
        sims.append(Sim(server.ocpp_url, ep, protocol))
        eps.append(ep)
    for ep in eps:
        booted(server, ep)
    offline = uniq("bulk-off")
    server.create(offline, location=other)
    yield {"location": loc, "other": other, "eps": eps, "offline": offline, "sims": sims}
    for sim in sims:
        sim.stop()


def actions_of(server, ep: str, type_: str) -> list[dict]:
    with server.api() as c:
        r = c.get("/v1.1/actions", params={"chargestation": ep, "type": type_})
    return answer(r, 200)["result"]


def rows(stdout: str) -> dict[str, list[str]]:
    """plain output: STATION PROTOCOL OUTCOME ACTIONS DETAIL rows by station (and the summary)."""
    lines = stdout.splitlines()
    assert lines[0].split("\t")[:3] == ["STATION", "PROTOCOL", "OUTCOME"], stdout
    return {line.split("\t")[0]: line.split("\t") for line in lines[1:-1]}


def test_dry_run_lists_the_selected_stations_and_sends_nothing(cli_env, server, depot):
    before = [len(actions_of(server, ep, "clear_cache")) for ep in depot["eps"]]
    r = ok(cli_env, "cs", "clear-cache", "-l", f"location={depot['location']}", "--dry-run")
    got = rows(r.stdout)
    assert sorted(got) == sorted(depot["eps"])
    assert {v[2] for v in got.values()} == {"planned"}
    assert "nothing sent" in r.stdout.splitlines()[-1]
    assert [len(actions_of(server, ep, "clear_cache")) for ep in depot["eps"]] == before


def test_selector_targets_the_right_stations_both_versions(cli_env, server, depot):
    sel = f"location={depot['location']},protocol=ocpp2.0.1"
    r = ok(cli_env, "cs", "trigger", "-l", sel, "Heartbeat", "-o", "json")
    record = json.loads(r.stdout)
    assert sorted(s["endpoint"] for s in record["stations"]) == sorted(depot["eps"][1::2])
    assert record["counts"]["completed"] == 2 and record["counts"]["failed"] == 0
    with server.api() as c:
        listed = answer(c.get("/v1.1/actions", params={"batch": record["_id"]}), 200)
    assert sorted(a["_id"] for a in listed["result"]) == sorted(record["actions"])
    assert {a["batch"] for a in listed["result"]} == {record["_id"]}
    # explicit ids, one of each version; a plain run: one row each and a summary
    r = ok(cli_env, "cs", "clear-cache", depot["eps"][0], depot["eps"][1])
    got = rows(r.stdout)
    assert sorted(got) == sorted(depot["eps"][:2])
    assert {v[2] for v in got.values()} == {"succeeded"}
    assert r.stdout.splitlines()[-1].startswith("2 chargestation(s): 2 succeeded, 0 failed")
    # reset across versions (--hard is Hard on 1.6, Immediate on 2.0.1), followed to the boot
    r = ok(cli_env, "cs", "reset", *depot["eps"][:2], "--hard", "--wait", "--yes", "-o", "json")
    record = json.loads(r.stdout)
    assert record["counts"]["completed"] == 2, record
    for ep in depot["eps"][:2]:
        booted(server, ep)


def test_partial_failure_exits_with_the_worst_code(cli_env, depot):
    # one online station and one offline: 6 (offline) for the whole run
    r = cli(cli_env, "cs", "clear-cache", depot["eps"][0], depot["offline"])
    assert r.exit_code == 6, (r.stdout, r.stderr)
    got = rows(r.stdout)
    assert got[depot["eps"][0]][2] == "succeeded" and got[depot["offline"]][2] == "failed"
    assert "1 failed" in r.stdout.splitlines()[-1] and "error:" in r.stderr


def test_max_failures_stops_starting_stations(cli_env, server, depot):
    r = cli(
        cli_env,
        *("cs", "data-transfer", "--vendor", "acme", "-l", f"location={depot['location']}"),
        *("--max-in-flight", "1", "--max-failures", "1", "-o", "json"),
    )
    assert r.exit_code == 5, (r.stdout, r.stderr)  # the simulator refuses unknown vendors
    record = json.loads(r.stdout)
    assert record["counts"]["failed"] == 1 and record["counts"]["skipped"] == 3, record
    assert len(record["actions"]) == 1


def test_usage_errors_before_anything(cli_env, depot):
    assert cli(cli_env, "cs", "clear-cache", "-l", "colour=red").exit_code == 2
    assert cli(cli_env, "cs", "clear-cache", "--all", depot["eps"][0]).exit_code == 2
    # 2.0.1 cannot unlock without an EVSE: the whole batch is refused, nothing sent
    r = cli(cli_env, "cs", "unlock", "-l", f"location={depot['location']}", "--connector", "1")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    r = cli(cli_env, "cs", "reset", "-l", f"location={depot['location']}")  # no --yes, no tty
    assert r.exit_code == 2 and "--yes" in r.stderr


def test_configuration_baseline_diff_and_apply(cli_env, server, depot, tmp_path):
    sel = f"location={depot['location']},protocol=ocpp1.6"
    first, second = depot["eps"][0], depot["eps"][2]
    ok(cli_env, "cs", "configure", first, "HeartbeatInterval=77")  # already as the baseline
    ok(cli_env, "cs", "configure", second, "HeartbeatInterval=78")
    baseline = tmp_path / "baseline.yaml"
    baseline.write_text("HeartbeatInterval: 77\n")
    r = ok(cli_env, "cs", "configure", "-l", sel, "-f", str(baseline), "--refresh", "--diff")
    got = rows(r.stdout)
    assert got[first][2] == "unchanged"
    assert got[second][2] == "planned" and "HeartbeatInterval: 78 -> 77" in got[second][4]
    assert "1 already match" in r.stdout.splitlines()[-1]
    before = len(actions_of(server, first, "set_configuration"))
    r = ok(cli_env, "cs", "configure", "-l", sel, "-f", str(baseline))
    assert rows(r.stdout)[second][2] == "succeeded"
    assert len(actions_of(server, first, "set_configuration")) == before  # nothing sent to it
    assert depot["sims"][2].sim.config["HeartbeatInterval"] == "77"
    r = ok(cli_env, "cs", "configure", "-l", sel, "-f", str(baseline), "--diff")
    assert {v[2] for v in rows(r.stdout).values()} == {"unchanged"}


def test_batch_api_and_watch(cli_env, server, depot):
    body = {
        "selector": {"location": depot["location"]},
        "type": "trigger_message",
        "data": {"requestedMessage": "Heartbeat"},
        "max_in_flight": 2,
    }
    with server.api() as c:
        done = answer(c.post("/v1.1/actions/batch", json=body), 201)["result"]
        assert done["status"] == "finished" and done["counts"]["completed"] == 4
        started = answer(c.post("/v1.1/actions/batch?wait=0", json=body), 202)["result"]
        assert started["status"] == "running"

        def finished():
            got = answer(c.get(f"/v1.1/actions/batch/{started['_id']}"), 200)["result"]
            return got if got["status"] == "finished" else None

        got = until(finished, 15, interval=0.05, what="the batch to finish")
        assert got["counts"] == {**got["counts"], "requested": 4, "completed": 4}
        answer(c.get("/v1.1/actions/batch/nope"), 404)
        answer(c.post("/v1.1/actions/batch", json={**body, "type": "fly"}), 400)
    r = ok(cli_env, "actions", "watch", got["actions"][0])
    assert "outcome succeeded" in r.stdout
    r = ok(cli_env, "actions", "watch", "--station", depot["eps"][0], "-o", "json")
    assert json.loads(r.stdout)["outcome"] != "pending"
