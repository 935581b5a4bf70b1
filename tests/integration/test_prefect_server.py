"""A real local stack (flows/local_stack.py): Prefect server in a subprocess on a free port with a
temporary PREFECT_HOME, the `canary-review` deployment from prefect.yaml, a process worker, an MLflow
server on the workspace's store (the worker's flows go through it). The run suspends waiting for the
reviewer's form. A whitespace-only reviewer is refused by the form (Prefect's server checks the answer
against the form's schema; the run stays suspended and resumable); an answer the registry refuses (the
gate's overrider approving it too) makes the flow ask again under a new, valid pause key; a valid
answer restarts the run from the top on the worker, records the review and moves the champion alias.
Every wait is bounded; the stack's processes are always stopped."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT, load_settings
from tasks.registry import Registry

pytestmark = pytest.mark.integration

FAILED = {"gate": {"passed": False, "first_cycle": False, "failed": ["regression.behaviour.max_drop"], "checks": []},
          "suites": {"regression": {"behaviour": {"candidate": 0.82, "diff": -0.08}}}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(read, done, what: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = read()
        if done(value):
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {value!r}")


def test_canary_review_suspends_asks_again_and_requests_the_ramp(tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.local_stack import start_local_stack, stop_local_stack

    workspace = tmp_path / "ws"
    adapter = tmp_path / "05_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}), encoding="utf-8")
    (adapter / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    registry = Registry(load_settings(None, {"paths.workspace": str(workspace)}))
    version = registry.register_canary(adapter, cycle_id="c1", base_path=Path("/models/base"), base_digest="b" * 64,
                                       dataset_sha256="d" * 64, eval_report=FAILED)
    registry.override_gate(version, reviewer="lead", reason="the drop is one retired product")

    # Deploy all of prefect.yaml (checks it with Prefect's own loader); the retraining flow is optional
    # while it is being written.
    names = ["weekly-monitoring", "canary-review", "rollback"]
    if (REPO_ROOT / "flows" / "retraining.py").exists():
        names.append("quarterly-retraining")
    started = time.monotonic()
    mlflow_port = free_port()
    stack = start_local_stack(workspace, port=free_port(), mlflow_port=mlflow_port, deployments=names,
                              extra_env={"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"},
                              timeout_s=150)
    try:
        print(f"stack up in {time.monotonic() - started:.1f}s")
        # the worker's flows reach the registry through the stack's MLflow server
        stacked = load_settings(Path(stack["env"]["FLYWHEEL_CONFIG"]))
        assert stacked.registry.tracking_uri == f"http://127.0.0.1:{mlflow_port}"
        assert Registry(stacked).status()["canary"] == version
        with temporary_settings({PREFECT_API_URL: stack["prefect_api"]}), get_client(sync_client=True) as client:
            deployed = {d.name: d for d in client.read_deployments()}
            assert set(deployed) == set(names)
            assert {d.work_pool_name for d in deployed.values()} == {"flywheel-pool"}
            assert [s.schedule.cron for s in deployed["weekly-monitoring"].schedules] == ["0 6 * * 1"]
            assert "version" in deployed["canary-review"].parameter_openapi_schema["properties"]
            if "quarterly-retraining" in deployed:
                retraining = deployed["quarterly-retraining"]
                assert retraining.global_concurrency_limit.limit == 1
                assert retraining.concurrency_options.collision_strategy == "CANCEL_NEW"
                automations = [a for a in client.read_automations()
                               if "flywheel.retraining.requested" in getattr(a.trigger, "expect", set())]
                assert len(automations) == 1
                # The triggered cycle learns from the weeks that drifted, passed along in the event.
                assert automations[0].actions[0].parameters == {"window": "{{ event.payload.window }}"}
            run = run_deployment("canary-review/canary-review", timeout=0)
            state = lambda: client.read_flow_run(run.id).state  # noqa: E731

            def suspended_for(key: str):
                """Wait until the run is suspended under `key`; its Resume form (input schema) must load."""
                found = wait_for(state, lambda s: s is not None and (s.is_final() or (
                    s.is_paused() and s.state_details.pause_key == key)), f"the run to suspend under {key}", 150)
                assert found.is_paused() and found.name == "Suspended", found
                keyset = keyset_from_paused_state(found)
                assert json.loads(client.read_flow_run_input(run.id, keyset["schema"]))["required"] == [
                    "decision", "reviewer", "comment"]
                return found, client.read_flow_run_input(run.id, keyset["description"])

            suspended_for(f"review-{version}")
            print(f"suspended after {time.monotonic() - started:.1f}s")
            assert registry.status()["champion"] is None

            # 1. Blank text: the form refuses it; the run stays suspended under the same key, resumable.
            with pytest.raises(RuntimeError, match="reviewer"):
                resume_flow_run(run.id, run_input={"decision": "approve", "reviewer": "   ", "comment": "ok"})
            suspended_for(f"review-{version}")
            # 2. An answer the registry refuses: the flow records nothing and asks again under a new key.
            resume_flow_run(run.id, run_input={"decision": "approve", "reviewer": "lead", "comment": "mine"})
            _, asked_again = suspended_for(f"review-{version}-attempt-2")
            assert "Previous answer refused" in asked_again and "require_distinct_override" in asked_again
            assert registry.status()["versions"][0]["reviews"] == []
            print(f"asked again after {time.monotonic() - started:.1f}s")
            # 3. A valid answer: recorded, and the ramp requested (approval means "ramp it"; flows/ramp.py promotes).
            resume_flow_run(run.id, run_input={"decision": "approve", "reviewer": "alice", "comment": "ok"})
            final = wait_for(state, lambda s: s is not None and s.is_final(), "the resumed run to finish", 150)
            assert final.is_completed(), (final, final.message)
            print(f"completed after {time.monotonic() - started:.1f}s")
    finally:
        stop_local_stack(workspace)

    status = registry.status()
    assert status["champion"] is None and status["canary"] == version  # promoted only by the ramp, on live traffic
    reviews = status["versions"][0]["reviews"]
    assert [(r["decision"], r["reviewer"], r["comment"]) for r in reviews] == [("approve", "alice", "ok")]
    assert [e["action"] for e in registry.audit()] == ["register", "override_gate", "approve"]
    assert not (workspace / "stack.json").exists()
