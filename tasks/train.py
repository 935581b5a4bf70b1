"""LoRA training (DESIGN.md section 7, stage 05_adapter): peft LoRA through the transformers Trainer.

Everything comes from `TrainSettings`: LoRA r / alpha / dropout / target modules, learning rate and
schedule, epochs or max steps, batch and gradient accumulation, max length, packing or length-grouped
batches, gradient checkpointing, checkpoint interval, early-stopping patience, device, precision and
seed. By default CUDA trains in bf16 (fp32 on GPUs older than Ampere) and CPU in fp32; `precision:
bf16` also trains in bf16 on CPU. The frozen base is held in the training dtype; peft keeps the LoRA
weights in fp32. Checkpoints go to `out_dir/checkpoints/`; a rerun after a crash resumes from the newest
complete one (a checkpoint cut short by the crash is skipped, and the result says which and why).
Loss is computed on the answer tokens only. Only the adapter is written and logged to MLflow; the base
is referenced by path and digest.

Several processes (``torchrun --nproc_per_node N -m flows.cli train ...``: DDP, NCCL on GPUs, gloo on
CPU) train the same recipe: `batch_size` is the global batch, split evenly over the processes, so the
loss curve matches one process's; only the first process writes the adapter, the metrics and MLflow.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tasks.base_model import ModelError, encode_example, model_digest, torch_threads
from tasks.config import TrainSettings
from tasks.contracts import MlflowRun, StageResult
from tasks.dataset import CARD_FILE, TRAIN_FILE, VAL_FILE, log_dataset_input, read_examples
from tasks.generation import bf16_by_default, pick_device

# peft still calls transformers' renamed `is_gradient_checkpointing`: nothing a user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
METRICS_FILE = "training_metrics.json"


class TrainError(ValueError):
    """Training cannot start; the message names the input and the fix (the CLI: exit 2, no traceback)."""


def _tokenise(rows: Sequence[dict[str, Any]], tokenizer, max_length: int) -> tuple[list[dict[str, list[int]]], int]:
    out, dropped = [], 0
    for row in rows:
        ids, answer_start = encode_example(tokenizer, row["prompt"], row["response"], max_length)
        if answer_start >= len(ids):  # prompt alone fills max_length: nothing left to learn from
            dropped += 1
            continue
        out.append({"input_ids": ids, "labels": [-100] * answer_start + ids[answer_start:], "length": len(ids)})
    return out, dropped


class _PadCollator:
    """Right-padded batches; prompt and padding positions carry label -100 (no loss)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _callbacks_module():
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """A tqdm bar on stderr (stdout stays free for the CLI's JSON line)."""

        def __init__(self) -> None:
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            file=sys.stderr, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs:
                shown = {k: round(v, 4) for k, v in logs.items() if k in ("loss", "eval_loss") and isinstance(v, (int, float))}
                if shown:
                    self.bar.set_postfix(shown)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    class MlflowMetrics(TrainerCallback):
        """Loss curves into an existing MLflow run, by id (the active run is per thread: never rely on it)."""

        def __init__(self, run: MlflowRun) -> None:
            from mlflow.tracking import MlflowClient

            self.client, self.run_id = MlflowClient(run.tracking_uri), run.run_id

        def on_log(self, args, state, control, logs=None, **kwargs):
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            names = {"loss": "train_loss", "eval_loss": "val_loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm"}
            metrics = [Metric(names[k], float(v), now, state.global_step) for k, v in (logs or {}).items()
                       if k in names and isinstance(v, (int, float)) and math.isfinite(v)]
            if metrics:
                self.client.log_batch(self.run_id, metrics=metrics)

    class ProgressLines(TrainerCallback):
        """About ten progress lines through `say` (a run logger, where no terminal shows a bar)."""

        def __init__(self, say: Callable[[str], None]) -> None:
            self.say, self.loss, self.next_step = say, None, 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and isinstance(logs.get("loss"), (int, float)):
                self.loss = logs["loss"]

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= self.next_step:
                loss = f", train loss {self.loss:.4f}" if self.loss is not None else ""
                self.say(f"training: step {state.global_step}/{state.max_steps}{loss}")
                self.next_step = state.global_step + max(1, state.max_steps // 10)

    return Progress, ProgressLines, MlflowMetrics


# What resuming needs from a checkpoint folder (the Trainer writes trainer_state.json last). Torch
# files are zip archives: a truncated one has no central directory.
_REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors")


def _newest_complete_checkpoint(checkpoints: Path) -> tuple[Path | None, list[dict[str, str]]]:
    """The newest checkpoint in `checkpoints` that is complete, and the newer ones skipped with why.

    A kill during a save leaves a folder with some files missing or cut short; resuming from it fails
    every time, so it is passed over (and left in place: the resumed run writes that step again)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not checkpoints.is_dir():
        return None, []
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = sorted((int(m.group(1)), p) for p in checkpoints.iterdir() if p.is_dir() and (m := pattern.match(p.name)))
    skipped = []
    for _, folder in reversed(found):
        problem = _checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append({"checkpoint": str(folder), "reason": problem})
    return None, skipped


def _checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from, or None when every file it needs is there and whole."""
    weights = next((folder / name for name in _WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        return f"no weights file ({' or '.join(_WEIGHTS)})"
    for name in _REQUIRED:
        if not (folder / name).is_file():
            return f"{name} is missing"
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            problem = None if zipfile.is_zipfile(path) else "is not a complete torch file (cut short?)"
        elif path.suffix == ".json":
            problem = _json_problem(path)
        else:
            continue
        if problem:
            return f"{path.name} {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """safetensors: 8 bytes of header length, the JSON header, then the tensors it places by offset."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes)"
        length = int.from_bytes(head, "little")
        if 8 + length > size:
            return f"is truncated ({size} bytes, its header alone needs {8 + length})"
        try:
            header = json.loads(handle.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            return "has an unreadable header"
    if 8 + length + end != size:
        return f"is truncated ({size} of {8 + length + end} bytes)"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "is not complete JSON"
    return None


def _world_size() -> int:
    """How many processes train together (torchrun / accelerate launch set WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _is_first_process() -> bool:
    """The process that writes files and talks to MLflow (RANK 0, or the only one)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _say(progress: bool | Callable[[str], None], message: str) -> None:
    if callable(progress):
        progress(message)
    elif progress:
        print(message, file=sys.stderr)


def train_adapter(
    dataset_dir: Path,
    out_dir: Path,
    cfg: TrainSettings,
    *,
    base_path: Path,
    mlflow: MlflowRun | None = None,
    progress: bool | Callable[[str], None] = False,
    callbacks: Sequence[Any] = (),
) -> dict:
    """Train a LoRA adapter on the base model at `base_path` with `dataset_dir` (train.jsonl /
    val.jsonl) into `out_dir`.

    Resumes from the newest complete checkpoint in `out_dir/checkpoints` when there is one (newer,
    incomplete ones are listed in `skipped_checkpoints` with the reason, and said through `progress`). Writes
    adapter_model.safetensors, adapter_config.json and training_metrics.json. With `mlflow`, logs
    params, per-step losses, the dataset as a training input and the adapter files into that run.
    `progress`: True draws a tqdm bar on stderr; a callable gets about ten progress lines instead.
    `callbacks`: extra transformers TrainerCallbacks (tests use one to simulate a crash).
    Returns {adapter, steps, train_loss, val_loss, seconds, resumed_from, tokens_per_s, device, ...}.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, EarlyStoppingCallback,
                              Trainer, TrainingArguments, set_seed)
    from transformers.trainer_callback import PrinterCallback

    start = time.perf_counter()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    for name in (TRAIN_FILE, VAL_FILE):
        if not (dataset_dir / name).is_file():
            raise TrainError(f"{dataset_dir / name} not found: build the dataset first (`flywheel retrain` does it)")
    base_path = Path(base_path)
    if not (base_path / "config.json").is_file():
        raise ModelError(f"base model {base_path} is not a model directory: run `flywheel model bootstrap` or pass --base")
    device = pick_device(cfg.device)
    processes, first = _world_size(), _is_first_process()
    if cfg.batch_size % processes:
        raise TrainError(f"train.batch_size={cfg.batch_size} (the global batch) does not split evenly over "
                         f"{processes} processes: make it a multiple of {processes}")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = out_dir / "checkpoints"
    resume, skipped = _newest_complete_checkpoint(checkpoints)
    if not first:
        progress = False  # one process speaks
    for item in skipped:
        _say(progress, f"training: skipped {item['checkpoint']}: {item['reason']}; "
                       + (f"resuming from {resume.name}" if resume else "starting from step 0"))

    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, val_rows = read_examples(dataset_dir / TRAIN_FILE), read_examples(dataset_dir / VAL_FILE)
    train_data, dropped_train = _tokenise(train_rows, tokenizer, cfg.max_length)
    val_data, dropped_val = _tokenise(val_rows, tokenizer, cfg.max_length)
    if not train_data:
        raise TrainError(f"{dataset_dir / TRAIN_FILE}: no example fits train.max_length={cfg.max_length}; raise it")

    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_by_default(device))
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in cfg.target_modules if m in present]
    if not targets:
        raise TrainError(f"none of train.target_modules={cfg.target_modules} exist in {base_path}; "
                         f"its linear layers are named like {sorted(present)[:12]}")
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", bias="none")
    model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()

    per_step = cfg.batch_size * cfg.gradient_accumulation
    steps_per_epoch = max(1, math.ceil(len(train_data) / per_step))
    planned = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    early = cfg.early_stopping_patience > 0 and len(val_data) > 0
    scheduler = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=cfg.batch_size // processes,
        # One example per eval batch: the val loss is then the mean over examples, whatever the number
        # of processes (batched, it is a mean of batch means, and DDP pads the last shard with repeats).
        per_device_eval_batch_size=1,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=int(round(cfg.warmup_ratio * planned)),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        max_steps=planned,
        eval_strategy="steps" if val_data else "no",
        eval_steps=cfg.save_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        restore_callback_states_from_checkpoint=True,
        logging_strategy="steps",
        logging_steps=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        # Length-grouped batches: random ones of the demo's cases are 43% padding. Packing has none.
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.packing else "random",
        bf16=bf16,
        use_cpu=device == "cpu",
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    Progress, ProgressLines, MlflowMetrics = _callbacks_module()
    extra: list[Any] = list(callbacks)
    if early:
        extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience,
                                           early_stopping_threshold=cfg.early_stopping_min_delta))
    if callable(progress):
        extra.append(ProgressLines(progress))
    elif progress:
        extra.append(Progress())
    if mlflow and first:
        extra.append(MlflowMetrics(mlflow))
    collator = (DataCollatorWithFlattening(return_position_ids=True, separator_id=-100) if cfg.packing
                else _PadCollator(tokenizer.pad_token_id))
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=Dataset.from_list(train_data),
        eval_dataset=Dataset.from_list(val_data) if val_data else None,
        callbacks=extra,
    )
    # With tqdm off the Trainer prints every log dict to stdout: the CLI's stdout is for its JSON line.
    trainer.remove_callback(PrinterCallback)

    base_digest = model_digest(base_path)
    card = json.loads((dataset_dir / CARD_FILE).read_text(encoding="utf-8")) if (dataset_dir / CARD_FILE).is_file() else {}
    if mlflow and first:
        _log_params(mlflow, cfg, base_path, base_digest, card, device, planned, targets)
        if card:
            log_dataset_input(dataset_dir, mlflow, context="training")

    tokens_before = 0
    if resume is not None:
        state_file = resume / "trainer_state.json"
        if state_file.is_file():
            tokens_before = json.loads(state_file.read_text()).get("num_input_tokens_seen", 0) or 0
    with torch_threads(cfg.cpu_threads if device == "cpu" else 0):
        train_start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        train_seconds = time.perf_counter() - train_start
        val_loss = float(trainer.evaluate()["eval_loss"]) if val_data else None
    state = trainer.state
    tokens = (state.num_input_tokens_seen or 0) - tokens_before  # summed over the processes

    if first:
        model.save_pretrained(out_dir)
        _point_adapter_at_base(out_dir, base_path)
    losses = [(h["step"], h["loss"]) for h in state.log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in state.log_history if "eval_loss" in h]
    tail = [loss for _, loss in losses[-max(1, min(len(losses) // 10, 20)):]]
    metrics = {
        "adapter": str(out_dir),
        "steps": state.global_step,
        "planned_steps": planned,
        "stopped_early": state.global_step < planned,
        "train_loss": round(sum(tail) / len(tail), 6) if tail else None,
        "first_train_loss": losses[0][1] if losses else None,
        "val_loss": round(val_loss, 6) if val_loss is not None else None,
        "best_checkpoint": state.best_model_checkpoint,
        "seconds": round(time.perf_counter() - start, 2),
        "train_seconds": round(train_seconds, 2),
        "resumed_from": str(resume) if resume else None,
        "skipped_checkpoints": skipped,
        "tokens": int(tokens),
        "tokens_per_s": round(tokens / train_seconds, 1) if train_seconds > 0 else None,
        "device": device,
        "processes": processes,
        "dtype": str(dtype).replace("torch.", ""),
        "examples": {"train": len(train_data), "val": len(val_data), "dropped_too_long": dropped_train + dropped_val},
        "base_model": {"path": str(base_path.resolve()), "digest": base_digest},
        "dataset": {"path": str(dataset_dir.resolve()), "sha256": card.get("sha256")},
        "target_modules": targets,
        "settings": cfg.model_dump(mode="json"),
        "loss_curve": losses,
        "val_curve": evals,
    }
    if first:
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        if mlflow:
            _log_outputs(mlflow, out_dir, metrics)
    trainer.accelerator.wait_for_everyone()  # no process returns before the adapter is on disk
    summary_keys = ("adapter", "steps", "planned_steps", "train_loss", "val_loss", "seconds", "resumed_from",
                    "skipped_checkpoints", "tokens_per_s", "device", "processes", "stopped_early")
    return {k: metrics[k] for k in summary_keys}


def _point_adapter_at_base(out_dir: Path, base_path: Path) -> None:
    """adapter_config.json names the base by absolute path (peft writes whatever name it was loaded by)."""
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(base_path.resolve())
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _log_params(run: MlflowRun, cfg: TrainSettings, base_path: Path, base_digest: str, card: dict, device: str,
                planned: int, targets: list[str]) -> None:
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    client, run_id = MlflowClient(run.tracking_uri), run.run_id
    params = {f"train.{k}": (",".join(v) if isinstance(v, list) else v) for k, v in cfg.model_dump(mode="json").items()}
    params.update({
        "base_model_path": str(base_path.resolve()),
        "base_model_digest": base_digest,
        "dataset_sha256": card.get("sha256", ""),
        "device": device,
        "planned_steps": planned,
        "lora_target_modules_used": ",".join(targets),
    })
    # A resumed run logs into the same MLflow run: params already there must not be re-logged.
    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    tags = [RunTag("flywheel.base_model_path", str(base_path.resolve())), RunTag("flywheel.base_model_digest", base_digest)]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i:i + 100])
    client.log_batch(run_id, tags=tags)


def _log_outputs(run: MlflowRun, out_dir: Path, metrics: dict) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client, run_id = MlflowClient(run.tracking_uri), run.run_id
    now = int(time.time() * 1000)
    final = [Metric(f"final_{k}", float(metrics[k]), now, metrics["steps"])
             for k in ("train_loss", "val_loss", "tokens_per_s") if metrics.get(k) is not None]
    client.log_batch(run_id, metrics=final)
    for name in (*ADAPTER_FILES, METRICS_FILE):
        client.log_artifact(run_id, str(out_dir / name), artifact_path="adapter")


def train_stage(dataset_dir: Path, base: Path, out_dir: Path, cfg: TrainSettings, *, mlflow: MlflowRun | None = None,
                progress: bool | Callable[[str], None] = False) -> StageResult:
    """The cycle's training stage: `train_adapter`, its adapter files declared as outputs."""
    metrics = train_adapter(dataset_dir, out_dir, cfg, base_path=base, mlflow=mlflow, progress=progress)
    out_dir = Path(out_dir)
    return StageResult.of(
        "train", {"adapter": out_dir / "adapter_model.safetensors", "adapter_config": out_dir / "adapter_config.json",
                  "metrics": out_dir / METRICS_FILE},
        counts={"steps": metrics["steps"], "planned_steps": metrics["planned_steps"]}, seconds=metrics["seconds"],
        details={k: metrics[k] for k in ("train_loss", "val_loss", "resumed_from", "skipped_checkpoints", "tokens_per_s",
                                         "device", "stopped_early")},
    )
