"""The Label Studio round trip: cases out as tasks to label, annotation files back in as records
(DESIGN.md sections 3 and 8).

export_tasks        cases -> Label Studio import file (tasks.json) + label_config.xml beside it
read_ratings        Label Studio export JSON (any number of annotators), CSV or JSONL, judged by one set of
                    rules: the usable ratings, and every row set aside with its reason (Ratings)
import_annotations  read_ratings -> annotations.jsonl; the rows set aside go to quarantine.jsonl
read_annotations    annotations.jsonl back as contracts.Annotation records
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


def _annotation_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None, Any]]:
    """(row reference, fields or None, reason if unusable, raw record) for every rating in `path`.

    fields: item, annotator, label, corrected_response, created_at, as far as the row has them (a row
    that cannot be used still names its annotator where it can). Tasks without any annotation are
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
            fields = {
                "item": (raw.get(item_col) or "").strip(),
                "annotator": (raw.get("annotator") or "").strip(),
                "label": (raw.get("label") or "").strip(),
                "corrected_response": raw.get("corrected_response") or None,
                "created_at": _parse_time(raw.get("created_at")),
            }
            if None in raw:  # more cells than header columns
                yield ref, fields, "more cells than the header has columns", raw
                continue
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
                yield ref, {}, f"not valid JSON ({err.msg})", line.rstrip("\n")[:500]
                continue
            if not isinstance(raw, dict):
                yield ref, {}, f"not a JSON object ({_kind_of(raw)})", raw
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
            yield f"{path.name}:task {t}", {}, f"not a JSON object ({_kind_of(task)})", task
            continue
        if "annotations" not in task and "completions" not in task and "data" not in task:
            # JSON-MIN export, or a list of Annotation records: one flat row per rating
            fields = _flat_fields(task)
            yield f"{path.name}:row {t}", fields, _missing(fields), task
            continue
        data = task.get("data") or {}
        task_ref = f"{path.name}:task {t}" + (f" (id {task['id']})" if "id" in task else "")
        annotations = task.get("annotations") or task.get("completions") or []
        if not isinstance(annotations, list):
            reason = f"malformed export: annotations is {_kind_of(annotations)}, expected a list of annotations"
            yield task_ref, {}, reason, {"id": task.get("id"), "annotations": annotations}
            continue
        if not annotations:
            yield task_ref, None, None, None
            continue
        for a, ann in enumerate(annotations, start=1):
            ref = f"{task_ref} annotation {a}"
            raw = {"data": {"case_id": data.get("case_id")} if isinstance(data, dict) else f"<{_kind_of(data)}>",
                   "annotation": ann}
            fields, reason = _label_studio_fields(ann, data, task)
            yield ref, fields, reason or _missing(fields), raw


def _label_studio_fields(ann: Any, data: Any, task: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The fields of one Label Studio annotation, and why it cannot be used (None when it can). Only the
    shape Label Studio writes is read: anything else is named in the reason, never guessed at."""
    if not isinstance(ann, dict):
        return {}, f"malformed export: the annotation is {_kind_of(ann)}, expected an object"
    fields: dict[str, Any] = {
        "item": str(data.get("case_id") or "").strip() if isinstance(data, dict) else "",
        "task_id": task.get("id"),
        "annotator": _annotator_name(ann.get("completed_by")),
        "label": "",
        "corrected_response": None,
        "created_at": _parse_time(ann.get("created_at")),
    }
    if not isinstance(data, dict):
        return fields, f"malformed export: the task's data is {_kind_of(data)}, expected an object with case_id"
    if ann.get("was_cancelled"):
        return fields, "annotation was cancelled (skipped) in Label Studio"
    results = ann.get("result") or []
    if not isinstance(results, list):
        return fields, f"malformed export: result is {_kind_of(results)}, expected a list of result objects"
    choices: list[str] = []
    texts: list[str] = []
    for n, result in enumerate(results, start=1):
        if not isinstance(result, dict):
            return fields, f"malformed export: result item {n} is {_kind_of(result)}, expected an object"
        value = result.get("value") or {}
        if not isinstance(value, dict):
            return fields, f"malformed export: result item {n}: value is {_kind_of(value)}, expected an object"
        kind = result.get("type")
        if kind == "choices":
            chosen = value.get("choices") or []
            if not isinstance(chosen, list):
                return fields, (f"malformed export: result item {n}: choices is {_kind_of(chosen)}, expected a list "
                                'of labels such as ["acceptable"]')
            choices.extend(str(c) for c in chosen)
        elif kind == "textarea":
            text = value.get("text") or []
            if not isinstance(text, list):
                return fields, f"malformed export: result item {n}: text is {_kind_of(text)}, expected a list of strings"
            texts.extend(str(t) for t in text)
    if len(choices) > 1:
        shown = ", ".join(_clip(c, 40) for c in choices[:5]) + (", ..." if len(choices) > 5 else "")
        return fields, f"several labels chosen ({shown}); the label set is single-choice"
    fields["label"] = choices[0].strip() if choices else ""
    fields["corrected_response"] = "\n".join(texts) or None
    return fields, None


def _kind_of(value: Any) -> str:
    """What a JSON value is, for a reason ("a string", "a list", ...); never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), "a number")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
