"""The Label Studio round trip: cases out as tasks to label, annotation files back in as records
(DESIGN.md sections 3 and 8).

export_tasks        cases -> Label Studio import file (tasks.json) + label_config.xml beside it
import_annotations  Label Studio export JSON (any number of annotators), CSV or JSONL -> annotations.jsonl;
                    rows that cannot be used go to quarantine.jsonl with file, row and reason
read_ratings        (item, annotator, label) from any of those files, for `flywheel agreement --annotations`
read_annotations    annotations.jsonl back as contracts.Annotation records
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from pydantic import ValidationError

from tasks.contracts import Annotation
from tasks.files import atomic_write_text, read_case_rows, write_jsonl

_ITEM_COLUMNS = ("item", "case_id")  # CSV: the first of these present names the item

# ---------------------------------------------------------------------------------------------------
# Label Studio export (tasks to label)
# ---------------------------------------------------------------------------------------------------


def export_tasks(cases_path: Path, out_path: Path, labels: Sequence[str]) -> dict[str, Any]:
    """Label Studio import JSON ([{"data": {...}}], one task per case) and label_config.xml beside it."""
    labels = _check_labels(labels)
    out_path = Path(out_path)
    tasks = [
        {
            "data": {
                "case_id": case["case_id"],
                "prompt": case.get("prompt") or "",
                "response": case.get("response") or "",
                "followup": case.get("followup") or "",
                "kinds": ", ".join(sorted(case.get("kinds") or [])),
                "topic": case.get("topic") or "",
            }
        }
        for case in read_case_rows(cases_path)
    ]
    config_path = out_path.with_name("label_config.xml")
    atomic_write_text(out_path, json.dumps(tasks, ensure_ascii=False, indent=1))
    atomic_write_text(config_path, label_config(labels))
    return {"tasks": len(tasks), "config": str(config_path), "path": str(out_path)}


def label_config(labels: Sequence[str]) -> str:
    """Labelling interface: the exchange, one label from the closed set, an optional corrected response.
    The names `label` and `corrected_response` are what import_annotations reads back."""
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return f"""<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Model response"/>
  <Text name="response" value="$response"/>
  <Header value="User follow-up (re-ask), if any"/>
  <Text name="followup" value="$followup"/>
  <Header value="Why this case was picked"/>
  <Text name="kinds" value="$kinds"/>
  <Choices name="label" toName="response" choice="single" showInLine="true" required="true">
{choices}
  </Choices>
  <Header value="Corrected response (what the model should have said)"/>
  <TextArea name="corrected_response" toName="response" rows="4" editable="true" maxSubmissions="1"/>
</View>
"""


# ---------------------------------------------------------------------------------------------------
# Reading annotation files
# ---------------------------------------------------------------------------------------------------


class _Bad(Exception):
    """A row that cannot be used; the message is the reason recorded in quarantine."""


def _annotation_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None, Any]]:
    """(row reference, fields or None, reason if unusable, raw record) for every rating in `path`.

    fields: item, annotator, label, corrected_response, created_at. Tasks without any annotation are
    reported with fields None and reason None (nothing to rate, nothing lost)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path)
    elif suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".json":
        yield from _label_studio_rows(path)
    else:
        raise ValueError(
            f"{path}: unknown annotation file type {suffix!r}; use a Label Studio export (.json), "
            "a CSV with header item,annotator,label[,corrected_response] (.csv) or JSONL of annotations (.jsonl)"
        )


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        item_col = next((c for c in _ITEM_COLUMNS if c in header), None)
        if item_col is None or "annotator" not in header or "label" not in header:
            raise ValueError(f"{path}: CSV header is {header}; expected item,annotator,label[,corrected_response]")
        while True:
            start = reader.line_num + 1
            try:
                raw = next(reader)
            except StopIteration:
                return
            ref = f"{path.name}:line {start}"
            if None in raw:  # more cells than header columns
                yield ref, None, "more cells than the header has columns", raw
                continue
            fields = {
                "item": (raw.get(item_col) or "").strip(),
                "annotator": (raw.get("annotator") or "").strip(),
                "label": (raw.get("label") or "").strip(),
                "corrected_response": raw.get("corrected_response") or None,
                "created_at": _parse_time(raw.get("created_at")),
            }
            yield ref, fields, _missing(fields), raw


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None, Any]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            ref = f"{path.name}:line {number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                yield ref, None, f"not valid JSON ({err.msg})", line.rstrip("\n")[:500]
                continue
            if not isinstance(raw, dict):
                yield ref, None, "not a JSON object", raw
                continue
            fields = _flat_fields(raw)
            yield ref, fields, _missing(fields), raw


