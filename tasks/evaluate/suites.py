"""Evaluation suites: which items a model is evaluated on, read from EvalItem JSONL files.

`regression` (shipped seed that grows every cycle from curated cases, deduplicated by normalised prompt,
versioned by sha256), `ood`, `adversarial`, and `new_cases` (the held-out part of this cycle's curated
cases, passed in as an extra file). The growing copies live in the workspace, never in the repo.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from tasks.config import SHIPPED_DATA, Settings
from tasks.contracts import EvalItem, sha256_file
from tasks.evaluate.scoring import detect_refusals
from tasks.files import atomic_copy, atomic_write_text
from tasks.text import normalise, text_key

SUITE_FILES = ("regression", "ood", "adversarial")


def load_suites(
    data_dir: Path, suites: Sequence[str], *, extra: Path | None = None, settings: Settings | None = None
) -> list[EvalItem]:
    """The items of `suites`, in suite order then file order.

    `data_dir` is the shipped data folder (suites in `data_dir/eval/<suite>.jsonl`) or a folder holding
    the suite files directly (the workspace's `eval/`, where the regression suite grows). `new_cases`
    comes from `extra` (EvalItem JSONL, or curated / holdout rows with prompt + reference, response or
    corrected_response), and is skipped when `extra` is None. `settings` (signals.refusal_patterns)
    decides whether a curated row's target is a refusal.
    """
    items: list[EvalItem] = []
    for suite in suites:
        if suite == "new_cases":
            if extra is not None:
                items.extend(read_new_cases(Path(extra), settings))
            continue
        path = suite_path(Path(data_dir), suite)
        items.extend(_read_items(path, suite))
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise ValueError(f"eval item id {item.id!r} appears twice ({seen[item.id]} and {item.suite}): ids must be unique")
        seen[item.id] = item.suite
    return items


def suite_path(data_dir: Path, suite: str) -> Path:
    for candidate in (data_dir / "eval" / f"{suite}.jsonl", data_dir / f"{suite}.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"eval suite {suite!r} not found as {data_dir / 'eval' / f'{suite}.jsonl'} or {data_dir / f'{suite}.jsonl'}: "
        "point paths.data_dir at the shipped data/ folder or remove the suite from evaluate.suites"
    )


def workspace_suites(settings: Settings) -> Path:
    """`<workspace>/eval/`, seeded with copies of the shipped suites on first use.

    The regression suite grows there (never in the repo); a file already in the workspace is kept.
    """
    target = settings.paths.under("eval")
    target.mkdir(parents=True, exist_ok=True)
    for suite in SUITE_FILES:
        dest = target / f"{suite}.jsonl"
        if not dest.exists():
            try:
                source = suite_path(Path(settings.paths.data_dir), suite)
            except FileNotFoundError:
                source = suite_path(SHIPPED_DATA, suite)
            atomic_copy(source, dest)
    return target


def _read_items(path: Path, suite: str) -> list[EvalItem]:
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = EvalItem.model_validate_json(line)
        except ValueError as err:
            raise ValueError(
                f"{path} line {lineno}: not a valid EvalItem ({_first_error(err)}); fix or delete the line"
            ) from None
        if item.suite != suite:
            raise ValueError(f"{path} line {lineno}: item {item.id!r} says suite {item.suite!r}, file is the {suite!r} suite")
        items.append(item)
    return items


def read_new_cases(path: Path, settings: Settings | None = None) -> list[EvalItem]:
    """The new_cases suite from EvalItem lines or curated rows (prompt + target answer).

    A row's expected behaviour: its `expected` field, else `refuse` when labelled correct_refusal or
    when its target answer is itself a refusal (by the monitoring detector), else `answer`.
    """
    settings = settings or Settings()
    if not path.is_file():
        raise FileNotFoundError(f"new cases file {path} does not exist: pass the held-out curated cases (JSONL)")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "expected" in row and "id" in row:
            row = {**row, "suite": "new_cases"}
            items.append(EvalItem.model_validate(row))
            continue
        prompt = row.get("prompt")
        reference = row.get("reference") or row.get("corrected_response") or row.get("response")
        if not prompt:
            raise ValueError(f"{path} line {lineno}: a new case needs a 'prompt'")
        refuse = row.get("label") == "correct_refusal" or bool(reference and detect_refusals([reference], settings)[0])
        if row.get("expected") in ("answer", "refuse"):
            refuse = row["expected"] == "refuse"
        items.append(
            EvalItem(
                id=f"new-{text_key(prompt)[:12]}",
                suite="new_cases",
                prompt=prompt,
                reference=None if refuse else reference,
                expected="refuse" if refuse else "answer",
                must_include=list(row.get("must_include") or []),
                must_not_include=list(row.get("must_not_include") or []),
            )
        )
    # The same prompt twice would count twice in the means.
    return list({item.id: item for item in items}.values())


def grow_regression_suite(suite_path: Path, curated_items: Sequence[EvalItem], *, shipped: Path | None = None) -> dict:
    """Append curated items to the workspace regression suite so a fixed failure stays fixed.

    On first use the file is a copy of the shipped suite. Items whose normalised prompt is already in
    the suite are skipped; new ones get suite=regression and a content id (`reg-cur-<sha256[:12]>`).
    Every change is recorded in `<suite>.versions.jsonl` (sha256 before/after, ids added).
    Returns {added, total, sha256, previous_sha256, path}.
    """
    suite_path = Path(suite_path)
    if not suite_path.exists():
        source = Path(shipped) if shipped else SHIPPED_DATA / "eval" / "regression.jsonl"
        suite_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(source, suite_path)
    existing = _read_items(suite_path, "regression")
    previous = sha256_file(suite_path)
    keys = {normalise(item.prompt) for item in existing}
    ids = {item.id for item in existing}
    added: list[EvalItem] = []
    for item in curated_items:
        key = normalise(item.prompt)
        if not key or key in keys:
            continue
        new_id = f"reg-cur-{text_key(item.prompt)[:12]}"
        if new_id in ids:
            continue
        added.append(item.model_copy(update={"id": new_id, "suite": "regression"}))
        keys.add(key)
        ids.add(new_id)
    if added:
        text = suite_path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text += "\n"
        text += "".join(item.model_dump_json() + "\n" for item in added)
        atomic_write_text(suite_path, text)
    digest = sha256_file(suite_path)
    if added:
        entry = {
            "time": _now(),
            "previous_sha256": previous,
            "sha256": digest,
            "added": len(added),
            "total": len(existing) + len(added),
            "ids": [item.id for item in added],
        }
        with open(suite_path.with_name(suite_path.stem + ".versions.jsonl"), "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
    return {"added": len(added), "total": len(existing) + len(added), "sha256": digest,
            "previous_sha256": previous, "path": str(suite_path)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _first_error(err: Exception) -> str:
    return str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
