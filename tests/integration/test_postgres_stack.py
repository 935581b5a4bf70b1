"""The production shape of the stack: `flywheel stack up --database postgresql://... --artifacts s3://...`
against a real PostgreSQL (Debian's package: initdb + pg_ctl in a temporary data directory, as the
`postgres` user when the tests run as root, on a free port) and a real S3-compatible server (moto).

The Prefect server's deployments and MLflow's registry land in PostgreSQL (databases <name>_prefect and
<name>_mlflow, created by the stack), the adapter's files in the bucket, nothing in the workspace's
SQLite files; the password shows up in no output, state file or log. Every process is stopped after."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT, load_settings

pytestmark = pytest.mark.integration

PASSWORD = "pg-Secret-7731"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_program(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own: user `flywheel`, password auth, 127.0.0.1 only."""
    initdb, pg_ctl = _pg_program("initdb"), _pg_program("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    (root / "pw").write_text(PASSWORD + "\n")
    if as_user:
        os.chown(root / "pw", pwd.getpwnam("postgres").pw_uid, -1)
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "flywheel", f"--pwfile={root / 'pw'}",
                    "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True, timeout=90)
    try:
        yield f"postgresql://flywheel:{PASSWORD}@127.0.0.1:{port}/flycheck"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_scheduled_runs(url: str, deployment: str, timeout_s: float = 90) -> int:
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while True:
        with psycopg2.connect(url) as connection, connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM flow_run JOIN deployment ON flow_run.deployment_id = deployment.id "
                        "WHERE deployment.name = %s AND flow_run.state_type = 'SCHEDULED'", (deployment,))
            count = cur.fetchone()[0]
        if count or time.monotonic() > deadline:
            return count
        time.sleep(2)


def _flywheel(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_stack_on_postgresql_and_s3(postgres: str, s3_endpoint: str, tmp_path: Path) -> None:
    import boto3
    import psycopg2

    aws = {"AWS_ACCESS_KEY_ID": "flywheel", "AWS_SECRET_ACCESS_KEY": "s3-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_endpoint}
    env = {**os.environ, **aws, "FLYWHEEL_DATABASE_URL": postgres}  # the URL through the environment, not argv
    bucket = boto3.client("s3", **{"endpoint_url": s3_endpoint, "region_name": "us-east-1",
                                   "aws_access_key_id": "flywheel", "aws_secret_access_key": "s3-secret"})
    bucket.create_bucket(Bucket="mlflow")
    workspace = tmp_path / "ws"
    ports = [str(_free_port()), str(_free_port())]
    up = _flywheel(["stack", "up", "--port", ports[0], "--mlflow-port", ports[1], "--serve-port", "0",
                    "--artifacts", "s3://mlflow/artifacts", "--timeout", "300", "-w", str(workspace), "--json"], env,
                   timeout=420)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        started = json.loads(up.stdout.strip().splitlines()[-1])
        assert started["database"] == "postgresql://flywheel:***@127.0.0.1:" + postgres.rsplit(":", 1)[1].split("/")[0] \
            + "/{flycheck_prefect,flycheck_mlflow}"
        assert started["artifacts"] == "s3://mlflow/artifacts"

        # MLflow: a canary registered through the stack's server
        from tasks.registry import Registry

        adapter = tmp_path / "05_adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}), encoding="utf-8")
        (adapter / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
        registry = Registry(load_settings(Path(started["env"]["FLYWHEEL_CONFIG"])))
        version = registry.register_canary(adapter, cycle_id="c1", base_path=Path("/models/base"),
                                           base_digest="b" * 64, dataset_sha256="d" * 64,
                                           eval_report={"gate": {"passed": True, "first_cycle": True}, "suites": {}})

        with psycopg2.connect(postgres.replace("/flycheck", "/flycheck_prefect")) as connection, connection.cursor() as cur:
            cur.execute("SELECT name FROM deployment ORDER BY name")
            deployed = [row[0] for row in cur.fetchall()]
        import yaml

        project = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
        assert deployed == sorted(d["name"] for d in project["deployments"])
        # the server's scheduler writes the weekly monitoring's upcoming runs into PostgreSQL
        assert _wait_for_scheduled_runs(postgres.replace("/flycheck", "/flycheck_prefect"), "weekly-monitoring") > 0, \
            (workspace / "stack-logs" / "prefect-server.log").read_text(errors="replace")[-3000:]
        with psycopg2.connect(postgres.replace("/flycheck", "/flycheck_mlflow")) as connection, connection.cursor() as cur:
            cur.execute("SELECT name, version FROM model_versions")
            versions = cur.fetchall()
            cur.execute("SELECT alias FROM registered_model_aliases")
            aliases = [row[0] for row in cur.fetchall()]
        assert (registry.name, int(version)) in versions and "canary" in aliases
        stored = [item["Key"] for item in bucket.list_objects_v2(Bucket="mlflow", Prefix="artifacts/")["Contents"]]
        assert any(key.endswith("adapter_model.safetensors") for key in stored), stored
        # nothing went to the SQLite files or the artifact folder a stack without --database uses
        assert not (workspace / "mlflow.db").exists() and not (workspace / ".prefect" / "prefect.db").exists()
        assert not (workspace / "mlartifacts").exists()
    finally:
        down = _flywheel(["stack", "down", "-w", str(workspace), "--json"], env, timeout=120)
    assert down.returncode == 0, down.stderr
    shown = [up.stdout, up.stderr, down.stdout, *(p.read_text(errors="replace") for p in (workspace / "stack-logs").iterdir())]
    assert all(PASSWORD not in text for text in shown)


def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://flywheel:{PASSWORD}@127.0.0.1:{_free_port()}/flycheck"
    done = _flywheel(["stack", "up", "--database", url, "--serve-port", "0", "-w", str(tmp_path / "ws")],
                     dict(os.environ), timeout=60)
    assert done.returncode == 2
    assert "cannot connect to PostgreSQL at postgresql://flywheel:***@127.0.0.1:" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
