from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.config import REPO_ROOT, ConfigError, Settings, load_settings

DEFAULT_YAML = REPO_ROOT / "configs" / "default.yaml"


def _leaf_keys(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and not (prefix.startswith("evaluate.gates")):
        keys: set[str] = set()
        for key, value in node.items():
            keys |= _leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
        return keys
    return {prefix}


def test_default_yaml_spells_out_every_embedded_default() -> None:
    written = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    embedded = Settings().dump()
    assert _leaf_keys(written) == _leaf_keys(embedded), "configs/default.yaml and tasks/config.py disagree"
    assert load_settings(DEFAULT_YAML) == Settings()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_is_valid(name: str) -> None:
    load_settings(REPO_ROOT / "configs" / name)


def test_errors_name_the_file_the_key_path_and_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("logs:\n  max_record_bytes: -1\n  colums: {}\ntrain:\n  r: many\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    message = str(err.value)
    assert str(bad) in message
    assert "logs.max_record_bytes: Input should be greater than 0 (got -1)" in message
    assert "logs.colums: unknown key" in message
    assert "train.r:" in message and "'many'" in message


def test_cross_field_rules_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bands.yaml"
    bad.write_text("drift:\n  same_below: 0.7\n  drift_above: 0.5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="same_below must be smaller than drift_above"):
        load_settings(bad)


def test_missing_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("logs: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(listy)


def test_file_then_overrides_are_laid_over_defaults(tmp_path: Path) -> None:
    partial = tmp_path / "partial.yaml"
    partial.write_text("simulate:\n  weeks: 4\n", encoding="utf-8")
    settings = load_settings(partial, {"simulate.seed": 99, "paths.workspace": str(tmp_path / "ws")})
    assert settings.simulate.weeks == 4
    assert settings.simulate.seed == 99
    assert settings.workspace == tmp_path / "ws"
    assert settings.simulate.records_per_week == Settings().simulate.records_per_week


def test_config_env_variable_is_used_when_no_path_given(tmp_path: Path, monkeypatch) -> None:
    chosen = tmp_path / "env.yaml"
    chosen.write_text("simulate:\n  seed: 123\n", encoding="utf-8")
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(chosen))
    assert load_settings().simulate.seed == 123


def _flywheel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT
    )


def test_cli_config_show_prints_the_effective_configuration_as_json(tmp_path: Path) -> None:
    partial = tmp_path / "c.yaml"
    partial.write_text("drift:\n  min_prompts: 42\n", encoding="utf-8")
    done = _flywheel("config", "show", "--config", str(partial), "--workspace", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert shown["drift"]["min_prompts"] == 42
    assert shown["paths"]["workspace"] == str(tmp_path)


def test_cli_bad_config_exits_2_with_the_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pii:\n  processes: 0\n", encoding="utf-8")
    done = _flywheel("config", "show", "--config", str(bad))
    assert done.returncode == 2
    assert "pii.processes" in done.stderr
    assert "Traceback" not in done.stderr
