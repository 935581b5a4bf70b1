"""Following the registry: serve what the `champion` and `canary` aliases name, and swap when they move.

The follower reads the aliases every serving.poll_s (through MLflow's REST API when registry.tracking_uri
is a tracking server: tasks/served.py) and at once on POST /admin/reload, which `flywheel promote |
approve | reject | rollback` and their flows call when serving.url is set. For each alias that moved:

1. the new version's adapter is loaded beside the old one on the shared base, in this thread while
   batches go on (tasks/served.py finds its files; a version trained on another base is refused
   before anything is loaded);
2. the router's alias table is replaced in one step (serving/router.py), so new requests go to the new
   adapter while requests in flight finish on the old one;
3. the old adapter is unloaded once its last request is done.

A load that fails (missing files, an adapter for another base, corrupt weights) leaves that alias
routed as it was; the failure is counted (flywheel_adapter_swaps_total{result="failed"}), logged,
shown by /readyz and returned by /admin/reload, and the version is not tried again until the alias
moves or a reload asks for it. No champion alias means the bare base serves, which is where the first
champion's rollback lands. A registry that cannot be read keeps the current routing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from tasks.base_model import ModelError
from tasks.config import Settings
from tasks.registry import Registry
from tasks.served import ALIASES, adapter_name, served_adapter, served_versions

from serving.metrics import Metrics
from serving.router import CHAMPION, Route, Router

log = logging.getLogger("flywheel.serving")


class RegistryFollower:
    """Keeps the router's champion and canary routes equal to the registry's aliases."""

    def __init__(self, settings: Settings, router: Router, backend: Any, metrics: Metrics) -> None:
        self.settings = settings
        self.router = router
        self.backend = backend
        self.metrics = metrics
        self.poll_s = settings.serving.poll_s
        self.synced = False  # routing resolved from the registry at least once
        self.errors: dict[str, str] = {}  # alias -> why its wanted version is not served
        self.last_error: str | None = None  # the last registry read that failed
        self._failed: dict[str, str] = {}  # adapter name -> load error (not retried until asked)
        self._reload = False  # this sync was asked for (POST /admin/reload), not a poll
        self._adapters: dict[str, Any] = {}  # version -> ServedAdapter, resolved once
        self._registry: Registry | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="registry-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def sync(self, *, retry_failed: bool = False) -> dict[str, Any]:
        """Read the aliases and swap what moved. Returns {routes: {alias: model_version}, changed: [...],
        errors: {alias: why}}. `retry_failed` (a reload) tries versions that failed to load before again and,
        in front of vLLM, loads the routed adapters there again (a restarted vLLM has forgotten them)."""
        with self._lock:
            self._reload = retry_failed
            if retry_failed:
                self._failed.clear()
            try:
                if self._registry is None:
                    self._registry = Registry(self.settings)
                versions = served_versions(self._registry)
            except Exception as err:
                self.metrics.registry_errors.inc()
                message = f"the registry could not be read ({type(err).__name__}: {err}); routing is unchanged"
                if message != self.last_error:
                    log.warning("%s", message)
                self.last_error = message
                raise RegistryUnavailable(message) from None
            self.last_error = None
            current = self.router.routes()
            routes: dict[str, Route] = {}
            changed: list[str] = []
            errors: dict[str, str] = {}
            for alias in ALIASES:
                wanted = self._route_for(alias, versions[alias], current.get(alias), errors)
                if wanted is None:
                    continue
                routes[alias] = wanted
                if current.get(alias) != wanted:
                    changed.append(f"{alias}: {current[alias].model_version if alias in current else '-'} -> "
                                   f"{wanted.model_version}")
                    self.metrics.swaps.labels(alias, "ok").inc()
            for alias in set(current) - set(routes):
                changed.append(f"{alias}: {current[alias].model_version} -> -")
            for adapter in self.router.switch(routes):
                self.backend.unload(adapter)
            self.metrics.set_served({alias: route.model_version for alias, route in routes.items()})
            self.errors = errors
            self.synced = True
            for line in changed:
                log.info("routing %s", line)
            return {"routes": {alias: route.model_version for alias, route in routes.items()}, "changed": changed,
                    "errors": errors}

    def _route_for(self, alias: str, version: str | None, current: Route | None, errors: dict[str, str]) -> Route | None:
        """The route `alias` should have now; the current one when the wanted adapter cannot be loaded."""
        if version is None:  # no champion: the bare base serves routed traffic
            return Route(CHAMPION, None, self.router.base.model_version) if alias == CHAMPION else None
        name = adapter_name(version)
        if current is not None and current.adapter == name and not (self._reload and self.backend.kind == "vllm"):
            return current
        if name in self._failed:
            errors[alias] = self._failed[name]
            return current
        try:
            if not self.router.keep_if_loaded(name) or current is not None and current.adapter == name:
                self._load(version, name)
        except Exception as err:
            reason = f"{name} could not be loaded: {err}" if isinstance(err, ModelError) else \
                f"{name} could not be loaded: {type(err).__name__}: {err}"
            self._failed[name] = reason
            errors[alias] = reason
            self.metrics.swaps.labels(alias, "failed").inc()
            log.error("%s; %s keeps serving %s", reason, alias, current.model_version if current else "nothing")
            return current
        return Route(alias, name, name)

    def _load(self, version: str, name: str) -> None:
        adapter = self._adapters.get(version) or served_adapter(self._registry, version)
        self._adapters[version] = adapter  # a version's files never change: a rollback finds them at once
        ours = self.backend.base_digest
        if adapter.base_digest and ours and adapter.base_digest != ours:
            raise ModelError(f"it was trained on base {adapter.base_digest[:12]}, this server serves base {ours[:12]}")
        started = time.perf_counter()
        self.backend.load(name, adapter.path)
        self.router.loaded(name)
        log.info("loaded %s from %s in %.2f s", name, adapter.path, time.perf_counter() - started)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.sync()
            except RegistryUnavailable:
                pass  # counted and logged in sync; routing is kept
            except Exception:
                log.exception("following the registry failed; routing is unchanged")


class RegistryUnavailable(RuntimeError):
    """The registry could not be read: routing stays as it was."""
