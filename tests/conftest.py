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
    from tasks.models import bootstrap_base_model

    out = tmp_path_factory.mktemp("tiny_base") / "base"
    return Path(bootstrap_base_model(out, data_dir=SHIPPED_DATA, size="test")["path"])
