"""MLflow set-up shared by every stage: one tracking store and artifact root per workspace.

Without configuration MLflow writes `mlflow.db` and `mlruns/` into the current directory; here
both live in the workspace (DESIGN.md section 6), or on the server named by registry.tracking_uri.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from tasks.config import ConfigError, Settings


class TrackingServerUnreachable(ConfigError):
    """registry.tracking_uri names a server that does not answer."""


def tracking_uri(settings: Settings) -> str:
    if settings.registry.tracking_uri:
        return settings.registry.tracking_uri
    return f"sqlite:///{(settings.workspace / 'mlflow.db').resolve()}"


def artifact_root(settings: Settings) -> Path:
    return (settings.workspace / "mlartifacts").resolve()


def over_http(uri: str) -> bool:
    """A tracking server reached over HTTP(S), as opposed to a store this process opens itself."""
    return uri.split(":", 1)[0] in ("http", "https")


def artifact_location(settings: Settings, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: under the workspace for a store this process opens
    (MLflow's default would be ./mlruns in the current directory); a server (HTTP or Databricks)
    chooses its own (None)."""
    uri = tracking_uri(settings)
    if over_http(uri) or uri.startswith("databricks"):
        return None
    return (artifact_root(settings) / experiment).as_uri()


def require_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """For a tracking server (http/https URI), fail at once when nothing answers there, naming the
    server and the fix: MLflow's own client would retry with back-off for minutes first. Any HTTP
    answer, an error status included, counts as reachable (credentials are MLflow's business)."""
    if not over_http(uri):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if "CERTIFICATE" in str(reason).upper():  # TLS set-up: MLflow's environment variables decide
            return
        raise TrackingServerUnreachable(
            f"the MLflow tracking server {uri} (registry.tracking_uri) does not answer ({reason}): start it "
            "(`flywheel stack up` starts one for the workspace) or leave registry.tracking_uri empty to use "
            "the workspace's own mlflow.db") from None


def use_tracking(settings: Settings) -> str:
    """Point this process's MLflow client at the workspace's store; returns the URI."""
    import mlflow

    settings.workspace.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(settings)
    require_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(settings: Settings, name: str) -> str:
    """The id of experiment `name`, created with its artifacts under the workspace if new. Talks to the
    configured store through its own client: nothing process-wide is set."""
    from mlflow import MlflowClient

    settings.workspace.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(settings)
    require_reachable(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(settings, name))
