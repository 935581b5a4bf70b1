"""The canary traffic split in a real `flywheel serve` process: users go to the canary when their keyed hash
(tasks.abtest.assign, the A/B analysis's own function) falls below the share; sticky per user, monotone
as the share rises, per request without a user id; the share is admin-guarded, belongs to one canary
version, survives a restart, and is ignored once the canary alias is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.abtest import assign, assignment_salt
from tasks.config import load_settings
from test_serving_registry import Registered, random_adapter

TOKEN = "split-admin"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
USERS = [f"user-{n}" for n in range(60)]


def variants(server, users) -> dict[str, str]:
    out = {}
    for user in users:
        status, body, _ = server.call("POST", "/generate", {"prompt": "Where is my order?", "user_id": user, "max_tokens": 1})
        assert status == 200, body
        out[user] = body["variant"]
    return out


@pytest.mark.slow
def test_split_is_sticky_monotone_guarded_and_persisted(start_server, tiny_base_model, template_db, tmp_path) -> None:
    workspace = tmp_path / "ws"
    store = Registered(workspace, template_db, "split", tiny_base_model)
    champion = store.add(random_adapter(tiny_base_model, tmp_path / "a", 1))
    store.registry.promote(champion)
    canary = store.add(random_adapter(tiny_base_model, tmp_path / "b", 2))
    values = {"paths": {"workspace": str(workspace)}, "registry": {"model_name": "split"},
              "model": {"base": str(tiny_base_model), "max_new_tokens": 2, "cpu_threads": 1},
              "serving": {"poll_s": 0.2, "capture_flush_s": 0.2}}
    server = start_server(values, name="split", env={"FLYWHEEL_ADMIN_TOKEN": TOKEN})
    assert server.call("GET", "/readyz")[1]["canary_share"] == 0.0
    assert set(variants(server, USERS[:10]).values()) == {"champion"}  # a registered canary gets no traffic by itself

    # admin-guarded, bound to the canary that is served
    assert server.call("POST", "/admin/canary-share", {"share": 0.3})[0] == 401
    assert server.call("POST", "/admin/canary-share", {"share": 1.5}, headers=ADMIN)[0] == 422
    status, body, _ = server.call("POST", "/admin/canary-share", {"share": 0.3, "canary": "999"}, headers=ADMIN)
    assert status == 409 and f"v{canary}" in body["error"]["message"]
    status, body, _ = server.call("POST", "/admin/canary-share", {"share": 0.3, "canary": canary}, headers=ADMIN)
    assert status == 200 and body["effective"] == 0.3 and body["canary"] == f"v{canary}", body

    salt = assignment_salt(load_settings(None).abtest, f"v{canary}")
    low = variants(server, USERS)
    assert low == {u: assign(u, 0.3, salt) for u in USERS}  # the analysis's assignment function, one place
    assert 5 <= sum(v == "canary" for v in low.values()) <= 30
    assert variants(server, USERS) == low  # sticky
    server.call("POST", "/admin/canary-share", {"share": 0.6, "canary": canary}, headers=ADMIN)
    high = variants(server, USERS)
    assert all(high[u] == "canary" for u in USERS if low[u] == "canary")  # raising the share never moves back
    assert sum(v == "canary" for v in high.values()) > sum(v == "canary" for v in low.values())
    anonymous = {server.call("POST", "/generate", {"prompt": "Hi", "max_tokens": 1})[1]["variant"] for _ in range(20)}
    assert anonymous == {"champion", "canary"}  # no user id: assigned per request
    status, state, _ = server.call("GET", "/admin/canary-share", headers=ADMIN)
    assert status == 200 and (state["share"], state["canary"], state["effective"]) == (0.6, f"v{canary}", 0.6)

    # a restarted server keeps the share
    server.stop()
    again = start_server(values, name="split-again", env={"FLYWHEEL_ADMIN_TOKEN": TOKEN})
    assert again.call("GET", "/readyz")[1]["canary_share"] == 0.6
    assert variants(again, USERS) == high

    # no canary alias: everything to the champion, the share is ignored
    store.registry.review(canary, decision="reject", reviewer="ana", comment="enough")
    again.call("POST", "/admin/reload", {}, headers=ADMIN)
    assert again.call("GET", "/readyz")[1]["canary_share"] == 0.0
    assert set(variants(again, USERS).values()) == {"champion"}
    assert again.call("POST", "/admin/canary-share", {"share": 0.1}, headers=ADMIN)[0] == 409


def test_a_damaged_share_file_stops_the_server_with_the_fix(tmp_path: Path) -> None:
    from serving.split import CanarySplit

    path = tmp_path / "canary-share.json"
    path.write_text('{"share": 7}', encoding="utf-8")
    with pytest.raises(ValueError, match="delete it to start at share 0"):
        CanarySplit(path)