def _label_studio_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None, Any]]:
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err.msg}, line {err.lineno}); expected a Label Studio export"
        ) from None
    if isinstance(tasks, dict):  # a single task
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: expected a list of Label Studio tasks, got {type(tasks).__name__}")
    for t, task in enumerate(tasks, start=1):
        if not isinstance(task, dict):
            yield f"{path.name}:task {t}", None, "not a JSON object", task
            continue
        if "annotations" not in task and "completions" not in task and "data" not in task:
            # JSON-MIN export, or a list of Annotation records: one flat row per rating
            fields = _flat_fields(task)
            yield f"{path.name}:row {t}", fields, _missing(fields), task
            continue
        data = task.get("data") or {}
        item = str(data.get("case_id") or "").strip()
        task_ref = f"{path.name}:task {t}" + (f" (id {task['id']})" if "id" in task else "")
        annotations = task.get("annotations") or task.get("completions") or []
        if not annotations:
            yield task_ref, None, None, None
            continue
        for a, ann in enumerate(annotations, start=1):
            ref = f"{task_ref} annotation {a}"
            raw = {"data": {"case_id": data.get("case_id")}, "annotation": ann}
            try:
                fields = _label_studio_fields(ann, item, task)
            except _Bad as bad:
                yield ref, None, str(bad), raw
                continue
            yield ref, fields, _missing(fields), raw


