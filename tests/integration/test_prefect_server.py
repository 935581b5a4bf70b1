"""A real local stack (flows/local_stack.py): Prefect server in a subprocess on a free port with a
temporary PREFECT_HOME, the `canary-review` deployment from prefect.yaml, a process worker, an MLflow
server on the workspace's store (the worker's flows go through it). The run
suspends waiting for the reviewer's form, is resumed through the API with an answer, restarts from
the top on the worker, records the review and moves the champion alias. Every wait is bounded; the
stack's processes are always stopped."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT, load_settings
from tasks.registry import Registry

pytestmark = pytest.mark.integration

PASSED = {"gate": {"passed": True, "first_cycle": True, "checks": [], "failed": []},
          "suites": {"regression": {"behaviour": {"candidate": 0.9, "diff": None}}}}


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


def test_canary_review_suspends_resumes_with_input_and_promotes(tmp_path: Path) -> None:
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.local_stack import start_local_stack, stop_local_stack

    workspace = tmp_path / "ws"
    adapter = tmp_path / "05_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}), encoding="utf-8")
    (adapter / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    registry = Registry(load_settings(None, {"paths.workspace": str(workspace)}))
    version = registry.register_canary(adapter, cycle_id="c1", base_path=Path("/models/base"), base_digest="b" * 64,
                                       dataset_sha256="d" * 64, eval_report=PASSED)

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
            suspended = wait_for(state, lambda s: s is not None and (s.is_paused() or s.is_final()),
                                 "the run to suspend", 150)
            assert suspended.is_paused() and suspended.name == "Suspended", suspended
            print(f"suspended after {time.monotonic() - started:.1f}s")
            assert registry.status()["champion"] is None

            resume_flow_run(run.id, run_input={"decision": "approve", "reviewer": "alice", "comment": "ok"})
            final = wait_for(state, lambda s: s is not None and s.is_final(), "the resumed run to finish", 150)
            assert final.is_completed(), (final, final.message)
            print(f"completed after {time.monotonic() - started:.1f}s")
    finally:
        stop_local_stack(workspace)

    status = registry.status()
    assert status["champion"] == version and status["canary"] is None
    review = status["versions"][0]["review"]
    assert review["decision"] == "approve" and review["reviewer"] == "alice" and review["comment"] == "ok"
    assert [e["action"] for e in registry.audit()] == ["register", "approve", "promote"]
    assert not (workspace / "stack.json").exists()
