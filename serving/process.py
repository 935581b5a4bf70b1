"""`flywheel serve` as a child process on loopback: a free port for it, waiting until it is ready, and
stopping it gracefully.

Shared by whatever starts a server as a process and talks HTTP to it: flows/live.py (the demo's live
traffic), the tests (tests/conftest.py) and benchmarks/serving_load.py.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, *, every_s: float = 0.3) -> bool:
    """True once GET `url`/readyz answers 200 (the model is loaded and routing resolved); False when the
    process exits first or `timeout_s` passes. The caller stops the process and says why."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:  # not listening yet, or 503 (not ready): HTTPError is an OSError
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(every_s)


def stop_gracefully(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """SIGTERM (the server's graceful stop: requests in flight and every queued log record are
    finished) and wait up to `timeout_s`; kill it if it hangs. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
