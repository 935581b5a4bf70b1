"""The shop's knowledge base: the products and policies a support assistant should know
(`data/knowledge_base/v1.json`, plus `v2.json` for what launches later), its refusal phrases, and the
products nobody knows.

Read by the traffic simulator (what users ask about, how an answer is judged), the embedded base model's
build (what it is pre-trained on) and the learning-quality benchmark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks.config import SHIPPED_DATA


@dataclass(frozen=True)
class Topic:
    id: str
    kind: str  # "product" | "policy"
    name: str
    answer: str
    facts: tuple[str, ...]
    questions: tuple[str, ...]
    kb_version: str  # the version that introduced it


@dataclass
class KnowledgeBase:
    version: str
    topics: tuple[Topic, ...]
    refusals: dict[str, tuple[str, ...]]
    unknown_products: tuple[str, ...]
    unknown_questions: tuple[str, ...]
    launch_note: str = ""
    by_id: dict[str, Topic] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_id = {topic.id: topic for topic in self.topics}

    def topic(self, topic_id: str) -> Topic | None:
        return self.by_id.get(topic_id)

    def all_refusals(self) -> tuple[str, ...]:
        return tuple(phrase for phrases in self.refusals.values() for phrase in phrases)


def load_knowledge_base(data_dir: Path | None, version: Literal["v1", "v2"]) -> KnowledgeBase:
    """The knowledge base as of `version`: v1's topics, plus v2's launched topics for "v2"."""
    if version not in ("v1", "v2"):
        raise ValueError(f"knowledge base version {version!r} does not exist: use 'v1' or 'v2'")
    base = Path(data_dir or SHIPPED_DATA) / "knowledge_base"
    raw = {v: _read_kb_file(base / f"{v}.json") for v in (("v1",) if version == "v1" else ("v1", "v2"))}
    topics: list[Topic] = []
    seen: dict[str, str] = {}
    for v, data in raw.items():
        for i, item in enumerate(data["topics"]):
            where = f"{base / (v + '.json')}: topics[{i}]"
            missing = [k for k in ("id", "kind", "name", "answer", "facts", "questions") if k not in item]
            if missing:
                raise ValueError(f"{where} lacks {', '.join(missing)}: every topic needs id, kind, name, answer, facts, questions")
            if item["id"] in seen:
                raise ValueError(f"{where}: topic id {item['id']!r} is already used in {seen[item['id']]}.json; ids must be unique")
            seen[item["id"]] = v
            topics.append(Topic(id=item["id"], kind=item["kind"], name=item["name"], answer=item["answer"],
                                facts=tuple(item["facts"]), questions=tuple(dict.fromkeys(item["questions"])),
                                kb_version=v))
    v1 = raw["v1"]
    return KnowledgeBase(
        version=version,
        topics=tuple(topics),
        refusals={lang: tuple(phrases) for lang, phrases in v1["refusals"].items()},
        unknown_products=tuple(v1.get("unknown_products", ())),
        unknown_questions=tuple(v1.get("unknown_questions") or ("Tell me about the {product}.", "How much is the {product}?")),
        launch_note=raw.get("v2", {}).get("launch_note", ""),
    )


def _read_kb_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"knowledge base file {path} not found: point paths.data_dir at the shipped data/ folder")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("topics"), list):
        raise ValueError(f"{path} must be an object with a 'topics' list")
    return data
