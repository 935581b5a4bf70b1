"""The flows' parameter forms: what Prefect records for a deployment (`prefect deploy` reads the
signature from the entrypoint's source) must render as plain text boxes with examples, and a malformed
window must be refused by Prefect's own parameter validation before any run starts."""

from __future__ import annotations

import pytest
import yaml
from prefect.utilities.callables import parameter_schema, parameter_schema_from_entrypoint

from flows.retraining import quarterly_retraining
from tasks.config import REPO_ROOT

DEPLOYED = {d["name"]: d["entrypoint"] for d in
            yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]}
GOOD = ["2026-Q1", "2026-01-05..2026-04-20", "last-13-weeks", "all", ""]
BAD = ["2026-13", "Q1-2026", "last-weeks", "2026-01-05..", "2026-01-05...2026-02-01"]


@pytest.mark.parametrize("name", sorted(DEPLOYED))
def test_every_deployed_flow_asks_for_plain_text_with_a_default(name: str, monkeypatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # entrypoints are relative to the repository root, as for `prefect deploy`
    schema = parameter_schema_from_entrypoint(DEPLOYED[name]).model_dump_for_openapi()
    for param, spec in schema["properties"].items():
        if (name, param) == ("canary-ramp", "clock"):  # Python callers only (tests, the demo); empty in the UI
            assert spec.get("default") is None and "leave empty" in spec.get("description", "")
            continue
        assert "anyOf" not in spec and spec.get("type") in ("string", "boolean"), (name, param, spec)
        assert "default" in spec and spec.get("description"), (name, param, spec)  # never "required", never blank
    assert {"config", "workspace"} <= set(schema["properties"])
    assert "auto_approve" not in schema["properties"]  # demo-only: not on a production deployment


def test_the_window_box_has_examples_and_a_pattern_that_refuses_bad_windows() -> None:
    from prefect.utilities.schema_tools import ValidationError, validate

    schema = parameter_schema(quarterly_retraining).model_dump_for_openapi()
    window = schema["properties"]["window"]
    assert window["examples"] == ["2026-Q1", "2026-01-05..2026-04-20", "last-13-weeks"] and window["default"] == ""
    for good in GOOD:
        validate({"window": good}, schema, raise_on_error=True)
    for bad in BAD:
        with pytest.raises(ValidationError, match="window"):
            validate({"window": bad}, schema, raise_on_error=True)


def test_prefect_refuses_a_bad_window_before_the_run_starts(tmp_path) -> None:
    """The server (deployment runs: the UI's form) refuses a window the pattern rejects with 409; the
    engine (every run) refuses one the parser rejects (a 30th of February) before the flow's first line,
    so no cycle folder is made."""
    from prefect import get_client
    from prefect.exceptions import ParameterTypeError, PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("quarterly-retraining")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name="form-check", entrypoint=DEPLOYED["quarterly-retraining"],
            parameter_openapi_schema=parameter_schema(quarterly_retraining).model_dump_for_openapi(),
            enforce_parameter_schema=True)
        with pytest.raises(PrefectHTTPStatusError, match="409") as refused:
            client.create_flow_run_from_deployment(deployment_id, parameters={"window": "2026-13"})
        assert "window" in refused.value.response.text
        assert client.create_flow_run_from_deployment(deployment_id, parameters={"window": "last-13-weeks"}).id
    workspace = tmp_path / "ws"
    with pytest.raises(ParameterTypeError, match="2026-02-30"):
        quarterly_retraining(window="2026-02-30..2026-03-01", workspace=str(workspace))
    assert not (workspace / "cycles").exists()
