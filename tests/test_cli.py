"""The `flywheel` command line as a user meets it: --help everywhere, the --json keys of DESIGN.md
section 13 on the last stdout line, and the exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.config import REPO_ROOT

runner = CliRunner()


def run(*args: str) -> tuple[int, dict | None, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = result.stdout.strip().splitlines()
    payload = json.loads(lines[-1]) if "--json" in args and lines else None
    return result.exit_code, payload, result.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("cli")
    code, payload, _ = run("simulate", "--workspace", str(ws), "--weeks", "2", "--records-per-week", "400",
                           "--seed", "1", "--json")
    assert code == 0
    assert {"records", "files", "ground_truth"} <= payload.keys()
    assert payload["records"] == 800
    return ws


COMMANDS = [
    ["--help"], ["config", "show", "--help"], ["logs", "validate", "--help"], ["logs", "stats", "--help"],
    ["simulate", "--help"], ["signals", "--help"], ["drift", "--help"], ["monitor", "--help"],
    ["extract", "--help"], ["mask", "--help"], ["pii-eval", "--help"], ["annotate", "export", "--help"],
    ["annotate", "import", "--help"], ["agreement", "--help"], ["model", "bootstrap", "--help"],
    ["train", "--help"], ["evaluate", "--help"], ["retrain", "--help"], ["registry", "status", "--help"],
    ["approve", "--help"], ["reject", "--help"], ["promote", "--help"], ["rollback", "--help"],
    ["cost", "--help"], ["stack", "up", "--help"], ["demo", "--help"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_explains_itself(args: list[str]) -> None:
    code, _, out = run(*args)
    assert code == 0
    assert "Usage: " in out and "--help" in out


def test_logs_validate_counts_and_strict_says_no(workspace: Path) -> None:
    bad = workspace / "extra" / "bad.jsonl"
    bad.parent.mkdir(exist_ok=True)
    good = next((workspace / "logs").glob("*.jsonl")).read_text(encoding="utf-8").splitlines()[0]
    bad.write_text(good + '\n{"request_id": "x"}\nnot json\n', encoding="utf-8")
    code, payload, _ = run("logs", "validate", str(bad), "--workspace", str(workspace), "--json")
    assert code == 0
    assert payload["read"] == 3 and payload["accepted"] == 1 and payload["quarantined"] == 2
    assert payload["reasons"] == {"missing_field": 1, "not_json": 1}
    strict, _, _ = run("logs", "validate", str(bad), "--workspace", str(workspace), "--strict")
    assert strict == 1


def test_logs_validate_says_no_when_every_row_was_quarantined(workspace: Path, tmp_path: Path) -> None:
    """A wrong preset quarantines everything: that must not look like success."""
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"id": "c1", "created": 1767600000, "model": "m", "user": "u1",
                                "messages": [{"role": "user", "content": "Hi"}],
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}}]}) + "\n",
                    encoding="utf-8")
    result = runner.invoke(app, ["logs", "validate", str(chat), "--workspace", str(workspace), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout.strip().splitlines()[-1])["accepted"] == 0
    assert "logs.preset" in result.stderr and "openai_chat" in result.stderr
    config = tmp_path / "chat.yaml"
    config.write_text("logs:\n  preset: openai_chat\n", encoding="utf-8")
    fixed, payload, _ = run("logs", "validate", str(chat), "--config", str(config), "--workspace", str(workspace), "--json")
    assert fixed == 0 and payload["accepted"] == 1


def test_signals_json_keys(workspace: Path) -> None:
    code, payload, _ = run("signals", "--workspace", str(workspace), "--json")
    assert code == 0
    for key in ("records", "refusal_count", "refusal_rate", "refusal_rate_ci", "reask_count", "reask_rate",
                "thumbs_up", "thumbs_down", "thumbs_down_rate", "feedback_coverage"):
        assert key in payload
    assert payload["records"] == 800


def test_drift_between_two_prompt_files(workspace: Path, tmp_path: Path) -> None:
    same = tmp_path / "a.txt"
    same.write_text("\n".join(f"how do I return item {i}" for i in range(600)), encoding="utf-8")
    code, payload, _ = run("drift", "--reference", str(same), "--current", str(same), "--json")
    assert code == 0
    assert {"kl", "js", "psi", "null_kl", "band", "alert", "n_reference", "n_current", "top_terms"} <= payload.keys()
    assert payload["band"] == "same" and payload["alert"] is False
    other = tmp_path / "b.txt"
    other.write_text("\n".join(f"is the helix fold phone waterproof {i}" for i in range(600)), encoding="utf-8")
    alert, payload, _ = run("drift", "--reference", str(same), "--current", str(other), "--json")
    assert alert == 1 and payload["alert"] is True


def test_drift_reads_openai_chat_logs_as_logs(workspace: Path, tmp_path: Path) -> None:
    """An openai_chat JSONL log is recognised as logs (its prompts are the last user messages), its
    users become the null baseline's groups, whatever logs.preset says."""
    def chat_log(path: Path, topic: str) -> Path:
        rows = [{"id": f"{topic}-{i}", "created": 1767600000 + i, "model": "m", "user": f"u{i % 40}",
                 "messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": f"{topic} question number {i}"}],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}}]}
                for i in range(600)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    reference = chat_log(tmp_path / "ref.jsonl", "how do I return my order")
    code, payload, _ = run("drift", "--reference", str(reference), "--current", str(reference),
                           "--workspace", str(workspace), "--json")
    assert code == 0
    assert payload["n_reference"] == 600 and payload["band"] == "same"
    assert payload["null_resampled_by"] == "session" and payload["null_groups"] == 40
    shifted = chat_log(tmp_path / "cur.jsonl", "is the helix fold phone waterproof")
    alert, payload, _ = run("drift", "--reference", str(reference), "--current", str(shifted),
                            "--workspace", str(workspace), "--json")
    assert alert == 1 and payload["alert"] is True


