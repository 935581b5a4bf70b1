from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.config import TrainSettings
from tasks.contracts import MlflowRun
from tasks.base_model import model_digest
from tasks.generation import LocalGenerator
from tasks.train import train_adapter

pytestmark = pytest.mark.slow


def _settings(**train) -> TrainSettings:
    values = dict(r=8, alpha=16, batch_size=8, max_steps=12, save_steps=4, learning_rate=2e-2, warmup_ratio=0.0,
                  early_stopping_patience=0, max_length=128, cpu_threads=1)
    return TrainSettings(**{**values, **train})


def test_training_reduces_loss_and_writes_only_the_adapter(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    result = train_adapter(dataset_dir, out, _settings(), base_path=tiny_base_model)
    assert {"adapter", "steps", "train_loss", "val_loss", "seconds", "resumed_from", "tokens_per_s", "device"} <= set(result)
    assert result["steps"] == 12 and result["resumed_from"] is None and result["device"] == "cpu"
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["train_loss"] < metrics["first_train_loss"]
    assert metrics["val_curve"][-1][1] < metrics["val_curve"][0][1] - 0.1
    assert result["tokens_per_s"] > 0 and metrics["tokens"] > 0
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base_model.resolve())
    assert metrics["base_model"]["digest"] == model_digest(tiny_base_model)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-8"]
    # the adapter loads into the generator beside the base
    gen = LocalGenerator(tiny_base_model, {"cycle": out}, max_new_tokens=4)
    gen.use("cycle")
    assert len(gen.generate(["How much is the Helix Fold?"])) == 1