# One set of rules for import and agreement
# ---------------------------------------------------------------------------------------------------


@dataclass
class Ratings:
    """Annotation files judged by the one set of rules both `annotate import` and `agreement` use.

    kept       (file, row, record): the usable ratings, one per case and annotator (the later wins)
    set_aside  {file, row, reason, annotator, record} for every row that cannot be used: malformed, no
               case id / annotator / label, a label outside annotation.labels, several labels, cancelled,
               or superseded by a later rating of the same case by the same annotator
    unannotated  tasks nobody labelled (nothing to rate, nothing lost)
    """

    kept: list[tuple[Path, str, Annotation]]
    set_aside: list[dict[str, Any]]
    unannotated: int


def reason_kind(reason: str) -> str:
    """The reason without its details ("unknown label", "annotation was cancelled"), for counts."""
    return reason.split(":")[0].split(" (")[0].split(";")[0]


def read_ratings(paths: Sequence[Path], labels: Sequence[str]) -> Ratings:
    """Judge every rating in `paths` (read in the order given) against the closed label set `labels`."""
    allowed = set(_check_labels(labels))
    kept: dict[tuple[str, str], tuple[Path, str, Annotation]] = {}
    set_aside: list[dict[str, Any]] = []
    unannotated = 0
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"annotation file {path} does not exist")
        for ref, fields, reason, raw in _annotation_rows(path):
            if fields is None and reason is None:
                unannotated += 1
                continue
            if reason is None and fields["label"] not in allowed:
                reason = (f"unknown label: {_clip(fields['label'], 60)!r} is not in annotation.labels "
                          f"({', '.join(sorted(allowed))})")
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
                set_aside.append({"file": str(path), "row": ref, "reason": reason,
                                  "annotator": (fields or {}).get("annotator") or None, "record": raw})
                continue
            pair = (record.case_id, record.annotator)
            if pair in kept:
                old_path, old_ref, old = kept[pair]
                set_aside.append({"file": str(old_path), "row": old_ref, "annotator": old.annotator,
                                  "reason": f"superseded: a later rating of the same case by the same annotator ({ref})",
                                  "record": old.model_dump(mode="json")})
            kept[pair] = (path, ref, record)
    return Ratings([kept[pair] for pair in sorted(kept)], set_aside, unannotated)


# ---------------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------------


def import_annotations(paths: Sequence[Path], out_dir: Path, labels: Sequence[str]) -> dict[str, Any]:
    """Annotation files -> out_dir/annotations.jsonl (contracts.Annotation, one per case and annotator).

    Rows `read_ratings` sets aside go to out_dir/quarantine.jsonl with file, row and reason. Files are
    read in the order given; within the same case and annotator the later wins.
    """
    ratings = read_ratings(paths, labels)
    out_dir = Path(out_dir)
    records = [record for _, _, record in ratings.kept]
    out_path = out_dir / "annotations.jsonl"
    quarantine_path = out_dir / "quarantine.jsonl"
    write_jsonl(out_path, records)
    write_jsonl(quarantine_path, ratings.set_aside)
    return {
        "annotations": len(records),
        "items": len({r.case_id for r in records}),
        "annotators": len({r.annotator for r in records}),
        "quarantined": len(ratings.set_aside),
        "reasons": dict(Counter(reason_kind(q["reason"]) for q in ratings.set_aside)),
        "unannotated_tasks": ratings.unannotated,
        "path": str(out_path),
        "quarantine": str(quarantine_path),
    }


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
