"""Run the model server: `flywheel serve` calls `serve`, which runs the app on uvicorn until stopped.

uvicorn owns the signals: on SIGTERM or Ctrl-C it stops accepting connections, lets the requests in
flight finish, then runs the app's shutdown (serving/app.py), which answers what the batcher still holds
and writes every queued log record before the process exits. One process per server: the log files
and the loaded adapters belong to it (run several servers behind a balancer to scale out, each with
its own serving.log_dir).
"""

from __future__ import annotations

import logging
import os
import sys

from tasks.base_model import ModelError, resolve_base_model
from tasks.config import Settings

from serving.app import create_app
from serving.security import admin_mode


def check_startable(settings: Settings, host: str) -> list[str]:
    """What stops the server from starting (a missing base model) as ModelError; returns the warnings a
    start would print (admin routes off on an exposed address)."""
    if settings.serving.backend == "local":
        resolve_base_model(settings)
    if admin_mode(host, os.environ.get(settings.serving.admin_token_env)) == "disabled":
        return [f"admin endpoints are off: {host} is not a loopback address and ${settings.serving.admin_token_env} "
                "is not set (set it to use /admin/reload and the LoRA endpoints; the registry is still followed)"]
    return []


def serve(settings: Settings, *, host: str, port: int, access_log: bool = True) -> None:
    """Start the server and block until it is stopped. Raises ModelError before binding when the
    model cannot be served."""
    import uvicorn

    for warning in check_startable(settings, host):
        print(f"warning: {warning}", file=sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    served_log = logging.getLogger("flywheel.serving")
    served_log.addHandler(handler)
    served_log.setLevel(logging.INFO)
    served_log.propagate = False
    config = uvicorn.Config(create_app(settings, host=host), host=host, port=port, lifespan="on",
                            access_log=access_log, log_level="info")
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise ModelError("the server did not start (see the messages above)")
