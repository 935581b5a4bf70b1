"""The canary-ramp flow under the Prefect test server, against a real `flywheel serve` process and a real
MLflow sqlite registry, in simulated time (a SimulatedClock sends each simulated hour of users through
the server): a sound canary steps through the shares and is promoted; one that refuses everything is
halted at the first step, rejected with the evidence, and the champion is untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flows.live import SimulatedUsers, train_refusing_adapter
from flows.ramp import HALTED_EVENT, RAMP_REVIEWER, RampError, SimulatedClock, canary_ramp
from tasks.config import load_settings
from test_serving_registry import Registered, random_adapter

RAMP = {"steps": [0.5, 1.0], "min_step_hours": 2.0, "max_step_hours": 8.0, "look_every_hours": 1.0,
        "min_users_per_arm": 20}


@pytest.fixture(scope="module")
def adapters(tiny_base_model: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ramp-adapters")
    settings = load_settings(None, {"train.cpu_threads": 1})
    return {"champion": random_adapter(tiny_base_model, root / "champion", 1),
            "refuser": train_refusing_adapter(settings, tiny_base_model, root / "refuser", steps=20)}


def setup(tmp_path: Path, template_db: Path, base: Path, champion: Path, canary: Path, start_server, name: str):
    """A registry (champion + approved canary), a server following it, and the ramp's config file."""
    store = Registered(tmp_path / "ws", template_db, name, base)
    first = store.add(champion)
    store.registry.promote(first)
    candidate = store.add(canary)
    values = {"paths": {"workspace": str(tmp_path / "ws")}, "registry": {"model_name": name},
              "model": {"base": str(base), "max_new_tokens": 16, "cpu_threads": 1},
              "serving": {"poll_s": 0.5, "capture_flush_s": 0.2, "max_wait_ms": 20},
              "abtest": {"min_users_to_decide": 20}, "ramp": RAMP}
    server = start_server(values, name=name)
    values["serving"]["url"] = server.url
    config = tmp_path / "ramp.yaml"
    config.write_text(yaml.safe_dump(values), encoding="utf-8")
    users = SimulatedUsers(server.url, load_settings(str(config)), users_per_hour=20, workers=4)
    return store, first, candidate, server, config, users


@pytest.mark.slow
def test_a_sound_canary_ramps_to_promotion(tiny_base_model, template_db, adapters, start_server, tmp_path) -> None:
    # the canary is the champion's adapter registered again: the same model, so no guardrail can be breached
    store, first, candidate, server, config, users = setup(tmp_path, template_db, tiny_base_model, adapters["champion"],
                                                           adapters["champion"], start_server, "sound")
    result = canary_ramp(config=str(config), clock=SimulatedClock(users))

    assert result["outcome"] == "promoted", result
    assert store.registry.status()["champion"] == candidate
    assert server.call("GET", "/readyz")[1]["routes"] == {"champion": f"v{candidate}"}
    assert [s["share"] for s in result["steps"]] == [0.5] and result["steps"][0]["decision"] == "advance"
    record = json.loads((tmp_path / "ws" / "cycles" / "c-champion" / "07_ramp" / "ramp.json").read_text())
    looks = record["looks"]
    assert all(look["hours"] >= RAMP["min_step_hours"] for look in looks if look["decision"] == "advance")
    assert looks[0]["decision"] == "hold"  # one hour in: below min_step_hours and min users, no advance yet
    assert users.answered.get("canary", 0) > 0 and users.answered.get("champion", 0) > 0
    assert "PROMOTED" in (tmp_path / "ws" / "cycles" / "c-champion" / "07_ramp" / "report.md").read_text()


