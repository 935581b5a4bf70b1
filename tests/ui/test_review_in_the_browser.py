"""The reviewer's and the engineer's path through the Prefect V2 UI in a real browser (Debian's Chromium
driven by Playwright), against the stack `flywheel stack up` starts (flows/local_stack.py) on a tiny
workspace: start a Custom run of `quarterly-retraining` with a window (a malformed window is refused by
the form first), wait for it to complete, run `canary-review`, open its Resume dialog, see the summary and
the form on the first screen, have a blank reviewer refused by the form, approve, and find the champion
moved and the reviewer named in the audit. Screenshots of each step go to the test's tmp folder.

Run: `bash .ci/ui` (installs the `ui` extra; needs `apt-get install -y chromium`). Marked `ui`, so the
default `pytest` run (and .ci/run) leaves it out.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import yaml

from tasks.config import load_settings
from tasks.registry import Registry
from tasks.simulate import simulate

pytestmark = [pytest.mark.ui, pytest.mark.slow]

CHROMIUM = os.environ.get("FLYWHEEL_CHROMIUM", "/usr/bin/chromium")
# Offline, headless and quiet: no GPU, no QUIC, no first-run, update or sync traffic.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1440, "height": 1000}
RUN_TIMEOUT_MS = 900_000  # a retraining cycle on the tiny base, on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ramp_runs(api: str, timeout_s: float = 120) -> list[dict]:
    """Flow runs of the canary-ramp deployment (its trigger fires on flywheel.canary.approved)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        runs = httpx.post(f"{api}/flow_runs/filter",
                          json={"deployments": {"name": {"any_": ["canary-ramp"]}}}, timeout=30).json()
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(2)


def tiny_workspace(root: Path) -> Path:
    """Three simulated weeks of logs and a config for a minutes-long cycle (tiny base model, a few
    training steps, floors the tiny model can pass so approval promotes)."""
    workspace = root / "ws"
    workspace.mkdir()
    config = workspace / "config.yaml"
    config.write_text(yaml.safe_dump({
        "paths": {"workspace": str(workspace)},
        "simulate": {"weeks": 3, "launch_week": 2, "records_per_week": 300, "seed": 5},
        "pii": {"require_key": False, "processes": 1},
        "annotation": {"simulate": True, "simulated_accuracy": 0.97},
        "model": {"bootstrap_size": "test", "max_new_tokens": 24},
        "train": {"max_steps": 6, "batch_size": 8, "save_steps": 3, "early_stopping_patience": 0},
        "evaluate": {"bootstrap_samples": 100, "suites": ["regression", "new_cases"],
                     "gates": {"regression": {"behaviour": {"floor": 0.0, "max_drop": 0.05}}}},
    }), encoding="utf-8")
    settings = load_settings(config)
    simulate(settings.simulate, workspace, data_dir=settings.paths.data_dir)
    return config