def test_drift_on_logs_nobody_can_map_is_bad_input(workspace: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"question": "hi", "answer": "hello"}\n', encoding="utf-8")
    result = runner.invoke(app, ["drift", "--reference", str(odd), "--current", str(odd), "--workspace", str(workspace)])
    assert result.exit_code != 0
    assert "logs.preset" in str(result.exception) and "logs.columns" in str(result.exception)


def test_agreement_blocks_with_exit_1(tmp_path: Path) -> None:
    ratings = tmp_path / "ratings.csv"
    rows = ["item,annotator,label"] + [f"i{i},{who},{'acceptable' if (i + k) % 2 else 'hallucination'}"
                                        for i in range(20) for k, who in enumerate(["ann1", "ann2"])]
    ratings.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, payload, _ = run("agreement", "--annotations", str(ratings), "--json")
    assert code == 1
    assert payload["decision"] == "block" and payload["n_items"] == 20 and payload["cohen_kappa"] is not None


def test_cost_reproduces_the_worked_example() -> None:
    code, payload, _ = run("cost", "--config", str(REPO_ROOT / "configs" / "cost_example.yaml"),
                           "--workspace", "/nonexistent-flywheel-ws", "--json")
    assert code == 0
    assert round(payload["self_hosted_monthly"], 2) == 316.67
    assert {"api_monthly", "yearly_savings", "roi_1y"} <= payload.keys()


def test_bad_input_is_exit_2_with_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "flows.cli", "logs", "stats", str(tmp_path / "missing*.jsonl")],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "missing*.jsonl" in done.stderr
    assert "Traceback" not in done.stderr


def test_demo_refuses_a_folder_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    done = subprocess.run([sys.executable, "-m", "flows.cli", "demo", "--workspace", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and str(tmp_path) in done.stderr and "--workspace" in done.stderr
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_retrain_refuses_a_reversed_window_before_doing_anything(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "flows.cli", "retrain", "--window", "2026-04-20..2026-01-05",
                           "-w", str(tmp_path / "ws"), "--json"], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, timeout=600)
    assert done.returncode == 2
    assert "2026-04-20..2026-01-05" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "ws").exists()  # no cycle folder, no MLflow store, nothing