def _label_studio_fields(ann: Any, item: str, task: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(ann, dict):
        raise _Bad("annotation is not a JSON object")
    if ann.get("was_cancelled"):
        raise _Bad("annotation was cancelled (skipped) in Label Studio")
    choices: list[str] = []
    texts: list[str] = []
    for result in ann.get("result") or []:
        kind = result.get("type")
        value = result.get("value") or {}
        if kind == "choices":
            choices.extend(str(c) for c in value.get("choices") or [])
        elif kind == "textarea":
            texts.extend(str(t) for t in value.get("text") or [])
    if len(choices) > 1:
        raise _Bad(f"several labels chosen ({', '.join(choices)}); the label set is single-choice")
    return {
        "item": item,
        "task_id": task.get("id"),
        "annotator": _annotator_name(ann.get("completed_by")),
        "label": choices[0].strip() if choices else "",
        "corrected_response": "\n".join(texts) or None,
        "created_at": _parse_time(ann.get("created_at")),
    }


def _flat_fields(raw: dict[str, Any]) -> dict[str, Any]:
    label = raw.get("label", "")
    if isinstance(label, dict):  # JSON-MIN export: {"choices": [...]} when several were allowed
        label = label.get("choices") or []
    if isinstance(label, list):
        label = label[0] if len(label) == 1 else ", ".join(map(str, label)) if label else ""
    corrected = raw.get("corrected_response")
    if isinstance(corrected, list):
        corrected = "\n".join(map(str, corrected))
    return {
        "item": str(raw.get("case_id") or raw.get("item") or "").strip(),
        "annotator": _annotator_name(raw.get("annotator", raw.get("completed_by"))),
        "label": str(label or "").strip(),
        "corrected_response": corrected or None,
        "created_at": _parse_time(raw.get("created_at")),
    }


def _annotator_name(who: Any) -> str:
    """Label Studio writes completed_by as a user id, or as a user object in some versions."""
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
    return "" if who is None else str(who).strip()


def _missing(fields: dict[str, Any]) -> str | None:
    if not fields["item"]:
        return "no case id (data.case_id / item column is empty)"
    if not fields["annotator"]:
        return "no annotator (completed_by / annotator is empty)"
    if not fields["label"]:
        return "no label chosen"
    return None


def _parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------------


def import_annotations(paths: Sequence[Path], out_dir: Path, labels: Sequence[str]) -> dict[str, Any]:
    """Annotation files -> out_dir/annotations.jsonl (contracts.Annotation, one per case and annotator).

    Unusable rows (no case id, no annotator, no or unknown label, cancelled, malformed, superseded by a
    later rating of the same case by the same annotator) go to out_dir/quarantine.jsonl with file, row
    and reason. Files are read in the order given; within the same case and annotator the later wins.
    """
    allowed = set(_check_labels(labels))
    out_dir = Path(out_dir)
    kept: dict[tuple[str, str], tuple[Path, str, Annotation]] = {}
    quarantine: list[dict[str, Any]] = []
    unannotated = 0
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"annotation file {path} does not exist")
        for ref, fields, reason, raw in _annotation_rows(path):
            if fields is None and reason is None:
                unannotated += 1
                continue
            if reason is None and fields["label"] not in allowed:
                reason = f"unknown label {fields['label']!r}; allowed: {', '.join(sorted(allowed))}"
            if reason is None:
                try:
                    record = Annotation(
                        case_id=fields["item"],
                        annotator=fields["annotator"],
                        label=fields["label"],
                        corrected_response=fields["corrected_response"],
                        created_at=fields["created_at"],
                    )
                except ValidationError as err:
                    reason = "invalid annotation: " + "; ".join(
                        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
                    )
            if reason is not None:
                quarantine.append({"file": str(path), "row": ref, "reason": reason, "record": raw})
                continue
            pair = (record.case_id, record.annotator)
            if pair in kept:
                old_path, old_ref, old = kept[pair]
                quarantine.append(
                    {
                        "file": str(old_path),
                        "row": old_ref,
                        "reason": f"superseded by a later rating of the same case by the same annotator ({ref})",
                        "record": old.model_dump(mode="json"),
                    }
                )
            kept[pair] = (path, ref, record)

    records = [kept[pair][2] for pair in sorted(kept)]
    out_path = out_dir / "annotations.jsonl"
    quarantine_path = out_dir / "quarantine.jsonl"
    write_jsonl(out_path, records)
    write_jsonl(quarantine_path, quarantine)
    reasons = Counter(q["reason"].split(" (")[0].split(";")[0] for q in quarantine)
    return {
        "annotations": len(records),
        "items": len({r.case_id for r in records}),
        "annotators": len({r.annotator for r in records}),
        "quarantined": len(quarantine),
        "reasons": dict(reasons),
        "unannotated_tasks": unannotated,
        "path": str(out_path),
        "quarantine": str(quarantine_path),
    }


def read_ratings(path: Path) -> list[tuple[str, str, str]]:
    """(item, annotator, label) from a Label Studio export JSON, a CSV `item,annotator,label` or JSONL.

    Labels are free strings. A rating without a label is a missing rating and is left out (Krippendorff's
    alpha is built for those); a row without item or annotator, or with several labels, is an error
    naming the file and row. Tasks of a Label Studio export without data.case_id use the task id."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"annotation file {path} does not exist")
    ratings = []
    for ref, fields, reason, _ in _annotation_rows(path):
        if fields is None and reason is None:
            continue
        if fields is not None and not fields["item"] and fields.get("task_id") is not None:
            fields["item"] = str(fields["task_id"])
            reason = _missing(fields)
        if reason == "no label chosen" or (reason or "").startswith("annotation was cancelled"):
            continue
        if reason is not None:
            raise ValueError(f"{path}: {ref}: {reason}")
        ratings.append((fields["item"], fields["annotator"], fields["label"]))
    return ratings


def read_annotations(path: Path) -> list[Annotation]:
    """annotations.jsonl as written by import_annotations (or by the simulator)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(Annotation.model_validate_json(line))
            except ValidationError as err:
                raise ValueError(f"{path}:line {number}: not an annotation record: {err.errors()[0]['msg']}") from None
    return records


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(label) for label in labels]
    if not labels or len(set(labels)) != len(labels) or not all(label.strip() for label in labels):
        raise ValueError(f"annotation.labels must be a non-empty list of distinct, non-blank labels, got {labels}")
    return labels