def test_an_engineer_starts_a_cycle_and_a_reviewer_approves_it_in_the_browser(tmp_path: Path) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (or set FLYWHEEL_CHROMIUM)")
    from playwright.sync_api import expect, sync_playwright

    from flows.local_stack import start_local_stack, stop_local_stack

    config = tiny_workspace(tmp_path)
    workspace = config.parent
    shots = tmp_path / "screenshots"
    shots.mkdir()
    stack = start_local_stack(workspace, port=free_port(), mlflow_port=free_port(), config=config, serve_port=None,
                              deployments=["quarterly-retraining", "canary-review", "canary-ramp"], timeout_s=400,
                              extra_env={"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"})
    ui = f"{stack['prefect_ui']}/v2"
    registry = Registry(load_settings(Path(stack["env"]["FLYWHEEL_CONFIG"])))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(90_000)

            def shot(name: str) -> None:
                page.screenshot(path=str(shots / f"{len(list(shots.iterdir())) + 1:02d}-{name}.png"))

            def custom_run_form() -> None:
                page.goto(f"{ui}/deployments")
                page.get_by_role("link", name="quarterly-retraining").first.click()
                page.get_by_role("button", name="Run").first.click()
                page.get_by_role("menuitem", name="Custom run").click()

            # 1. The engineer's form: window, config and workspace are text boxes; a bad window is refused.
            custom_run_form()
            window = page.get_by_label("window (Optional)")
            expect(window).to_be_editable()
            expect(page.get_by_label("config (Optional)")).to_be_editable()
            expect(page.get_by_text("auto_approve")).to_have_count(0)
            window.fill("2026-13")
            page.get_by_role("button", name="Submit").click()
            expect(page.get_by_text("Validation failed for field 'window'")).to_be_visible()
            shot("bad-window-refused")
            # The form keeps the refused answer's state; the engineer starts over in a fresh tab.
            page.context.close()
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(90_000)

            # 2. A Custom run with a good window, followed to Completed.
            custom_run_form()
            page.get_by_label("window (Optional)").fill("2026-Q1")
            shot("custom-run")
            page.get_by_role("button", name="Submit").click()
            page.get_by_role("link", name="View run").click()
            page.wait_for_url("**/runs/flow-run/**")
            expect(page.get_by_text("Completed", exact=True).first).to_be_visible(timeout=RUN_TIMEOUT_MS)
            shot("cycle-completed")
            version = registry.status()["canary"]
            assert version and registry.status()["champion"] is None

            # 3. The review: a Quick run of canary-review suspends waiting for the reviewer; Resume is
            # in the run's menu (top right).
            page.goto(f"{ui}/deployments")
            page.get_by_role("link", name="canary-review").first.click()
            page.get_by_role("button", name="Run").first.click()
            page.get_by_role("menuitem", name="Quick run").click()
            page.get_by_role("link", name="View run").click()
            page.wait_for_url("**/runs/flow-run/**")
            expect(page.get_by_text("Suspended", exact=True).first).to_be_visible(timeout=300_000)
            page.get_by_role("button", name="Open menu").first.click()
            page.get_by_role("menuitem", name="Resume").click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("no live traffic yet")).to_be_visible()
            shot("resume-dialog")
            # The summary decides; the whole form is on the first screen, the full report one click away.
            expect(dialog.get_by_text(f"v{version} of flywheel-adapter: gate PASSED")).to_be_visible()
            expect(dialog.get_by_text(f"Approve = ramp v{version} on live traffic")).to_be_visible()
            expect(dialog.get_by_role("link", name="full report")).to_have_attribute(
                "href", re.compile(r"/v2/artifacts/artifact/[0-9a-f-]+$"))
            expect(dialog.get_by_text("Full evaluation report")).to_have_count(0)
            for field in ("Reviewer", "Comment"):
                expect(dialog.get_by_label(field)).to_be_in_viewport(ratio=1.0)  # nothing to scroll past
            expect(dialog.get_by_text("Select", exact=True)).to_be_in_viewport(ratio=1.0)

            # 4. A blank reviewer is refused by the form; the dialog stays and nothing is recorded.
            dialog.get_by_text("Select", exact=True).click()
            page.get_by_role("option", name="approve").click()
            dialog.get_by_label("Comment").fill("fixes the new products")
            dialog.get_by_label("Reviewer").fill("   ")
            dialog.get_by_role("button", name="Resume").click()
            expect(page.get_by_text("Validation failed for field 'reviewer'")).to_be_visible()
            expect(dialog).to_be_visible()
            shot("blank-reviewer-refused")
            assert registry.status()["versions"][-1]["reviews"] == []

            # 5. A real answer approves; the run completes, and the approval starts the canary ramp (which
            # promotes only on live traffic: this stack runs no model server, so the champion stays).
            dialog.get_by_label("Reviewer").fill("alice")
            dialog.get_by_role("button", name="Resume").click()
            expect(dialog).to_be_hidden()
            expect(page.get_by_text("Completed", exact=True).first).to_be_visible(timeout=300_000)
            shot("review-completed")
            browser.close()
        status = registry.status()  # through the stack's MLflow server, as the flows saw it
        assert status["champion"] is None and status["canary"] == version
        assert [(e["action"], e["actor"]) for e in registry.audit()][-1] == ("approve", "alice")
        assert ramp_runs(stack["prefect_api"]), "the approval's event started no canary-ramp run"
    finally:
        stop_local_stack(workspace)
    assert len(list(shots.iterdir())) >= 6
    keep = os.environ.get("FLYWHEEL_UI_SCREENSHOTS")  # e.g. .ci/ui keeps them for a person to look at
    if keep:
        shutil.copytree(shots, Path(keep) / f"run-{int(time.time())}", dirs_exist_ok=True)
