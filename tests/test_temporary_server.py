"""`flywheel retrain` without a Prefect server starts a temporary one: after `kill -9` of the command
nothing of it may keep running, and the next run must start normally. Real processes, real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")]


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), {pid}
    while frontier:
        children = {int(p.name) for p in Path("/proc").iterdir()
                    if p.name.isdigit() and _parent_of(int(p.name)) in frontier}
        frontier = children - found
        found |= children
    return found


def _using(home: Path) -> set[int]:
    """Running processes whose environment names this PREFECT_HOME: the command and any server it started."""
    marker = f"PREFECT_HOME={home}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0") and _running(int(entry.name)):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _retrain(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # the same database for both runs
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a busy 2-core machine starts it slowly
    log = (tmp_path / f"retrain-{len(list(tmp_path.glob('retrain-*')))}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "retrain", "--window", "2026-Q1",
                             "-w", str(tmp_path / "ws"), *args], cwd=REPO_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:.0f} s for {what}"  # a hang guard, not a speed limit
        time.sleep(0.2)


def test_kill_9_of_retrain_leaves_no_server_behind_and_the_next_run_starts(tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    first = _retrain(tmp_path)
    log = tmp_path / "retrain-0.log"
    try:
        # The flow is running (on the temporary server) once Prefect logs the flow run's start.
        _wait_for(lambda: "Beginning flow run" in log.read_text(errors="replace") or first.poll() is not None,
                  600, "the flow to start")
        assert first.poll() is None, log.read_text(errors="replace")[-3000:]
        assert _descendants(first.pid), "the command started no server process"
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        _wait_for(lambda: not _using(home), 30, "the server to end with its parent")
    finally:
        for pid in _using(home):  # what today's code leaves behind, so that the test run does not keep it
            os.kill(pid, signal.SIGKILL)

    config = tmp_path / "fast-fail.yaml"  # the next run: a flow that fails at its first stage
    config.write_text(f"model:\n  base: {tmp_path / 'no-such-model'}\n", encoding="utf-8")
    second = _retrain(tmp_path, "--config", str(config))
    try:
        second.wait(timeout=600)
    finally:
        if second.poll() is None:
            second.kill()
    said = (tmp_path / "retrain-1.log").read_text(errors="replace")
    assert "Beginning flow run" in said and "no-such-model" in said, said[-3000:]
    assert not _using(home)  # its server stopped with it
