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


# ------------------------------------------------------------------------- bad input (issue 13)


def _alias_bomb(levels: int) -> str:
    """YAML whose aliases expand to 9**levels strings (a "billion laughs" at levels=9)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    lines.append(f"logs: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def test_aliases_that_expand_beyond_the_budget_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(6), encoding="utf-8")  # 531,441 strings once expanded
    with pytest.raises(ConfigError) as err:
        load_settings(bomb)
    message = str(err.value)
    assert str(bomb) in message and "alias" in message.replace(str(bomb), "")
    assert len(message) < 1_000


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    shared = tmp_path / "shared.yaml"
    shared.write_text("signals:\n  refusal_patterns: &p ['I do not know']\npii:\n  allow_list: *p\n", encoding="utf-8")
    assert load_settings(shared).pii.allow_list == ["I do not know"]


def test_a_yaml_bomb_does_not_hang_config_show(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(9), encoding="utf-8")  # 387 million strings once expanded
    done = subprocess.run([sys.executable, "-m", "flows.cli", "config", "show", "--config", str(bomb)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)  # a hang guard, not a speed limit
    assert done.returncode == 2
    assert "alias" in done.stderr.replace(str(bomb), "") and len(done.stderr) < 1_000


def test_messages_never_echo_unbounded_input(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("logs: [" + ", ".join(f"'source-{i}'" for i in range(3_000)) + "]\n"
                   "train:\n  r: '" + "x" * 20_000 + "'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(big)
    message = str(err.value)
    assert "logs:" in message and "train.r:" in message
    assert len(message) < 1_000


@pytest.mark.parametrize("key, value, expected", [
    ("train.max_steps", -10, "-1"),
    ("train.max_steps", 0, "-1"),
    ("pii.processes", True, "boolean"),
    ("train.batch_size", False, "boolean"),
    ("annotation.pass_alpha", True, "boolean"),
    ("train.learning_rate", float("nan"), "finite"),
    ("train.epochs", float("inf"), "finite"),
])
def test_values_that_only_look_like_numbers_are_refused(tmp_path: Path, key: str, value, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {key: value})
    assert key in str(err.value) and expected in str(err.value)


def test_max_steps_minus_one_means_epochs_and_positive_counts_are_kept() -> None:
    assert load_settings(None, {"train.max_steps": -1}).train.max_steps == -1
    assert load_settings(None, {"train.max_steps": 7}).train.max_steps == 7
    assert load_settings(None, {"simulate.format": "parquet", "annotation.simulate": True}).annotation.simulate is True


def test_a_folder_given_as_config_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path)
    assert str(tmp_path) in str(err.value) and "folder" in str(err.value)
    assert "does not exist" not in str(err.value)


def test_a_config_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("pii:\n  allow_list: ['Caf\xe9']\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_settings(latin)
    assert str(latin) in str(err.value) and "UTF-8" in str(err.value)
    done = _flywheel("config", "show", "--config", str(latin))
    assert done.returncode == 2 and str(latin) in done.stderr


@pytest.mark.parametrize("overrides, names", [
    ({"runner.kind": "ray"}, ["runner.kind", "'local' or 'dask'"]),
    ({"runner.address": "localhost:8786"}, ["runner.address", "tcp://host:8786"]),
    ({"runner.workers": 0}, ["runner.workers"]),
    ({"monitoring.partition_rows": 10}, ["monitoring.partition_rows"]),
    ({"monitoring.partition_rows": 1000, "drift.bins": "embeddings"}, ["monitoring.partition_rows", "drift.bins: tokens"]),
])
def test_runner_and_monitoring_knobs_fail_at_start_naming_the_key(overrides, names) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, overrides)
    assert all(name in str(err.value) for name in names)
