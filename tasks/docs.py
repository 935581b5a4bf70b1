"""Documentation the answers are checked against: the shop's product and policy pages as snippets, the
version in force at a time, and retrieval of the snippets relevant to a question.

Sources (`docs.sources`): files, folders or globs of markdown (`.md`), text (`.txt`) and JSON documents.
A markdown page splits at its headings and blank lines, a text page at blank lines; every snippet keeps
its page's title (the first heading, else the file name). A JSON document is `{"title", "text"}`, a list
of those, or `{"documents": [...]}`.

Versions: a folder whose sub-folders are named by ISO date (`docs/2026-01-01/`, `docs/2026-02-16/`)
holds one complete documentation set per date, each in force from its date until the next; everything
else is in force always. The docs in force for a window are the newest set dated before the window's
end (`DocSet.at(end)`; the oldest set for a window that ends before any date), so a week is checked
against what was documented by its last day.

The embedded default (no sources) is the simulator's knowledge base written as documents, one snippet
per topic: knowledge base v1 in force before the launch week of `simulate` and v2 (v1 plus the launched
products and policies) from its first day on.

Retrieval (`docs.retrieval`): BM25 (`bm25s`, English stop words; Snowball stemming measured worse:
recall 0.86 against 0.92 at the same precision) or sentence embeddings
(the `[embeddings]` extra); `benchmarks/detector_quality.py` measures both.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks.config import Settings
from tasks.knowledge import load_knowledge_base

DOC_SUFFIXES = (".md", ".markdown", ".txt", ".json")
_DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")


class DocsError(ValueError):
    """Documentation that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Snippet:
    """One retrievable piece of documentation: a paragraph or section with its page's title."""

    doc_id: str  # the page: a file path (plus #n for JSON lists), or kb:<topic id>
    title: str
    text: str

    @property
    def full_text(self) -> str:
        return f"{self.title}. {self.text}" if self.title else self.text


# --------------------------------------------------------------------------------------------------
# Reading documents


def _markdown_snippets(doc_id: str, text: str, fallback_title: str) -> list[Snippet]:
    title, section, out, paragraph = fallback_title, "", [], []
    page_title: str | None = None

    def flush() -> None:
        if paragraph:
            body = " ".join(" ".join(paragraph).split())
            if body:
                heading = section if section and section != (page_title or title) else ""
                out.append(Snippet(doc_id, page_title or title, f"{heading}: {body}" if heading else body))
            paragraph.clear()

    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            flush()
            section = heading.group(1).strip()
            if page_title is None:
                page_title = section
            continue
        if not line.strip():
            flush()
            continue
        paragraph.append(line.strip())
    flush()
    return out


def _json_snippets(path: Path) -> list[Snippet]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DocsError(f"{path}: not valid JSON ({err}); a JSON document is {{\"title\", \"text\"}}, a list of "
                        "those, or {\"documents\": [...]}") from None
    if isinstance(data, dict) and "documents" in data:
        data = data["documents"]
    items = data if isinstance(data, list) else [data]
    out: list[Snippet] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise DocsError(f"{path}: document {i} has no 'text' string; each document needs 'text' (and may have "
                            "'title')")
        doc_id = f"{path}#{i}" if isinstance(data, list) else str(path)
        out.extend(_markdown_snippets(doc_id, item["text"], str(item.get("title") or path.stem)))
    return out


def read_documents(paths: Sequence[Path]) -> list[Snippet]:
    """Snippets of the given document files, in path order."""
    snippets: list[Snippet] = []
    for path in sorted(Path(p) for p in paths):
        if path.suffix.lower() == ".json":
            snippets.extend(_json_snippets(path))
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DocsError(f"{path}: not UTF-8 text; documentation pages must be UTF-8 markdown, text or JSON") from None
        snippets.extend(_markdown_snippets(str(path), text, path.stem.replace("_", " ").replace("-", " ")))
    return snippets


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES)


def knowledge_base_documents(data_dir: Path | None, version: str) -> list[Snippet]:
    """The simulator's knowledge base as documentation: one snippet per topic (its name and answer)."""
    kb = load_knowledge_base(data_dir, version)  # type: ignore[arg-type]
    return [Snippet(f"kb:{topic.id}", topic.name, topic.answer) for topic in kb.topics]


# --------------------------------------------------------------------------------------------------
# Versions


