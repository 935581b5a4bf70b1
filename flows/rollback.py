"""Rollback: move the champion alias back to an earlier champion (DESIGN.md section 6). The rule of
where one may go lives in tasks/registry.py (Registry.rollback); this flow runs it and records it."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.review import mlflow_version_url
from serving.notify import tell_server
from tasks.config import Settings, load_settings
from tasks.registry import Registry


@task(name="move-champion-back", cache_policy=NO_CACHE)
def move_champion_back(settings: Settings, to: str | None) -> dict[str, Any]:
    registry = Registry(settings)
    return {**registry.rollback(to), "model": registry.name}


@task(name="publish-rollback", cache_policy=NO_CACHE)
def publish_rollback(moved: dict[str, Any]) -> None:
    name = moved["model"]
    create_markdown_artifact(
        key="rollback",
        markdown="\n".join([
            f"# Rollback of {name}",
            "",
            f"- champion: v{moved['from']} -> **v{moved['to']}** in {moved['seconds']} s",
            f"- now serving: [{name} v{moved['to']}]({mlflow_version_url(name, moved['to'])})",
            f"- rolled back from: [{name} v{moved['from']}]({mlflow_version_url(name, moved['from'])})",
        ]),
        description=f"champion v{moved['from']} -> v{moved['to']}",
    )


@flow(name="rollback", log_prints=True)
def rollback(
    to: str | None = None,
    config: str | None = None,
    workspace: str | None = None,
) -> dict[str, Any]:
    """Move the champion back to the version it replaced, or to `to` (which must have been champion).

    Args:
        to: version to return to. Empty: the previous champion.
        config: YAML config file laid over the embedded defaults.
        workspace: folder holding the MLflow store (default ./workspace).
    """
    settings = load_settings(config, {"paths.workspace": workspace} if workspace else None)
    moved = move_champion_back(settings, to)
    publish_rollback(moved)
    print(f"champion v{moved['from']} -> v{moved['to']} in {moved['seconds']} s")
    return {"from": moved["from"], "to": moved["to"], "seconds": moved["seconds"], "server": tell_server(settings)}
