"""Routing: which loaded model answers a request, and when an adapter may be unloaded.

A request names a model (`champion`, `canary`, `base`, a loaded adapter such as `v3`) or none; none (or
serving.model_name) is routed traffic, and `pick_variant` decides it: the canary when a canary alias is
served and `tasks.abtest.assign` puts the user below the canary share (serving/split.py), else the
champion. Every answer carries its `variant` so the A/B analysis can read it from the logs.

A swap is: the new adapter is loaded beside the old one (by the follower), then `switch` replaces the
alias table in one step under the lock, so each request sees the old routing or the new one, never a
mix. A request holds a lease on its adapter from `acquire` to `release`; an adapter no route or admin
load uses any more is retired and handed back for unloading once its last lease is released, so
requests in flight finish on the adapter they started with.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from tasks.abtest import assign

CHAMPION, CANARY, BASE = "champion", "canary", "base"


@dataclass(frozen=True)
class Route:
    """What answers: `adapter` None is the bare base. `model_version` is what the logs record ("v3",
    "base@<digest>"); `variant` what the A/B analysis groups by."""

    variant: str
    adapter: str | None
    model_version: str


class UnknownModel(LookupError):
    """The request named a model this server does not serve (answered 404 with the available ones)."""

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"model {name!r} is not served here; available: {', '.join(available)}")
        self.available = available


class NotReady(RuntimeError):
    """No champion could be loaded yet (answered 503)."""


class Router:
    """The alias table, the loaded adapters and their leases, behind one lock."""

    def __init__(self, base_version: str, model_name: str, *, split=None, salt=lambda canary: canary) -> None:
        """`split`: the persisted canary share (serving.split.CanarySplit; None: no canary traffic);
        `salt(canary_version)`: the assignment salt of that canary's experiment."""
        self.base = Route(BASE, None, base_version)
        self.model_name = model_name
        self.split = split
        self._salt = salt
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self._loaded: set[str] = set()
        self._pinned: set[str] = set()  # loaded through /v1/load_lora_adapter: kept until unloaded there
        self._retired: set[str] = set()  # loaded, used by nothing new, waiting for its leases to end
        self._leases: Counter[str] = Counter()

    # ------------------------------------------------------------------------------ requests

    def pick_variant(self, user_id: str) -> str:
        """The variant routed traffic of `user_id` goes to (call under the lock): the canary when one is
        served and the user's keyed hash falls below its share; sticky per user, monotone in the share."""
        canary = self._routes.get(CANARY)
        if canary is None or self.split is None:
            return CHAMPION
        share = self.split.share_for(canary.model_version)
        return assign(user_id, share, self._salt(canary.model_version)) if share > 0 else CHAMPION

    def canary_version(self) -> str | None:
        """The model version the canary alias routes to now ("v3"), None without one."""
        with self._lock:
            route = self._routes.get(CANARY)
            return route.model_version if route else None

    def acquire(self, model: str | None, user_id: str) -> Route:
        """The route for a request, leased until `release`. Raises UnknownModel or NotReady."""
        with self._lock:
            route = self._resolve(model, user_id)
            if route.adapter is not None:
                self._leases[route.adapter] += 1
            return route

    def release(self, route: Route) -> str | None:
        """End a lease; returns the adapter to unload when this was the last lease on a retired one."""
        if route.adapter is None:
            return None
        with self._lock:
            self._leases[route.adapter] -= 1
            if self._leases[route.adapter] <= 0:
                del self._leases[route.adapter]
                if route.adapter in self._retired:
                    self._retired.discard(route.adapter)
                    self._loaded.discard(route.adapter)
                    return route.adapter
        return None

    def available(self) -> list[str]:
        """The model names a request may send, routed name first."""
        with self._lock:
            return self._available()

    # ------------------------------------------------------------------------- the follower

    def routes(self) -> dict[str, Route]:
        with self._lock:
            return dict(self._routes)

    def keep_if_loaded(self, adapter: str) -> bool:
        """Is `adapter` loaded? A retired one that is wanted again comes back (it is not unloaded) instead
        of being unloaded and loaded anew."""
        with self._lock:
            self._retired.discard(adapter)
            return adapter in self._loaded

    def loaded(self, adapter: str, *, pinned: bool = False) -> None:
        """Record an adapter the backend has just loaded."""
        with self._lock:
            self._loaded.add(adapter)
            self._retired.discard(adapter)
            if pinned:
                self._pinned.add(adapter)

    def switch(self, routes: dict[str, Route]) -> list[str]:
        """Replace the alias table at once; returns the adapters to unload now (used by nothing and
        leased by no request). Adapters still leased are unloaded when their last lease ends."""
        with self._lock:
            self._routes = dict(routes)
            return self._retire_unused()

    def unpin(self, adapter: str) -> list[str]:
        """End an admin load. Raises LookupError if not loaded, ValueError if an alias routes to it."""
        with self._lock:
            if adapter not in self._loaded or adapter in self._retired:
                raise LookupError(f"no adapter named {adapter!r} is loaded")
            users = sorted(alias for alias, route in self._routes.items() if route.adapter == adapter)
            if users:
                raise ValueError(f"adapter {adapter!r} serves {', '.join(users)}: the registry decides when it goes")
            self._pinned.discard(adapter)
            return self._retire_unused()

    def _retire_unused(self) -> list[str]:
        used = {route.adapter for route in self._routes.values()} | self._pinned
        now = []
        for adapter in sorted(self._loaded - used):
            if self._leases.get(adapter):
                self._retired.add(adapter)
            else:
                self._loaded.discard(adapter)
                now.append(adapter)
        return now

    def _resolve(self, model: str | None, user_id: str) -> Route:
        name = (model or "").strip()
        if name in ("", self.model_name):
            name = self.pick_variant(user_id)
        if name == BASE:
            return self.base
        if name in (CHAMPION, CANARY):
            if name in self._routes:
                return self._routes[name]
            if name == CHAMPION:
                raise NotReady("the champion is not loaded yet (see /readyz)")
        adapter = f"v{name}" if name.isdigit() else name
        if adapter in self._loaded and adapter not in self._retired:
            return Route(adapter, adapter, adapter)
        raise UnknownModel(name, self._available())

    def _available(self) -> list[str]:
        names = [self.model_name, *self._routes, BASE] if CHAMPION in self._routes else [self.model_name, BASE]
        return list(dict.fromkeys(names + sorted(self._loaded - self._retired)))
