"""Rollback: move the champion alias back to an earlier champion, or to the base model without an
adapter when the first champion is rolled back (DESIGN.md section 6). The rule of where one may go
lives in tasks/registry.py (Registry.rollback); this flow runs it and records it."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.parameters import ConfigFile, OptionalText, WorkspaceDir
from flows.review import mlflow_version_url
from serving.notify import tell_server
from tasks.config import Settings, load_settings
from tasks.registry import BASE, Registry


@task(name="move-champion-back", cache_policy=NO_CACHE)
def move_champion_back(settings: Settings, to: str | None, reviewer: str | None,
                       override_reason: str | None) -> dict[str, Any]:
    registry = Registry(settings)
    return {**registry.rollback(to, reviewer=reviewer, override_reason=override_reason), "model": registry.name}


def _served_line(name: str, served: str) -> str:
    if served == BASE:
        return "the base model, no adapter (no champion alias)"
    return f"[{name} v{served}]({mlflow_version_url(name, served)})"


@task(name="publish-rollback", cache_policy=NO_CACHE)
def publish_rollback(moved: dict[str, Any], override_reason: str | None) -> None:
    name = moved["model"]
    lines = [
        f"# Rollback of {name}",
        "",
        f"- champion: {_label(moved['from'])} -> **{_label(moved['to'])}** in {moved['seconds']} s",
        f"- now serving: {_served_line(name, moved['to'])}",
        f"- rolled back from: {_served_line(name, moved['from'])}",
    ]
    if override_reason:
        lines.append(f"- its rejection overridden, reason: {override_reason}")
    create_markdown_artifact(key="rollback", markdown="\n".join(lines),
                             description=f"champion {_label(moved['from'])} -> {_label(moved['to'])}")


def _label(served: str) -> str:
    return BASE if served == BASE else f"v{served}"


@flow(name="rollback", log_prints=True)
def rollback(
    to: OptionalText = "",
    reviewer: OptionalText = "",
    override_reason: OptionalText = "",
    config: ConfigFile = "",
    workspace: WorkspaceDir = "",
) -> dict[str, Any]:
    """Move the champion back to the version it replaced (the base model, without an adapter, when it
    replaced none), or to `to`.

    Args:
        to: version to return to (one that was champion before), or "base". Empty: the previous champion.
        reviewer: who overrides a rejection (with override_reason).
        override_reason: why a version rejected since it served may serve again (recorded).
        config: YAML config file laid over the embedded defaults (empty: $FLYWHEEL_CONFIG, else the defaults).
        workspace: folder holding the MLflow store (empty: the config's, default ./workspace).
    """
    settings = load_settings(config, {"paths.workspace": workspace} if workspace else None)
    moved = move_champion_back(settings, to or None, reviewer or None, override_reason or None)
    publish_rollback(moved, override_reason)
    print(f"champion {_label(moved['from'])} -> {_label(moved['to'])} in {moved['seconds']} s")
    return {"from": moved["from"], "to": moved["to"], "seconds": moved["seconds"], "server": tell_server(settings)}
