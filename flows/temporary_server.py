"""A temporary Prefect server that dies with the process that started it.

Without PREFECT_API_URL, Prefect 3.8.8 runs a flow against a temporary server of its own
(`prefect.server.api.server.SubprocessASGIServer`: `python -m uvicorn ... create_app` started with
Popen and stopped by an atexit hook). A SIGKILL skips atexit, so that server outlives the command,
reparented to init (one was seen alive 6.5 minutes after `kill -9` of `flywheel retrain`). The
commands that run flows (`retrain`, `monitor`, `demo`) start the same application here instead:
`create_app(ephemeral=True)` (no UI, no background services, the same database), served by this
module in a child process whose watchdog ends it within a second of its parent's death, however the
parent died. Prefect is pointed at it (PREFECT_API_URL) for the duration, so it starts none itself.
A server named by PREFECT_API_URL (a profile, the environment, `flywheel stack up`) is used as is.

Usage:
    with temporary_prefect_server():
        quarterly_retraining(...)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STARTUP_S = 60.0  # at least: the server imports for ~10 s on a busy 2-core machine
_WATCH_S = 0.5  # how often the server checks that its parent is alive


class ServerError(RuntimeError):
    """The temporary server did not come up."""


@contextmanager
def temporary_prefect_server() -> Iterator[str | None]:
    """Yield the API URL of a temporary server started for this block (None when PREFECT_API_URL
    already names one). Logs and events still queued are sent before the server stops."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  get_current_settings, temporary_settings)

    if PREFECT_API_URL.value():
        yield None
        return
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    # The child imports this very module, from wherever the parent imported it.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    timeout = max(_STARTUP_S, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    process, url = _start(env, timeout)
    try:
        with temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}):
            try:
                yield f"{url}/api"
            finally:
                _send_what_is_queued()
    finally:
        _stop(process)


def _start(env: dict[str, str], timeout: float) -> tuple[subprocess.Popen, str]:
    """Start the server on a free port and wait until /api/health answers. A server that exits at
    once (its port taken between choosing and binding it) is tried again on another port; what it
    printed is on the terminal (stderr is shared, as Prefect's own temporary server does)."""
    for _ in range(3):
        port = _free_port()
        # Its own session: a Ctrl-C meant for the command must not stop the server while the flow is
        # still reporting to it (the command stops it on the way out; the watchdog, if the command dies).
        process = subprocess.Popen([sys.executable, "-m", "flows.temporary_server", str(port), str(os.getpid())],
                                   env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if _healthy(url):
                return process, url
            time.sleep(0.2)
        if process.poll() is None:
            _stop(process)
            raise ServerError(f"the temporary Prefect server did not answer within {timeout:.0f} s; "
                              "set PREFECT_API_URL to a running server (e.g. `flywheel stack up`)")
    raise ServerError(f"the temporary Prefect server exited at start three times (last exit code "
                      f"{process.returncode}); see its messages above")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _send_what_is_queued() -> None:
    """Prefect sends run logs and events from background workers: let them finish while the server is up."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except RuntimeError:  # never started
            pass


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------- the server process


def _exit_with_parent(parent: int) -> None:
    """End this process once `parent` is gone: it is then re-parented, so getppid() changes. Polling
    works on every POSIX system, after any kind of parent death, and ties the server to the parent
    process (Linux's PR_SET_PDEATHSIG would tie it to the thread that started it)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_S)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
        time.sleep(10)
        os._exit(1)  # it did not

    if os.getppid() != parent:  # the parent died before we got here
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _serve(port: int, parent: int) -> None:
    _exit_with_parent(parent)  # first: the imports below take seconds
    import uvicorn
    from prefect.server.api.server import create_app

    uvicorn.run(create_app(ephemeral=True, final=True), host="127.0.0.1", port=port, log_level="error",
                lifespan="on")


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
