"""prefect.yaml and the documented Kubernetes work pools: the deployments point at flows that exist and
at the default process pool; the Kubernetes pools' job variables are checked with Prefect's own
validators against configs/work-pools/kubernetes.json and render into a Job that asks for what it says."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml
from prefect import Flow
from prefect.server.schemas.actions import validate_base_job_template
from prefect.utilities.schema_tools import ValidationError, is_valid_schema, validate
from prefect.utilities.templating import apply_values, find_placeholders

from tasks.config import REPO_ROOT

TEMPLATE = REPO_ROOT / "configs" / "work-pools" / "kubernetes.json"
PROJECT = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
POOLS = {"flywheel-gpu": PROJECT["definitions"]["kubernetes_gpu_pool"],
         "flywheel-cpu": PROJECT["definitions"]["kubernetes_cpu_pool"]}


def _template() -> dict:
    return json.loads(TEMPLATE.read_text(encoding="utf-8"))


def _render(job_variables: dict) -> dict:
    """The Job configuration a Kubernetes worker would get: the template's defaults, then the pool's variables."""
    template = _template()
    properties = template["variables"]["properties"]
    values = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    return apply_values(template["job_configuration"], {**values, **job_variables, "name": "flow-run",
                                                        "command": "prefect flow-run execute"})


@pytest.mark.parametrize("deployment", PROJECT["deployments"], ids=lambda d: d["name"])
def test_each_deployment_runs_an_existing_flow_on_the_process_pool(deployment):
    path, function = deployment["entrypoint"].split(":")
    assert (REPO_ROOT / path).is_file(), path
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert isinstance(getattr(module, function), Flow), deployment["entrypoint"]
    assert deployment["work_pool"]["name"] == "flywheel-pool"  # the default stays the local process pool


def test_the_kubernetes_template_is_one_prefect_accepts():
    template = _template()
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    is_valid_schema(template["variables"], preprocess=False)
    declared = set(template["variables"]["properties"])
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert declared == used, f"declared but never used: {declared - used}"


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_the_documented_pools_job_variables_are_valid_and_render_a_job(pool):
    variables = POOLS[pool]["job_variables"]
    schema = _template()["variables"]
    assert set(variables) <= set(schema["properties"]), set(variables) - set(schema["properties"])
    validate(variables, schema, raise_on_error=True, preprocess=True, ignore_required=True)
    job = _render(variables)
    assert "{{" not in json.dumps(job)
    container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == variables["image"] and container["args"] == "prefect flow-run execute"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == (1 if pool == "flywheel-gpu" else 0)
    assert container["resources"]["requests"] == {"cpu": variables["cpu"], "memory": variables["memory"]}


@pytest.mark.parametrize("bad", [{"gpu": "one"}, {"gpu": -1}, {"memory": "lots"}, {"image_pull_policy": "Sometimes"}])
def test_a_malformed_job_variable_is_refused(bad):
    with pytest.raises(ValidationError):
        validate({**POOLS["flywheel-gpu"]["job_variables"], **bad}, _template()["variables"], raise_on_error=True,
                 preprocess=True, ignore_required=True)