@dataclass
class DocSet:
    """Documentation versions: (in force from, snippets), oldest first; `None` means always."""

    versions: list[tuple[datetime | None, list[Snippet]]]
    retrieval: str = "bm25"
    embedding_model: str = "all-MiniLM-L6-v2"
    _indexes: dict[int, Corpus] = field(default_factory=dict, repr=False)

    def index_at(self, moment: datetime | None) -> int:
        """Which version is in force just before `moment` (None: the newest)."""
        chosen = 0
        for i, (since, _) in enumerate(self.versions):
            if moment is None or since is None or since < moment:
                chosen = i
        return chosen

    def at(self, moment: datetime | None = None) -> Corpus:
        """The corpus in force just before `moment` (a window's exclusive end); None: the newest."""
        i = self.index_at(moment)
        if i not in self._indexes:
            self._indexes[i] = Corpus(self.versions[i][1], self.retrieval, self.embedding_model)
        return self._indexes[i]

    def label(self, moment: datetime | None = None) -> str:
        since = self.versions[self.index_at(moment)][0]
        return "always" if since is None else f"in force from {since.date().isoformat()}"


def _as_utc(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.utc)


def load_docs(settings: Settings) -> DocSet:
    """The documentation the settings name (`docs`), or the embedded knowledge base (module docstring)."""
    docs = settings.docs
    if not docs.sources:
        sim = settings.simulate
        launch = _as_utc(date.fromisoformat(sim.start)) + timedelta(weeks=sim.launch_week - 1)
        versions: list[tuple[datetime | None, list[Snippet]]] = [
            (None, knowledge_base_documents(settings.paths.data_dir, "v1")),
            (launch, knowledge_base_documents(settings.paths.data_dir, "v2")),
        ]
        return DocSet(versions, docs.retrieval, docs.embedding_model)
    always: list[Path] = []
    dated: dict[date, list[Path]] = {}
    for source in docs.sources:
        matches = [Path(p) for p in sorted(glob.glob(str(Path(source).expanduser())))] or [Path(source).expanduser()]
        for match in matches:
            if not match.exists():
                raise DocsError(f"docs.sources: {source} does not exist; point it at a folder, file or glob of .md, "
                                ".txt or .json documentation")
            subdirs = [d for d in match.iterdir() if d.is_dir() and _DATE_DIR.match(d.name)] if match.is_dir() else []
            if subdirs:
                for sub in subdirs:
                    dated.setdefault(date.fromisoformat(sub.name), []).extend(_files_under(sub))
                others = [p for p in match.iterdir() if p.is_file() and p.suffix.lower() in DOC_SUFFIXES]
                always.extend(others)
            else:
                always.extend(_files_under(match))
    base = read_documents(always)
    versions = [(None, base)] if not dated or base else []
    for day in sorted(dated):
        versions.append((_as_utc(day), base + read_documents(dated[day])))
    if not any(snips for _, snips in versions):
        raise DocsError(f"docs.sources {docs.sources} hold no .md, .txt or .json document with text")
    return DocSet(versions, docs.retrieval, docs.embedding_model)


# --------------------------------------------------------------------------------------------------
# Retrieval


class Corpus:
    """One documentation version, indexed for retrieval."""

    def __init__(self, snippets: Sequence[Snippet], retrieval: str = "bm25",
                 embedding_model: str = "all-MiniLM-L6-v2") -> None:
        self.snippets = list(snippets)
        self.retrieval = retrieval
        self._embedding_model = embedding_model
        self._bm25 = None
        self._vectors: np.ndarray | None = None
        if retrieval not in ("bm25", "embeddings"):
            raise DocsError(f"docs.retrieval must be bm25 or embeddings, got {retrieval!r}")

    def __len__(self) -> int:
        return len(self.snippets)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(queries x snippets) relevance: BM25 scores, or cosine similarities of embeddings."""
        if not self.snippets:
            return np.zeros((len(queries), 0))
        if self.retrieval == "embeddings":
            from tasks.signals import embed_texts

            if self._vectors is None:
                self._vectors = embed_texts([s.full_text for s in self.snippets], self._embedding_model)
            q = embed_texts(list(queries), self._embedding_model)
            return np.asarray(q @ self._vectors.T)
        import bm25s

        if self._bm25 is None:
            self._bm25 = bm25s.BM25()
            self._bm25.index(bm25s.tokenize([s.full_text for s in self.snippets], stopwords="en", show_progress=False),
                             show_progress=False)
        tokens = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        return np.vstack([self._bm25.get_scores(t) if t else np.zeros(len(self.snippets)) for t in tokens])

    def retrieve(self, queries: Sequence[str], k: int, min_score: float = 0.0) -> list[list[tuple[Snippet, float]]]:
        """The `k` best snippets per query (best first) scoring above `min_score`."""
        matrix = self.scores(queries)
        out = []
        for row in matrix:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([(self.snippets[i], float(row[i])) for i in order if row[i] > min_score])
        return out


def describe(docset: DocSet) -> list[dict[str, Any]]:
    """The versions for people: since, snippet and page counts."""
    return [{"since": since.date().isoformat() if since else None, "snippets": len(snips),
             "pages": len({s.doc_id for s in snips})} for since, snips in docset.versions]
