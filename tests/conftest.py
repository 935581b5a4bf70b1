"""Shared test set-up: no network, no telemetry, nothing written outside tmp paths."""

from __future__ import annotations

import os

# Set before anything imports prefect or mlflow.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory):
    """The even-smaller embedded base (size="test"), built once per test session from the shipped KB."""
    from pathlib import Path

    from tasks.config import SHIPPED_DATA
    from tasks.base_model import bootstrap_base_model

    out = tmp_path_factory.mktemp("tiny_base") / "base"
    return Path(bootstrap_base_model(out, data_dir=SHIPPED_DATA, size="test")["path"])


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory):
    """An MLflow sqlite store with its tables migrated, to copy into a test's workspace (creating
    the tables takes seconds; copying the file takes none)."""
    from tasks.config import load_settings
    from tasks.registry import Registry

    workspace = tmp_path_factory.mktemp("registry-template")
    Registry(load_settings(None, {"paths.workspace": str(workspace)}))
    return workspace / "mlflow.db"


@pytest.fixture()
def adapter(tmp_path):
    """A stand-in adapter folder for registry tests: the registry stores files, it never loads them."""
    import json

    folder = tmp_path / "05_adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}), encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    return folder