def test_progress_lines_for_a_run_log(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    train_adapter(dataset_dir, tmp_path / "a", _settings(max_steps=4), base_path=tiny_base_model, progress=lines.append)
    assert lines and lines[0].startswith("training: step 1/4") and "step 4/4" in lines[-1]


def test_same_seed_same_numbers(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    a = train_adapter(dataset_dir, tmp_path / "a", _settings(max_steps=4), base_path=tiny_base_model)
    b = train_adapter(dataset_dir, tmp_path / "b", _settings(max_steps=4), base_path=tiny_base_model)
    assert (a["train_loss"], a["val_loss"]) == (b["train_loss"], b["val_loss"])
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == (tmp_path / "b" / "adapter_model.safetensors").read_bytes()


class _Crash(Exception):
    pass


def _crash_after(step: int):
    from transformers import TrainerCallback

    class CrashAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Crash(f"simulated crash at step {step}")

    return CrashAfter()


def test_resume_after_a_crash_continues_from_the_last_checkpoint(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    settings = _settings()
    out = tmp_path / "adapter"
    with pytest.raises(_Crash):
        train_adapter(dataset_dir, out, settings, base_path=tiny_base_model, callbacks=[_crash_after(7)])
    assert not (out / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4"]
    resumed = train_adapter(dataset_dir, out, settings, base_path=tiny_base_model)
    assert resumed["resumed_from"] == str(out / "checkpoints" / "checkpoint-4")
    assert resumed["steps"] == 12
    history = json.loads((out / "training_metrics.json").read_text())["loss_curve"]
    assert [step for step, _ in history] == list(range(1, 13))  # steps 5-7 were redone once, not twice
    # an uninterrupted run ends in the same place
    straight = train_adapter(dataset_dir, tmp_path / "straight", settings, base_path=tiny_base_model)
    assert straight["train_loss"] == pytest.approx(resumed["train_loss"], rel=1e-4)
    assert straight["val_loss"] == pytest.approx(resumed["val_loss"], rel=1e-4)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, reason", [
    (lambda ckpt: _truncate(ckpt / "adapter_model.safetensors"), "adapter_model.safetensors"),
    (lambda ckpt: (ckpt / "trainer_state.json").unlink(), "trainer_state.json"),
    (lambda ckpt: _truncate(ckpt / "optimizer.pt"), "optimizer.pt"),
], ids=["truncated-weights", "no-trainer-state", "truncated-optimizer"])
def test_resume_skips_an_incomplete_checkpoint_and_says_why(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path,
                                                           damage, reason: str) -> None:
    settings = _settings()
    out = tmp_path / "adapter"
    with pytest.raises(_Crash):
        train_adapter(dataset_dir, out, settings, base_path=tiny_base_model, callbacks=[_crash_after(9)])
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    damage(checkpoints / "checkpoint-8")  # what a kill during the save at step 8 leaves behind
    lines: list[str] = []
    resumed = train_adapter(dataset_dir, out, settings, base_path=tiny_base_model, progress=lines.append)
    assert resumed["resumed_from"] == str(checkpoints / "checkpoint-4")
    (skipped,) = resumed["skipped_checkpoints"]
    assert skipped["checkpoint"] == str(checkpoints / "checkpoint-8") and reason in skipped["reason"]
    assert any("checkpoint-8" in line and reason in line for line in lines)
    assert resumed["steps"] == 12 and (out / "adapter_model.safetensors").is_file()


def test_early_stopping_on_val_loss(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    # val loss falls by less than min_delta per evaluation: after `patience` such evaluations the run
    # stops, long before max_steps, and the adapter written is the best checkpoint's
    settings = _settings(max_steps=60, save_steps=2, early_stopping_patience=2, early_stopping_min_delta=10.0)
    result = train_adapter(dataset_dir, tmp_path / "a", settings, base_path=tiny_base_model)
    metrics = json.loads((tmp_path / "a" / "training_metrics.json").read_text())
    assert result["stopped_early"] and result["steps"] == 6
    best_step, best_loss = min(metrics["val_curve"], key=lambda point: point[1])
    assert metrics["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert result["val_loss"] == pytest.approx(best_loss, rel=1e-5)


def _padding_share(tiny_base_model: Path, dataset_dir: Path, out: Path, **train) -> float:
    """Share of padding in one epoch of the training batches train_adapter builds (then it stops)."""
    from transformers import TrainerCallback

    seen: dict[str, int] = {"real": 0, "total": 0}

    class CountThenStop(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            for batch in train_dataloader:
                seen["real"] += int(batch["attention_mask"].sum())
                seen["total"] += batch["attention_mask"].numel()
            raise _Crash("counted")

    with pytest.raises(_Crash):
        train_adapter(dataset_dir, out, _settings(batch_size=4, **train), base_path=tiny_base_model,
                      callbacks=[CountThenStop()])
    return 1 - seen["real"] / seen["total"]


def test_length_grouped_batches_carry_less_padding(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    grouped = _padding_share(tiny_base_model, dataset_dir, tmp_path / "g", group_by_length=True)
    random_order = _padding_share(tiny_base_model, dataset_dir, tmp_path / "r", group_by_length=False)
    assert grouped < 0.8 * random_order, (grouped, random_order)  # the demo's cases: 43% padding -> 6%


def test_packing_trains_on_flattened_batches(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    result = train_adapter(dataset_dir, tmp_path / "a", _settings(packing=True, max_steps=6), base_path=tiny_base_model)
    metrics = json.loads((tmp_path / "a" / "training_metrics.json").read_text())
    assert result["steps"] == 6 and metrics["train_loss"] < metrics["first_train_loss"]


def test_bf16_training_keeps_the_adapter_in_fp32(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    # the precision CUDA trains in by default, run on CPU: the frozen base in bf16, autocast on,
    # the LoRA weights (what is trained and saved) in fp32
    from safetensors import safe_open

    result = train_adapter(dataset_dir, tmp_path / "a", _settings(precision="bf16", max_steps=6), base_path=tiny_base_model)
    metrics = json.loads((tmp_path / "a" / "training_metrics.json").read_text())
    assert result["steps"] == 6 and metrics["dtype"] == "bfloat16"
    assert metrics["train_loss"] < metrics["first_train_loss"]
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float32"}
    gen = LocalGenerator(tiny_base_model, {"cycle": tmp_path / "a"}, max_new_tokens=4)
    gen.use("cycle")
    assert len(gen.generate(["How much is the Helix Fold?"])) == 1


def test_mlflow_run_gets_params_metrics_input_and_adapter(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("train-test", artifact_location=str(tmp_path / "art"))).info.run_id
    train_adapter(dataset_dir, tmp_path / "adapter", _settings(max_steps=4), base_path=tiny_base_model,
                  mlflow=MlflowRun(tracking_uri=uri, run_id=run_id))
    run = client.get_run(run_id)
    assert run.data.params["train.r"] == "8"
    assert run.data.params["base_model_digest"] == model_digest(tiny_base_model)
    assert run.data.params["base_model_path"] == str(tiny_base_model.resolve())
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3, 4]
    assert client.get_metric_history(run_id, "val_loss")
    card = json.loads((dataset_dir / "dataset_card.json").read_text())
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == card["sha256"][:32]
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    artifacts = {f.path for f in client.list_artifacts(run_id, "adapter")}
    assert artifacts == {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/training_metrics.json"}


_CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from transformers import TrainerCallback
from tasks.config import TrainSettings
from tasks.train import train_adapter

class Slow(TrainerCallback):  # gives the parent time to kill us once a checkpoint exists
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= 4:
            time.sleep(2)

settings = TrainSettings.model_validate(json.loads({settings!r}))
train_adapter(Path({ds!r}), Path({out!r}), settings, base_path=Path({base!r}), callbacks=[Slow()])
"""


def test_resume_after_sigkill(tiny_base_model: Path, dataset_dir: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tasks.config import REPO_ROOT

    settings = _settings()
    out = tmp_path / "adapter"
    code = _CHILD.format(repo=str(REPO_ROOT), settings=json.dumps(settings.model_dump(mode="json")), ds=str(dataset_dir), out=str(out),
                         base=str(tiny_base_model))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not (out / "adapter_model.safetensors").exists()
    resumed = train_adapter(dataset_dir, out, settings, base_path=tiny_base_model)
    assert resumed["resumed_from"] is not None and resumed["resumed_from"].startswith(str(out / "checkpoints"))
    assert resumed["steps"] == 12 and (out / "adapter_model.safetensors").is_file()


def test_train_without_a_dataset_or_a_base_model_exits_2_naming_what_is_missing(tmp_path, monkeypatch, capsys) -> None:
    from flows import cli

    for extra, expected in (([], "flywheel model bootstrap"), (["--base", str(tmp_path)], "build the dataset first")):
        monkeypatch.setattr("sys.argv", ["flywheel", "train", "--dataset", str(tmp_path / "nowhere"), "--out",
                                         str(tmp_path / "adapter"), "-w", str(tmp_path), *extra])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and expected in error and "Traceback" not in error
