"""Prefect flows of llm-flywheel. Offline-friendly defaults, set before Prefect or MLflow load:
no telemetry (there may be no network, and Prefect's telemetry write can contend for its SQLite
database), no model-hub calls. Each can still be overridden from the environment."""

import os

for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # weight-loading bars; progress of our own work is printed by us
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)
