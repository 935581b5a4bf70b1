"""Logs on object storage: s3:// sources against a real S3-compatible server (moto in server mode, a
process on 127.0.0.1 started and stopped here). A remote folder loads exactly like the same local
folder: the same rows, the same quarantine entries with the same line numbers, named by their URL."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import REPO_ROOT, LogsSettings
from tasks.contracts import LOG_SCHEMA, LogRecord
from tasks.logs import load_logs

pytestmark = pytest.mark.slow  # a moto server process: ~10 s to start

pytest.importorskip("s3fs")
pytest.importorskip("moto")

SECRET = "flywheel-test-secret-Zq81"  # must never show up in any output


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    """The AWS variables every S3 client reads point at the local S3 server for this module."""
    endpoint = s3_endpoint
    env = {"AWS_ACCESS_KEY_ID": "flywheel", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    import boto3
    import fsspec

    client = boto3.client("s3")
    client.create_bucket(Bucket="logs")
    try:
        yield client
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def row(i: int, **changes) -> dict:
    return {"request_id": f"req-{i}", "ts": f"2026-01-05T10:{i:02d}:00Z", "user_id": f"user-{i % 3}",
            "prompt": f"How do I reset router {i}?", "response": "Hold the button for 5 seconds.",
            "model_version": "v1", "feedback": None, "metadata": {"channel": "web"}, **changes}


def write_lines(path: Path, lines: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def quarantine_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _log_table(ids) -> pa.Table:
    """Rows as the LogWriter stores them in Parquet."""
    records = [LogRecord.model_validate(row(i)).model_dump() for i in ids]
    return pa.Table.from_pylist([{**r, "metadata": json.dumps(r["metadata"])} for r in records], schema=LOG_SCHEMA)


def _upload(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), "logs", f"{prefix}/{path.name}")


def _mixed_folder(tmp_path: Path) -> Path:
    """JSONL with bad lines, gzipped JSONL, Parquet and a Parquet file cut off mid-write."""
    folder = tmp_path / "logs"
    write_lines(folder / "2026-01-05.jsonl", [row(0), row(1), row(2, ts="yesterday"), row(3), "{not json", row(5)])
    (folder / "2026-01-06.jsonl.gz").write_bytes(gzip.compress(
        ("\n".join(json.dumps(row(i)) for i in (6, 7)) + "\n" + json.dumps(row(8, prompt=None)) + "\n").encode()))
    pq.write_table(_log_table((9, 10, 11)), folder / "2026-01-07.parquet")
    whole = (folder / "2026-01-07.parquet").read_bytes()
    (folder / "2026-01-08.parquet").write_bytes(whole[: len(whole) // 2])
    return folder


def test_an_s3_folder_loads_like_the_same_local_folder(s3, tmp_path):
    folder = _mixed_folder(tmp_path)
    _upload(s3, folder, "mixed")
    local = load_logs([folder], LogsSettings(), quarantine=tmp_path / "local-q.jsonl")
    remote = load_logs(["s3://logs/mixed/"], LogsSettings(), quarantine=tmp_path / "remote-q.jsonl")

    assert remote.files == [f"s3://logs/mixed/{p.name}" for p in sorted(folder.iterdir())]
    assert (remote.read, remote.accepted, remote.quarantined) == (local.read, local.accepted, local.quarantined)
    assert remote.accepted == 9 and remote.reasons == local.reasons
    assert remote.table.equals(local.table)
    # quarantine: the same reasons at the same line numbers, each named by its URL
    local_q, remote_q = quarantine_rows(tmp_path / "local-q.jsonl"), quarantine_rows(tmp_path / "remote-q.jsonl")
    name = {str(folder / Path(e["source"]).name): f"s3://logs/mixed/{Path(e['source']).name}" for e in local_q}
    assert [(name[e["source"]], e["line"], e["reason"], e["bytes"]) for e in local_q] == \
        [(e["source"], e["line"], e["reason"], e["bytes"]) for e in remote_q]
    assert ("s3://logs/mixed/2026-01-05.jsonl", 3, "bad_timestamp") in {(e["source"], e["line"], e["reason"]) for e in remote_q}
    assert [f["source"] for f in remote.unreadable_files] == ["s3://logs/mixed/2026-01-08.parquet"]
    assert remote_q[-1]["bytes"] == len((folder / "2026-01-08.parquet").read_bytes())  # size from the store


def test_logs_validate_on_s3_never_shows_the_secret_and_names_what_is_missing(s3, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    write_lines(tmp_path / "a.jsonl", [row(0), row(1, ts="soon"), row(2)])
    s3.upload_file(str(tmp_path / "a.jsonl"), "logs", "cli/2026/a.jsonl")
    quarantine = tmp_path / "q.jsonl"
    done = CliRunner().invoke(app, ["logs", "validate", "s3://logs/cli/*/*.jsonl", "--quarantine", str(quarantine),
                                    "-w", str(tmp_path), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["read"], summary["accepted"], summary["files"]) == (3, 2, ["s3://logs/cli/2026/a.jsonl"])
    assert [(e["source"], e["line"]) for e in quarantine_rows(quarantine)] == [("s3://logs/cli/2026/a.jsonl", 2)]
    missing = subprocess.run([sys.executable, "-m", "flows.cli", "logs", "validate", "s3://no-such-bucket/logs/",
                              "-w", str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert missing.returncode == 2 and "s3://no-such-bucket/logs/ matches no objects" in missing.stderr
    for text in (done.output, missing.stdout + missing.stderr, quarantine.read_text()):
        assert SECRET not in text
