"""MLflow set-up shared by every stage: one tracking store and artifact root per workspace.

Without configuration MLflow writes `mlflow.db` and `mlruns/` into the current directory; here
both live in the workspace (DESIGN.md section 6), or on the server named by registry.tracking_uri.
"""

from __future__ import annotations

from pathlib import Path

from tasks.config import Settings


def tracking_uri(settings: Settings) -> str:
    if settings.registry.tracking_uri:
        return settings.registry.tracking_uri
    return f"sqlite:///{(settings.workspace / 'mlflow.db').resolve()}"


def artifact_root(settings: Settings) -> Path:
    return (settings.workspace / "mlartifacts").resolve()


def use_tracking(settings: Settings) -> str:
    """Point this process's MLflow client at the workspace's store; returns the URI."""
    import mlflow

    settings.workspace.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(settings: Settings, name: str) -> str:
    """The id of experiment `name`, created with its artifacts under the workspace if new."""
    import mlflow

    use_tracking(settings)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not settings.registry.tracking_uri:  # a server chooses its own artifact store
        location = (artifact_root(settings) / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)
