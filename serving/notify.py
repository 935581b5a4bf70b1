"""Tell a running model server what changed: the registry moved (POST <serving.url>/admin/reload), or the
canary ramp set a new canary share (POST <serving.url>/admin/canary-share).

`flywheel promote | approve | reject | rollback` and their flows call `reload_server` after a successful
alias move when serving.url is set, so the swap happens within the request instead of at the next
poll. It never raises: the registry is the source of truth and the server polls it anyway, so a server
that is down or refuses is reported, not fatal.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Callable

from tasks.config import Settings

TIMEOUT_S = 30.0  # a reload loads the new adapter before it answers


class ServerRefused(RuntimeError):
    """The model server could not be reached, or it refused the change."""


def _admin_request(settings: Settings, path: str, body: dict[str, Any]) -> tuple[str, urllib.request.Request]:
    target = settings.serving.url.rstrip("/") + path
    headers = {"Content-Type": "application/json"}
    token = os.environ.get(settings.serving.admin_token_env)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return target, urllib.request.Request(target, data=json.dumps(body).encode(), headers=headers, method="POST")


def set_canary_share(settings: Settings, share: float, canary: str | None) -> dict[str, Any]:
    """Route `share` of the users to the canary `canary` (a version; None: whichever is served, for share 0).
    Raises ServerRefused: the ramp must not go on believing a share the server does not apply."""
    if not settings.serving.url:
        raise ServerRefused("serving.url is not set: no model server to split traffic on")
    body: dict[str, Any] = {"share": share, **({"canary": str(canary)} if canary else {})}
    target, request = _admin_request(settings, "/admin/canary-share", body)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        detail = err.read()[:300].decode(errors="replace")
        raise ServerRefused(f"{target}: HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ServerRefused(f"{target}: {type(err).__name__}: {getattr(err, 'reason', err)}") from None


def reload_server(settings: Settings) -> dict[str, Any] | None:
    """None when serving.url is not set; else {"url", "ok", and the server's answer or "error"}."""
    if not settings.serving.url:
        return None
    target, request = _admin_request(settings, "/admin/reload", {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        detail = err.read()[:300].decode(errors="replace")
        return {"url": target, "ok": False, "error": f"HTTP {err.code}: {detail}"}
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return {"url": target, "ok": False, "error": f"{type(reason).__name__}: {reason} (the server follows the "
                                                      "registry by polling anyway)"}
    return {"url": target, "ok": not answer.get("errors"), **answer}


def describe(reloaded: dict[str, Any] | None) -> str | None:
    """One line for people about a reload_server result (None when there was nothing to tell)."""
    if reloaded is None:
        return None
    if not reloaded["ok"]:
        problem = reloaded.get("error") or "; ".join(f"{a}: {why}" for a, why in reloaded.get("errors", {}).items())
        return f"model server at {reloaded['url']}: not reloaded: {problem}"
    routes = ", ".join(f"{alias} {version}" for alias, version in reloaded.get("routes", {}).items())
    return f"model server reloaded: {routes}"


def tell_server(settings: Settings, say: Callable[[str], Any] = print) -> dict[str, Any] | None:
    """`reload_server`, saying what happened in one line; None (and nothing said) without serving.url."""
    reloaded = reload_server(settings)
    if reloaded is not None:
        say(describe(reloaded))
    return reloaded
