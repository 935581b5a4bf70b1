from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.config import DatasetSettings
from tasks.contracts import MlflowRun, StageResult, sha256_file
from tasks.dataset import DatasetError, build_dataset, log_dataset_input, read_examples
from tasks.text import normalise


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _curated(tmp_path: Path, n: int = 60) -> Path:
    rows = [{"case_id": f"c{i}", "prompt": f"How much is the Widget {i}?", "corrected_response": f"The Widget {i} costs ${i}."}
            for i in range(n)]
    # duplicates up to case and punctuation, and one row with only `response`
    rows.append({"case_id": "dup", "prompt": "how much is the widget 3", "corrected_response": "other"})
    rows.append({"case_id": "plain", "prompt": "Where is my order?", "response": "Open Orders."})
    return _write_jsonl(tmp_path / "curated.jsonl", rows)


def _replay(tmp_path: Path, n: int = 200) -> Path:
    rows = [{"prompt": f"Old question {i}?", "response": f"Old answer {i}.", "source": f"old{i}", "cycle_id": "c0"} for i in range(n)]
    rows.append({"prompt": "How much is the Widget 5?", "response": "stale answer", "source": "old-x", "cycle_id": "c0"})
    return _write_jsonl(tmp_path / "replay.jsonl", rows)


def test_split_dedup_replay_share_and_card(tmp_path: Path) -> None:
    settings = DatasetSettings(replay_share=0.3, val_share=0.1, new_cases_holdout=0.2, seed=0)
    result = build_dataset(_curated(tmp_path), tmp_path / "ds", settings, cycle_id="c1", replay_path=_replay(tmp_path))
    train = read_examples(tmp_path / "ds" / "train.jsonl")
    val = read_examples(tmp_path / "ds" / "val.jsonl")
    holdout = read_examples(tmp_path / "ds" / "holdout.jsonl")
    card = json.loads((tmp_path / "ds" / "dataset_card.json").read_text())

    assert result["duplicates"] == 2  # one curated near-duplicate, one replay row colliding with a curated prompt
    assert {"prompt", "response", "source", "cycle_id"} == set(train[0])
    keys = [normalise(r["prompt"]) for r in train + val + holdout]
    assert len(keys) == len(set(keys)), "a prompt appears twice across splits"
    assert not any(r["response"] == "stale answer" for r in train + val)
    assert all(not r["source"].startswith("replay:") for r in holdout)
    n_new = 61 - len(holdout)
    replay = [r for r in train + val if r["source"].startswith("replay:")]
    assert len(replay) == result["replay"] == round(0.3 / 0.7 * n_new)
    assert card["replay_share"]["actual"] == pytest.approx(0.3, abs=0.02)
    assert replay[0]["source"] == f"replay:{card['sources'][1]['sha256']}"
    assert 0.1 <= len(holdout) / 61 <= 0.35 and 0.03 <= len(val) / (len(train) + len(val)) <= 0.2
    assert card["counts"]["train"] == len(train) == result["train"] and card["counts"]["val"] == len(val)
    assert card["files"]["train.jsonl"]["rows"] == len(train)
    assert result["sha256"] == card["sha256"]
    assert all(r["cycle_id"] == "c1" for r in train)