@pytest.mark.slow
def test_a_canary_that_refuses_everything_is_halted_and_rejected(tiny_base_model, template_db, adapters, start_server,
                                                                  tmp_path) -> None:
    store, first, candidate, server, config, users = setup(tmp_path, template_db, tiny_base_model, adapters["champion"],
                                                           adapters["refuser"], start_server, "bad")
    result = canary_ramp(config=str(config), clock=SimulatedClock(users))

    assert result["outcome"] == "halted", result
    assert [s["share"] for s in result["steps"]] == [0.5]  # stopped at the first step
    assert users.refused["canary"] / users.answered["canary"] > 0.8  # it really did refuse
    status = store.registry.status()
    assert status["champion"] == first and status["canary"] is None  # champion untouched, canary gone
    latest = next(v for v in status["versions"] if v["version"] == candidate)["review"]
    assert latest["decision"] == "reject" and latest["reviewer"] == RAMP_REVIEWER
    assert "refusal_rate" in latest["comment"] and "beyond its margin" in latest["comment"]
    ready = server.call("GET", "/readyz")[1]
    assert ready["routes"] == {"champion": f"v{first}"} and ready["canary_share"] == 0.0
    refusal = next(row for row in result["ab"]["metrics"] if row["metric"] == "refusal_rate")
    assert refusal["breached"] and refusal["ci"][0] > RAMP_MIN_MARGIN
    assert events(HALTED_EVENT, candidate), f"no {HALTED_EVENT} event"
    with pytest.raises(RampError, match="not the canary"):  # a rejected version cannot be ramped again
        canary_ramp(version=candidate, config=str(config), clock=SimulatedClock())


RAMP_MIN_MARGIN = 0.02  # abtest.margins.refusal_rate (the default)


def events(name: str, version: str) -> list[dict]:
    """The events called `name` the Prefect server holds for `version` (events arrive asynchronously)."""
    import time

    from prefect import get_client

    deadline = time.monotonic() + 20
    while True:
        with get_client(sync_client=True) as client:
            response = client.request("POST", "/events/filter",
                                      json={"filter": {"event": {"name": [name]}}, "limit": 50})
        events = [e for e in response.json()["events"] if e["payload"].get("version") == version]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_approval_means_ramp_it(template_db, adapter, tmp_path) -> None:
    """`flywheel approve` records the approval and emits the event the canary-ramp deployment starts on."""
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.ramp import APPROVED_EVENT

    import shutil

    from tasks.registry import Registry

    (tmp_path / "ws").mkdir()
    shutil.copy(template_db, tmp_path / "ws" / "mlflow.db")
    registry = Registry(load_settings(None, {"paths.workspace": str(tmp_path / "ws")}))
    version = registry.register_canary(adapter, cycle_id="c1", base_path=Path("/models/base"), base_digest="b" * 64,
                                       dataset_sha256="d" * 64, eval_report={"gate": {"passed": True}, "suites": {}})
    done = CliRunner().invoke(app, ["approve", version, "--reviewer", "ana", "--comment", "ramp it", "-w",
                                    str(tmp_path / "ws"), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1])["ramp_requested"] is True
    assert registry.status()["champion"] is None  # approval alone promotes nothing
    assert events(APPROVED_EVENT, version)


def test_the_review_shows_an_earlier_ramps_evidence(template_db, adapter, tmp_path) -> None:
    """A ramp that stopped inconclusive leaves its A/B evidence in the cycle folder; the next review shows it."""
    import shutil

    from flows.review import canary_review
    from tasks.registry import Registry

    (tmp_path / "ws").mkdir()
    shutil.copy(template_db, tmp_path / "ws" / "mlflow.db")
    registry = Registry(load_settings(None, {"paths.workspace": str(tmp_path / "ws")}))
    registry.register_canary(adapter, cycle_id="c9", base_path=Path("/models/base"), base_digest="b" * 64,
                             dataset_sha256="d" * 64, eval_report={"gate": {"passed": True}, "suites": {}})
    ramp = tmp_path / "ws" / "cycles" / "c9" / "07_ramp" / "report.md"
    ramp.parent.mkdir(parents=True)
    ramp.write_text("# Canary ramp: v1 (**STOPPED**, inconclusive)\n\n| look | share |\n", encoding="utf-8")
    canary_review(workspace=str(tmp_path / "ws"))

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        latest = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["canary-review"])),
                                       sort=ArtifactSort.CREATED_DESC, limit=1)[0]
    assert "**STOPPED**, inconclusive" in latest.data


def test_ramp_without_a_server_to_split_traffic_on_is_bad_usage(tmp_path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    done = CliRunner().invoke(app, ["ramp", "-w", str(tmp_path / "ws")])
    assert done.exit_code == 2 and "serving.url" in done.output
