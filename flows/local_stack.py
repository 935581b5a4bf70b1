"""Everything llm-flywheel needs on one machine, started and stopped from Python (the `flywheel stack
up|down` commands call these): a Prefect server with its UI, the `flywheel-pool` process work pool,
the deployments of prefect.yaml, a worker for them, an MLflow tracking server whose UI shows the
registry the flows write, and the model server (`flywheel serve`, port 8000) serving that registry's
champion, which the `rollback` and `canary-review` deployments tell to reload (serving.url). The model
server starts when the workspace has a base model (after `flywheel demo` or `flywheel model bootstrap`).

State lives under the workspace: Prefect's database in <ws>/.prefect (PREFECT_HOME), MLflow's in
<ws>/mlflow.db and <ws>/mlartifacts (the same store the flows use without a stack), process logs in
<ws>/stack-logs/, and the pids in <ws>/stack.json so that `stop_local_stack` ends exactly what was
started. The stack's flows, and a shell with its environment, reach MLflow through its server
(registry.tracking_uri in <ws>/stack-config.yaml).

Usage:
    from flows.local_stack import start_local_stack, stop_local_stack
    info = start_local_stack(Path("workspace"))   # {"prefect_ui": "http://127.0.0.1:4200", ...}
    ...
    stop_local_stack(Path("workspace"))

Flows then run against this server when PREFECT_API_URL is set to info["prefect_api"] (the returned
"env" holds every variable a shell needs).

Production shape (`database=postgresql://USER:PASSWORD@HOST:PORT/NAME`, `artifacts=s3://BUCKET/PREFIX`):
the Prefect server keeps its state in database NAME_prefect (asyncpg) and MLflow in NAME_mlflow
(psycopg2), both on that PostgreSQL server and created when missing; MLflow stores artifacts under the
`artifacts` URL (credentials from the usual AWS variables). The URL reaches only the two server
processes, through their environment: never an argument, a state file, a log line or the result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tasks.config import REPO_ROOT

POOL = "flywheel-pool"
STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """A part of the local stack did not start; the message names its log file."""


def stack_env(workspace: Path, *, port: int = 4200, mlflow_port: int | None = 5000,
              config: Path | None = None, serve_port: int | None = None) -> dict[str, str]:
    """The environment every stack process (and a shell using the stack) runs with."""
    workspace = Path(workspace).resolve()
    env = {
        "PREFECT_HOME": str(workspace / ".prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "FLYWHEEL_CONFIG": str(_stack_config(workspace, config, mlflow_port, serve_port)),
    }
    if mlflow_port:
        env["MLFLOW_UI_URL"] = f"http://127.0.0.1:{mlflow_port}"
    return env


def start_local_stack(
    workspace: Path,
    *,
    port: int = 4200,
    mlflow_port: int | None = 5000,
    config: Path | None = None,
    deployments: Sequence[str] | None = None,
    extra_env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
    serve_port: int | None = 8000,
    database: str | None = None,
    artifacts: str | None = None,
) -> dict[str, Any]:
    """Start server, work pool, deployments, worker, (unless mlflow_port is None) MLflow and (unless
    serve_port is None, or the workspace has no base model to serve) the model server.

    `deployments`: names from prefect.yaml to deploy (default: all of them). `config`: a flywheel
    config file; the stack writes <ws>/stack-config.yaml (that file with paths.workspace set to the
    workspace) and gives it to the worker as FLYWHEEL_CONFIG, so deployment runs use this workspace.
    Returns {prefect_ui, prefect_api, mlflow_ui, model_server, pids, logs, env} (model_server: its URL,
    or a sentence saying why it did not start); raises StackError (and stops whatever it had started)
    when a part fails or is not healthy within timeout_s. `database` (a postgresql:// URL) and
    `artifacts` (a folder or an s3:// URL for MLflow's artifacts): see the module docstring; without
    them Prefect and MLflow use SQLite files and a folder in the workspace.
    """
    workspace = Path(workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    state_path = workspace / STATE_FILE
    if stack_is_running(workspace):
        raise StackError(f"a stack is already running for {workspace} ({state_path}); stop it first")
    servers = PostgresDatabases(database) if database else None
    if servers:
        create_missing_databases(database, [servers.prefect_name, servers.mlflow_name])
    logs = workspace / "stack-logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, **stack_env(workspace, port=port, mlflow_port=mlflow_port, config=config, serve_port=serve_port),
           **(extra_env or {})}
    prefect = [sys.executable, "-m", "prefect"]
    state: dict[str, Any] = {"workspace": str(workspace), "pids": {}, "logs": {},
                             "prefect_ui": f"http://127.0.0.1:{port}", "prefect_api": env["PREFECT_API_URL"],
                             "mlflow_ui": env.get("MLFLOW_UI_URL"), "model_server": None,
                             "database": servers.shown if servers else "sqlite (in the workspace)",
                             "artifacts": artifacts or str(workspace / "mlartifacts"),
                             "env": stack_env(workspace, port=port, mlflow_port=mlflow_port, config=config,
                                              serve_port=serve_port)}

    def spawn(name: str, argv: list[str], secrets: dict[str, str] | None = None) -> None:
        log = logs / f"{name}.log"
        with open(log, "ab") as handle:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env={**env, **(secrets or {})}, stdout=handle,
                                    stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        state["pids"][name], state["logs"][name] = proc.pid, str(log)
        state_path.write_text(json.dumps(state, indent=2))

    try:
        deadline = time.monotonic() + timeout_s
        spawn("prefect-server", [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
              {"PREFECT_SERVER_DATABASE_CONNECTION_URL": servers.prefect_url} if servers else None)
        if mlflow_port:
            spawn("mlflow-server", [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                                    "--port", str(mlflow_port), "--workers", "1",
                                    "--artifacts-destination", artifacts or str(workspace / "mlartifacts")],
                  {"MLFLOW_BACKEND_STORE_URI": servers.mlflow_url if servers else f"sqlite:///{workspace / 'mlflow.db'}"})
        _wait_healthy(f"{state['prefect_ui']}/api/health", deadline, state, "prefect-server")
        _run([*prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"], env, deadline, "work-pool")
        names = [arg for name in deployments for arg in ("--name", name)] if deployments else ["--all"]
        _run([*prefect, "--no-prompt", "deploy", *names], env, deadline, "deploy")
        spawn("worker", [*prefect, "worker", "start", "--pool", POOL, "--type", "process"])
        if mlflow_port:
            _wait_healthy(f"{state['mlflow_ui']}/health", deadline, state, "mlflow-server")
        if serve_port:
            missing = _nothing_to_serve(Path(env["FLYWHEEL_CONFIG"]))
            if missing:
                state["model_server"] = f"not started: {missing}"
            else:
                spawn("model-server", [sys.executable, "-m", "flows.cli", "serve", "--port", str(serve_port)])
                state["model_server"] = f"http://127.0.0.1:{serve_port}"
                # /healthz answers once the model is loaded and the registry read
                _wait_healthy(f"{state['model_server']}/healthz", deadline + 120, state, "model-server")
                state_path.write_text(json.dumps(state, indent=2))
        time.sleep(0.5)
        if not _alive(state["pids"]["worker"]):
            raise StackError(f"the worker exited at start; see {state['logs']['worker']}")
    except BaseException:
        stop_local_stack(workspace)
        raise
    return state


def stack_is_running(workspace: Path) -> bool:
    """Is a process that `flywheel stack up` started for this workspace still alive?"""
    state_path = Path(workspace).resolve() / STATE_FILE
    return state_path.exists() and any(_alive(pid) for pid in json.loads(state_path.read_text())["pids"].values())


def stop_local_stack(workspace: Path, *, timeout_s: float = 15.0) -> dict[str, Any]:
    """End the processes recorded in <ws>/stack.json (each with its process group: the worker's flow
    runs, the server's own children): SIGTERM, then SIGKILL after timeout_s. Returns {stopped: {name: pid}}."""
    state_path = Path(workspace).resolve() / STATE_FILE
    if not state_path.exists():
        return {"stopped": {}}
    pids: dict[str, int] = json.loads(state_path.read_text())["pids"]
    first = ("model-server", "worker", "prefect-server", "mlflow-server")
    order = [n for n in first if n in pids] + [n for n in pids if n not in first]
    for name in order:
        _signal_group(pids[name], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pids[n]) for n in order):
        time.sleep(0.2)
    for name in order:
        _signal_group(pids[name], signal.SIGKILL)
    for name in order:  # reap children of this process, if it is the one that started them
        try:
            os.waitpid(pids[name], os.WNOHANG)
        except ChildProcessError:
            pass
    state_path.unlink(missing_ok=True)
    return {"stopped": pids}


# ---------------------------------------------------------------------------------- PostgreSQL


class PostgresDatabases:
    """The two databases a PostgreSQL URL stands for: NAME_prefect and NAME_mlflow (NAME: the URL's
    database, default `flywheel`), each as the URL its server takes, and the URL shown to people
    (password masked)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+asyncpg"):
            raise StackError(f"--database {_masked(url)}: expected postgresql://USER:PASSWORD@HOST:PORT/NAME")
        if not parts.hostname:
            raise StackError(f"--database {_masked(url)}: no host; expected postgresql://USER:PASSWORD@HOST:PORT/NAME")
        self.name = parts.path.strip("/") or "flywheel"
        self.prefect_name, self.mlflow_name = f"{self.name}_prefect", f"{self.name}_mlflow"
        self._parts = parts
        self.prefect_url = self.url(self.prefect_name, "postgresql+asyncpg")
        self.mlflow_url = self.url(self.mlflow_name, "postgresql+psycopg2")  # SQLAlchemy 2.1 defaults to psycopg 3
        self.shown = _masked(self.url(f"{{{self.prefect_name},{self.mlflow_name}}}", "postgresql"))

    def url(self, database: str, scheme: str) -> str:
        return urllib.parse.urlunsplit((scheme, self._parts.netloc, f"/{database}", self._parts.query, ""))


def create_missing_databases(url: str, names: Sequence[str]) -> list[str]:
    """Create the databases in `names` that the server at `url` lacks (connecting to its `postgres`
    database); returns those created. A server that cannot be reached, or a role that may not create
    databases, is a StackError that says what to do (the password is never in it)."""
    try:
        import psycopg2
    except ImportError:
        raise StackError("--database needs psycopg2: pip install 'llm-flywheel[postgresql]'") from None
    admin = PostgresDatabases(url).url("postgres", "postgresql")
    try:
        connection = psycopg2.connect(admin)
    except psycopg2.Error as err:
        raise StackError(f"cannot connect to PostgreSQL at {_masked(admin)}: {str(err).strip()}. Fix: check host, "
                         "port, user and password (in the URL or PGPASSWORD)") from None
    created = []
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone():
                    continue
                try:
                    cursor.execute(f'CREATE DATABASE "{name}"')
                except psycopg2.Error as err:
                    raise StackError(f"database {name} does not exist and cannot be created ({str(err).strip()}). "
                                     f"Fix: create it (CREATE DATABASE {name} OWNER <user>) or grant the user "
                                     "CREATEDB") from None
                created.append(name)
    finally:
        connection.close()
    return created


def _masked(url: str) -> str:
    """`url` with its password replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit((parts.scheme, f"{user}:***@{netloc[1]}", parts.path, parts.query, parts.fragment))


# ------------------------------------------------------------------------------------- helpers


def _stack_config(workspace: Path, config: Path | None, mlflow_port: int | None, serve_port: int | None = None) -> Path:
    """<ws>/stack-config.yaml: `config` with paths.workspace set to the workspace and, when the stack
    runs an MLflow server and the config names no other, registry.tracking_uri set to that server (so
    flows and rollbacks go through it: a rollback over REST takes under a second); likewise serving.url
    set to the stack's model server, so promote, approve and rollback tell it to reload."""
    values = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {} if config else {}
    values.setdefault("paths", {})["workspace"] = str(workspace)
    if mlflow_port and not (values.get("registry") or {}).get("tracking_uri"):
        values.setdefault("registry", {})["tracking_uri"] = f"http://127.0.0.1:{mlflow_port}"
    if serve_port and not (values.get("serving") or {}).get("url"):
        values.setdefault("serving", {})["url"] = f"http://127.0.0.1:{serve_port}"
    out = workspace / "stack-config.yaml"
    workspace.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return out


def _nothing_to_serve(config: Path) -> str | None:
    """Why the model server cannot start with this config (no base model to load), or None."""
    from tasks.base_model import ModelError, resolve_base_model
    from tasks.config import load_settings

    settings = load_settings(config)
    if settings.serving.backend != "local":
        return None
    try:
        resolve_base_model(settings)
    except ModelError as err:
        return str(err)
    return None


def _run(argv: list[str], env: dict[str, str], deadline: float, what: str) -> None:
    try:
        done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=max(1.0, deadline - time.monotonic()), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise StackError(f"{what} did not finish in time: {' '.join(argv[2:])}") from err
    if done.returncode != 0:
        raise StackError(f"{what} failed ({' '.join(argv[2:])}):\n{(done.stdout + done.stderr)[-3000:]}")


def _wait_healthy(url: str, deadline: float, state: dict, name: str) -> None:
    while time.monotonic() < deadline:
        if not _alive(state["pids"][name]):
            raise StackError(f"{name} exited at start; see {state['logs'][name]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise StackError(f"{name} not healthy at {url} in time; see {state['logs'][name]}")


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it if it exited
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: the group id is the pid
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
