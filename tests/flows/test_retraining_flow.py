"""The quarterly retraining flow end to end on tiny settings, under the Prefect test server: real
extraction, real Presidio masking, simulated annotators, real LoRA training on a tiny base, real
evaluation and a real MLflow registry. Then a rerun skips every finished stage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from flows.retraining import quarterly_retraining
from tasks.config import load_settings
from tasks.registry import Registry
from tasks.simulate import simulate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cycle_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    workspace = tmp_path_factory.mktemp("retraining")
    config = workspace / "config.yaml"
    config.write_text(yaml.safe_dump({
        "paths": {"workspace": str(workspace)},
        "simulate": {"weeks": 3, "launch_week": 2, "records_per_week": 300, "seed": 5},
        "pii": {"require_key": False, "processes": 1},
        "annotation": {"simulate": True, "simulated_accuracy": 0.97},
        "model": {"bootstrap_size": "test", "max_new_tokens": 24},
        "train": {"max_steps": 6, "batch_size": 8, "save_steps": 3, "early_stopping_patience": 0},
        "evaluate": {"bootstrap_samples": 100},
    }), encoding="utf-8")
    settings = load_settings(config)
    simulate(settings.simulate, workspace, data_dir=settings.paths.data_dir)
    result = quarterly_retraining(window="2026-Q1", config=str(config))
    return workspace, config, result


def test_cycle_registers_a_canary_with_every_stage_recorded(cycle_run) -> None:
    workspace, config, result = cycle_run
    assert result["canary_version"] == "1"
    assert set(result["stages"]) == {"extract", "mask", "annotate", "agreement", "dataset", "train", "evaluate"}
    directory = Path(result["cycle_dir"])
    for name in ("01_cases.parquet", "02_masked.parquet", "03_annotation/curated.jsonl", "04_dataset/train.jsonl",
                 "05_adapter/adapter_model.safetensors", "06_eval/report.md", "manifest.json"):
        assert (directory / name).is_file(), name
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["stages"]["train"]["outputs"]["adapter"]["sha256"]
    status = Registry(load_settings(config)).status()
    assert status["canary"] == "1" and status["champion"] is None


def test_training_files_hold_no_inserted_pii(cycle_run) -> None:
    workspace, _, result = cycle_run
    inserted = {p["value"] for line in (workspace / "ground_truth.jsonl").read_text().splitlines()
                for p in json.loads(line)["pii"] if p["type"] in ("EMAIL_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER")}
    assert inserted, "the simulation inserted no structured PII to check"
    train = (Path(result["cycle_dir"]) / "04_dataset" / "train.jsonl").read_text()
    assert not [value for value in inserted if value in train]


def test_rerun_skips_finished_stages_and_gives_the_same_dataset(cycle_run) -> None:
    _, config, first = cycle_run
    directory = Path(first["cycle_dir"])
    before = json.loads((directory / "manifest.json").read_text())["stages"]
    again = quarterly_retraining(window="2026-Q1", config=str(config))
    after = json.loads((directory / "manifest.json").read_text())["stages"]
    for name in ("extract", "mask", "annotate", "agreement", "dataset", "train", "evaluate"):
        assert after[name]["finished_at"] == before[name]["finished_at"], f"{name} ran again"
    assert after["dataset"]["outputs"]["train"]["sha256"] == before["dataset"]["outputs"]["train"]["sha256"]
    assert again["canary_version"] == "2"  # registering is not cached: each run registers what it built


def test_rerun_redoes_only_what_changed_or_went_missing(cycle_run) -> None:
    workspace, config, first = cycle_run
    directory = Path(first["cycle_dir"])
    before = json.loads((directory / "manifest.json").read_text())["stages"]
    (directory / "04_dataset" / "train.jsonl").unlink()  # an output removed by hand
    log_file = sorted((workspace / "logs").glob("*.jsonl"))[0]
    stat = log_file.stat()
    os.utime(log_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a log file rewritten, same rows
    quarterly_retraining(window="2026-Q1", config=str(config))
    after = json.loads((directory / "manifest.json").read_text())["stages"]
    ran_again = {name for name in before if after[name]["finished_at"] != before[name]["finished_at"]
                 or after[name]["seconds"] != before[name]["seconds"]}
    assert ran_again == {"extract", "dataset"}  # same cases and same dataset: everything else reused
    assert after["dataset"]["outputs"]["train"]["sha256"] == before["dataset"]["outputs"]["train"]["sha256"]


def _config_with(config: Path, name: str, **sections: dict) -> Path:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    changed = config.with_name(name)
    changed.write_text(yaml.safe_dump(data), encoding="utf-8")
    return changed


def _finished(directory: Path) -> dict[str, str]:
    stages = json.loads((directory / "manifest.json").read_text())["stages"]
    return {name: entry["finished_at"] + str(entry["seconds"]) for name, entry in stages.items()}


def test_a_change_to_a_section_no_stage_reads_reruns_nothing(cycle_run) -> None:
    _, config, first = cycle_run
    directory = Path(first["cycle_dir"])
    quarterly_retraining(window="2026-Q1", config=str(config))  # whatever earlier tests left, settled
    before = _finished(directory)
    unrelated = _config_with(config, "unrelated.yaml", review={"timeout_days": 2.0}, cost={"gpu_monthly": 999.0},
                             registry={"lock_timeout_s": 5.0})
    quarterly_retraining(window="2026-Q1", config=str(unrelated))
    assert _finished(directory) == before


def test_a_change_to_pii_reruns_masking_and_what_it_changes_but_not_extraction(cycle_run) -> None:
    _, config, first = cycle_run
    directory = Path(first["cycle_dir"])
    quarterly_retraining(window="2026-Q1", config=str(config))
    manifest = json.loads((directory / "manifest.json").read_text())["stages"]
    before = _finished(directory)
    stricter = _config_with(config, "pii.yaml", pii={"score_threshold": 0.9})
    quarterly_retraining(window="2026-Q1", config=str(stricter))
    after = _finished(directory)
    changed = json.loads((directory / "manifest.json").read_text())["stages"]
    assert after["extract"] == before["extract"]
    assert after["mask"] != before["mask"]
    masked_changed = changed["mask"]["outputs"]["masked"]["sha256"] != manifest["mask"]["outputs"]["masked"]["sha256"]
    assert masked_changed, "a threshold of 0.9 should mask less of the simulated PII"
    assert after["annotate"] != before["annotate"]  # its input changed: it and what follows run again
    # Back to the first settings: the cache still holds mask's first result, but the folder now holds the
    # stricter run's files, so mask runs again and writes what the first settings give.
    quarterly_retraining(window="2026-Q1", config=str(config))
    back = json.loads((directory / "manifest.json").read_text())["stages"]
    assert _finished(directory)["extract"] == before["extract"]
    assert back["mask"]["outputs"]["masked"]["sha256"] == manifest["mask"]["outputs"]["masked"]["sha256"]
    assert back["dataset"]["outputs"]["train"]["sha256"] == manifest["dataset"]["outputs"]["train"]["sha256"]


def test_a_reversed_window_fails_before_any_side_effect(tmp_path: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    workspace = tmp_path / "ws"
    # Prefect's parameter validation (flows/parameters.py Window) refuses it before the flow's first line.
    with pytest.raises(ParameterTypeError, match="2026-04-20..2026-01-05' selects nothing"):
        quarterly_retraining(window="2026-04-20..2026-01-05", workspace=str(workspace))
    assert not (workspace / "cycles").exists() and not (workspace / "mlflow.db").exists()
