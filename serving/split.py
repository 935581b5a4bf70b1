"""The canary share: which fraction of users the canary serves, kept in the workspace so that a restarted
server keeps it (DESIGN.md section 15).

The share belongs to one canary version: it is stored with the version it was set for, and a canary alias
that moves to another version starts at share 0 (a new canary gets no traffic until its own ramp sets
some). No canary alias: everything goes to the champion, whatever the share says. Which users the share
covers is `tasks.abtest.assign` (keyed user hash below the share, salted by the canary's version), the
same function the A/B analysis and its calibration use.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.files import atomic_write_text

SHARE_FILE = "canary-share.json"


class CanarySplit:
    """The persisted share (thread-safe): {"share", "canary", "set_at"} in `<workspace>/serving/canary-share.json`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"share": 0.0, "canary": None, "set_at": None}
        if self.path.is_file():
            try:
                state = json.loads(self.path.read_text(encoding="utf-8"))
                share = float(state["share"])
                if not 0.0 <= share <= 1.0:
                    raise ValueError(f"share {share} outside [0, 1]")
                self._state = {"share": share, "canary": state.get("canary"), "set_at": state.get("set_at")}
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{self.path}: not a canary share file ({err}); delete it to start at share 0, "
                                 "or set the share again through POST /admin/canary-share") from None

    def share_for(self, canary: str | None) -> float:
        """The share the canary `canary` (a model version such as "v3") gets: 0 for any other version."""
        with self._lock:
            return self._applies(canary)

    def state(self, canary: str | None) -> dict[str, Any]:
        """What /readyz and GET /admin/canary-share show: the stored share, whom it is for, and what applies now."""
        with self._lock:
            return {**self._state, "effective": self._applies(canary), "current_canary": canary}

    def _applies(self, canary: str | None) -> float:
        return self._state["share"] if canary is not None and canary == self._state["canary"] else 0.0

    def set(self, share: float, canary: str) -> dict[str, Any]:
        """Store `share` for the canary version `canary`, on disk before it applies."""
        if isinstance(share, bool) or not isinstance(share, (int, float)) or math.isnan(share) or not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be a number in [0, 1], got {share!r}")
        state = {"share": float(share), "canary": canary, "set_at": datetime.now(timezone.utc).isoformat()}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(state) + "\n")
            self._state = state
        return dict(state)