def test_same_inputs_same_bytes_and_order_does_not_matter(tmp_path: Path) -> None:
    settings = DatasetSettings()
    curated = _curated(tmp_path)
    a = build_dataset(curated, tmp_path / "a", settings, cycle_id="c1", replay_path=_replay(tmp_path))
    b = build_dataset(curated, tmp_path / "b", settings, cycle_id="c1", replay_path=_replay(tmp_path))
    assert a["sha256"] == b["sha256"]
    for name in ("train.jsonl", "val.jsonl", "holdout.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # the split of a prompt depends on the prompt, not on where it sits in the file
    lines = curated.read_text().splitlines()
    shuffled = _write_jsonl(tmp_path / "shuffled.jsonl", [json.loads(l) for l in reversed(lines)])
    build_dataset(shuffled, tmp_path / "c", settings, cycle_id="c1")
    build_dataset(curated, tmp_path / "d", settings, cycle_id="c1")
    vals = [sorted(r["prompt"] for r in read_examples(tmp_path / d / "val.jsonl")) for d in ("c", "d")]
    assert vals[0] == vals[1]
    other = build_dataset(curated, tmp_path / "e", settings.model_copy(update={"seed": 1}), cycle_id="c1")
    assert other["sha256"] != a["sha256"]


def test_loads_with_hf_datasets(tmp_path: Path) -> None:
    from datasets import load_dataset

    build_dataset(_curated(tmp_path), tmp_path / "ds", DatasetSettings(), cycle_id="c1", replay_path=_replay(tmp_path))
    loaded = load_dataset("json", data_files={"train": str(tmp_path / "ds" / "train.jsonl"),
                                              "validation": str(tmp_path / "ds" / "val.jsonl")})
    assert set(loaded["train"].column_names) == {"prompt", "response", "source", "cycle_id"}
    assert loaded["train"].num_rows == len(read_examples(tmp_path / "ds" / "train.jsonl"))


def test_replay_is_capped_by_what_exists_and_accepts_a_dataset_folder(tmp_path: Path) -> None:
    first = build_dataset(_curated(tmp_path), tmp_path / "first", DatasetSettings(), cycle_id="c1")
    assert first["replay"] == 0
    few = _write_jsonl(tmp_path / "few.jsonl", [{"prompt": f"Other question {i}?", "corrected_response": "Other answer."}
                                                for i in range(10)])
    # 0.9 / 0.1 * 10 = 90 replay rows wanted, fewer exist: all of them are used
    result = build_dataset(few, tmp_path / "second", DatasetSettings(replay_share=0.9, new_cases_holdout=0.0),
                           cycle_id="c2", replay_path=tmp_path / "first")
    assert result["replay"] == len(read_examples(tmp_path / "first" / "train.jsonl")) < 90
    small = build_dataset(few, tmp_path / "third", DatasetSettings(replay_share=0.5, new_cases_holdout=0.0),
                          cycle_id="c2", replay_path=tmp_path / "first")
    assert small["replay"] == 10


def test_bad_input_names_the_file_and_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "response": "fine"}\n{"prompt": "no answer"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: .*needs a non-empty 'prompt'"):
        build_dataset(bad, tmp_path / "out", DatasetSettings(), cycle_id="c1")
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: not valid JSON"):
        build_dataset(bad, tmp_path / "out", DatasetSettings(), cycle_id="c1")
    with pytest.raises(DatasetError, match="not found"):
        build_dataset(tmp_path / "missing.jsonl", tmp_path / "out", DatasetSettings(), cycle_id="c1")


def test_dataset_is_logged_to_mlflow_as_a_training_input(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = MlflowRun(tracking_uri=uri, run_id=client.create_run(client.create_experiment("ds-test")).info.run_id)
    result = build_dataset(_curated(tmp_path), tmp_path / "ds", DatasetSettings(), cycle_id="c1", mlflow=run)
    inputs = client.get_run(run.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.digest == result["sha256"][:32]
    assert inputs[0].dataset.name == "flywheel-c1"
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    log_dataset_input(tmp_path / "ds", run)  # logging it again is harmless


_STAGE_IN_ANOTHER_PROCESS = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tasks.config import DatasetSettings
from tasks.contracts import MlflowRun, StageResult, sha256_file
from tasks.contracts import MlflowRun
from tasks.dataset import dataset_stage
result = dataset_stage(Path({curated!r}), None, Path({out!r}), DatasetSettings(), cycle_id="c1",
                       mlflow=MlflowRun(tracking_uri={uri!r}, run_id={run_id!r}))
print(result.model_dump_json())
"""


def test_a_stage_in_another_process_logs_into_the_store_it_is_given(tmp_path: Path) -> None:
    """Nothing process-wide is set in the child (no MLFLOW_TRACKING_URI, no set_tracking_uri): the run
    it logs into is reached through the URI passed to the stage, and nothing lands in ./mlruns."""
    import os
    import subprocess
    import sys

    import mlflow

    from tasks.config import REPO_ROOT

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("cycle")).info.run_id
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    code = _STAGE_IN_ANOTHER_PROCESS.format(repo=str(REPO_ROOT), curated=str(_curated(tmp_path)), out=str(tmp_path / "ds"),
                                            uri=uri, run_id=run_id)
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = StageResult.model_validate_json(done.stdout.strip().splitlines()[-1])
    assert result.outputs["train"].sha256 == sha256_file(tmp_path / "ds" / "train.jsonl")
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [result.details["sha256"][:32]]
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # no ./mlruns, no ./mlflow.db


def test_max_new_examples_keeps_a_stable_sample_so_scarce_replay_keeps_its_share(tmp_path: Path) -> None:
    settings = DatasetSettings(replay_share=0.5, new_cases_holdout=0.2, max_new_examples=10, seed=0)
    result = build_dataset(_curated(tmp_path), tmp_path / "a", settings, cycle_id="c1", replay_path=_replay(tmp_path, 30))
    card = json.loads((tmp_path / "a" / "dataset_card.json").read_text())
    assert card["counts"]["new_used"] == 10 and card["counts"]["new_available"] > 10
    assert result["replay"] == 10  # 0.5 / (1 - 0.5) * 10 new cases
    assert card["replay_share"]["actual"] == pytest.approx(0.5)
    # the holdout (the new_cases eval suite) is not sampled
    uncapped = build_dataset(_curated(tmp_path), tmp_path / "b", DatasetSettings(replay_share=0.5, new_cases_holdout=0.2),
                             cycle_id="c1", replay_path=_replay(tmp_path, 30))
    assert result["holdout"] == uncapped["holdout"]
    again = build_dataset(_curated(tmp_path), tmp_path / "c", settings, cycle_id="c1", replay_path=_replay(tmp_path, 30))
    assert again["sha256"] == result["sha256"]


def test_replay_keeps_every_refusal_of_the_champion(tmp_path: Path) -> None:
    from tasks.config import SignalsSettings
    from tasks.signals import detect_refusals

    curated = tmp_path / "curated.jsonl"
    curated.write_text("".join(json.dumps({"case_id": f"c{i}", "prompt": f"new question {i}?",
                                           "corrected_response": f"new answer {i}"}) + "\n" for i in range(20)),
                       encoding="utf-8")
    replay = tmp_path / "champion.jsonl"
    rows = [{"prompt": f"old question {i}?", "response": f"old answer {i}"} for i in range(200)]
    rows += [{"prompt": f"off-domain question {i}?", "response": "I'm sorry, I don't know about that."} for i in range(30)]
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = DatasetSettings(replay_share=0.2, new_cases_holdout=0.0)

    def refusals(texts):
        return detect_refusals(texts, SignalsSettings())

    kept = build_dataset(curated, tmp_path / "with", settings, cycle_id="c", replay_path=replay, is_refusal=refusals)
    card = json.loads((tmp_path / "with" / "dataset_card.json").read_text())
    assert card["counts"]["replay_refusals"] == 30 and kept["replay"] == 30 + 5  # all refusals + the 20% share
    plain = build_dataset(curated, tmp_path / "without", settings.model_copy(update={"replay_refusals": False}),
                          cycle_id="c", replay_path=replay, is_refusal=refusals)
    assert plain["replay"] == 5
