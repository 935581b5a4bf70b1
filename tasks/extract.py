"""Failure cases from a window of logs (DESIGN.md sections 3 and 8; `flywheel extract`).

A case is a logged exchange worth learning from: the model refused, the user re-asked (the case is the
prompt that was re-asked, its follow-up rides along), the user pressed thumbs-down, or the answer makes
claims the documentation does not support (`unsupported`, found by the configured verifier of
tasks/verify.py, so the next cycle learns the right answer or an honest refusal). One exchange can be
several: `kinds` is a set. The user id never leaves this module: it becomes a keyed hash.

Then the set is thinned so that annotators do not label the same thing twice and one noisy topic does
not swamp the training set:
1. exact duplicates: the same prompt after normalisation (NFKC, case-folded, punctuation and repeated
   whitespace removed);
2. near duplicates: Jaccard similarity of character shingles >= `extract.near_duplicate_threshold`,
   candidates from MinHash LSH (datasketch), confirmed by the exact Jaccard of the two shingle sets;
3. a per-topic cap. Production logs carry no topic, so one is derived from word frequencies (English
   stop words left out): a prompt's topic is, among its words that other cases share and that are at
   least twice as common among the cases as in the window's traffic (what the failures are about, not
   the template words every question uses), the one most cases share; a prompt with no such word is a
   topic of its own (labelled by its rarest word). A flood of failures about one product or error
   becomes one topic; scattered failures are not lumped together by a word like "price".
   The cap is the largest per-topic count c with c <= max_topic_share x (cases kept after capping),
   never below `extract.topic_cap_floor`; within a topic the cases to keep are chosen by most kinds
   first, then a fixed pseudo-random order (hash of case_id), so the cut is reproducible and not
   biased towards the start of the window.
Each duplicate group keeps its earliest case.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import ExtractSettings, LogsSettings, Settings, SignalsSettings
from tasks.contracts import Case, CaseKind, StageResult
from tasks.files import write_cases
from tasks.logs import load_logs
from tasks.signals import detect_reasks, detect_refusals
from tasks.text import normalise

KINDS: tuple[str, ...] = get_args(CaseKind)
USER_REF_CHARS = 16  # 64 bits of HMAC-SHA256: no collisions at any realistic user count
TOPIC_BACKGROUND_MAX = 50_000  # traffic prompts used for word frequencies; a seeded sample beyond that
MIN_TOPIC_LIFT = 2.0  # a topic word is at least twice as common among the cases as in the traffic


def user_ref(user_id: str, key: bytes) -> str:
    """Keyed hash of a user id (HMAC-SHA256, hex prefix). Without the key it cannot be reversed by
    hashing candidate ids, and the same user maps to the same ref wherever the key is the same.
    The CLI and flows pass the PII key (tasks.pii.load_pii_key)."""
    if not key:
        raise ValueError(
            "user_ref needs a non-empty secret key: an unkeyed hash of a user id can be reversed by "
            "hashing guesses (set the key env named by pii.key_env)"
        )
    # Domain-separated from the PII pseudonyms made with the same key (tasks/pii/).
    message = b"user_ref\x00" + str(user_id).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:USER_REF_CHARS]


def extract_cases(table: pa.Table, signals: SignalsSettings, settings: ExtractSettings, *, key: bytes,
                  out_path: Path, unsupported: Callable[[pa.Table], np.ndarray] | None = None) -> dict[str, Any]:
    """Cases from `table` (contracts.LOG_SCHEMA) written to `out_path` (.parquet: CASE_SCHEMA, else JSONL).
    `signals` decides what a refusal and a re-ask are (the monitoring detectors), `settings` the thinning,
    `unsupported` (the table, sorted by time -> a flag per row) which answers the docs do not support.

    Returns {cases, by_kind, duplicates_removed, exact_duplicates, near_duplicates, capped, read,
    flagged (by kind, before thinning), topics (largest kept topics), path}.
    """
    out_path = Path(out_path)
    if not key:
        user_ref("", key)  # raises the explanatory error before any work is done
    if table.num_rows:
        table = table.take(pc.sort_indices(table, sort_keys=[("ts", "ascending")]))
    n = table.num_rows

    if n:
        refusal = np.asarray(detect_refusals(table.column("response"), signals), dtype=bool)
        reask_of = np.asarray(detect_reasks(table, signals), dtype=np.int64)
        thumbs_down = pc.fill_null(pc.equal(table.column("feedback"), -1), False).to_numpy(zero_copy_only=False)
    else:
        refusal, reask_of, thumbs_down = np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, bool)
    flagged_unsupported = np.asarray(unsupported(table), dtype=bool) if unsupported is not None and n else np.zeros(n, bool)
    if len(flagged_unsupported) != n:
        raise ValueError(f"the verifier returned {len(flagged_unsupported)} flags for {n} rows")
    if len(refusal) != n or len(reask_of) != n:
        raise ValueError(f"signals returned {len(refusal)} refusal flags and {len(reask_of)} re-ask links for {n} rows")

    # The case of a re-ask is the earlier prompt; its first re-asking prompt is the follow-up.
    reask = np.zeros(n, dtype=bool)
    followup_of: dict[int, int] = {}
    for later in np.flatnonzero(reask_of >= 0):
        earlier = int(reask_of[later])
        if not 0 <= earlier < later:
            raise ValueError(f"detect_reasks returned row {earlier} for row {later}: expected an earlier row")
        reask[earlier] = True
        followup_of.setdefault(earlier, int(later))

    flagged_rows = np.flatnonzero(refusal | reask | thumbs_down | flagged_unsupported)
    flagged = {
        "refusal": int(refusal.sum()),
        "reask": int(reask.sum()),
        "thumbs_down": int(thumbs_down.sum()),
        "unsupported": int(flagged_unsupported.sum()),
    }
    cases = _build_cases(table, flagged_rows, (refusal, reask, thumbs_down, flagged_unsupported), followup_of, key)

    cases, exact_removed, near_removed = _deduplicate(cases, settings)
    prompts_all = table.column("prompt").to_pylist() if n else []
    topics = derive_topics([c.prompt for c in cases], background=prompts_all)
    cases = [c.model_copy(update={"topic": t}) for c, t in zip(cases, topics, strict=True)]
    cases, capped = _cap_topics(cases, settings)

    write_cases(cases, out_path)
    by_kind = {kind: sum(kind in c.kinds for c in cases) for kind in KINDS}
    topic_counts = Counter(c.topic for c in cases if c.topic is not None)
    return {
        "cases": len(cases),
        "by_kind": by_kind,
        "duplicates_removed": exact_removed + near_removed,
        "exact_duplicates": exact_removed,
        "near_duplicates": near_removed,
        "capped": capped,
        "read": n,
        "flagged": flagged,
        "topics": dict(topic_counts.most_common(10)),
        "path": str(out_path),
    }


def _build_cases(
    table: pa.Table,
    rows: np.ndarray,
    flags: tuple[np.ndarray, ...],  # one boolean column per kind, in KINDS order
    followup_of: dict[int, int],
    key: bytes,
) -> list[Case]:
    if len(rows) == 0:
        return []
    wanted = ["request_id", "ts", "user_id", "prompt", "response", "model_version"]
    records = table.select(wanted).take(pa.array(rows)).to_pylist()
    prompts = table.column("prompt")
    refs: dict[str, str] = {}
    cases = []
    for row, rec in zip(rows.tolist(), records, strict=True):
        kinds = [k for k, flag in zip(KINDS, (f[row] for f in flags), strict=True) if flag]
        uid = rec["user_id"]
        if uid not in refs:
            refs[uid] = user_ref(uid, key)
        follow = followup_of.get(row)
        cases.append(
            Case(
                case_id=hashlib.sha256(f"case:{rec['request_id']}".encode()).hexdigest()[:16],
                request_id=rec["request_id"],
                kinds=kinds,
                prompt=rec["prompt"],
                response=rec["response"],
                followup=prompts[follow].as_py() if follow is not None else None,
                ts=rec["ts"],
                user_ref=refs[uid],
                model_version=rec["model_version"],
            )
        )
    return cases


# -- duplicates ---------------------------------------------------------------------------------------

def shingles(text: str, size: int) -> set[str]:
    if len(text) <= size:
        return {text}
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def _deduplicate(cases: list[Case], settings: ExtractSettings) -> tuple[list[Case], int, int]:
    from datasketch import MinHash, MinHashLSH

    seen: set[str] = set()
    unique: list[tuple[Case, str]] = []
    for case in cases:
        norm = normalise(case.prompt)
        if norm in seen:
            continue
        seen.add(norm)
        unique.append((case, norm))
    exact_removed = len(cases) - len(unique)
    if not unique:
        return [], exact_removed, 0

    sets = [shingles(norm, settings.shingle_chars) for _, norm in unique]
    hashes = MinHash.bulk(
        ([s.encode("utf-8") for s in shingle_set] for shingle_set in sets),
        num_perm=settings.minhash_permutations,
        seed=1,
    )
    # LSH recall drops just below its threshold; ask it for a little more and let the exact Jaccard decide.
    lsh = MinHashLSH(
        threshold=max(0.05, settings.near_duplicate_threshold - 0.1), num_perm=settings.minhash_permutations
    )
    kept: list[Case] = []
    for i, ((case, _), mh) in enumerate(zip(unique, hashes, strict=True)):
        candidates = lsh.query(mh)
        if any(_jaccard(sets[i], sets[j]) >= settings.near_duplicate_threshold for j in candidates):
            continue
        lsh.insert(i, mh)
        kept.append(case)
    return kept, exact_removed, len(unique) - len(kept)


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# -- topics -------------------------------------------------------------------------------------------


def derive_topics(
    prompts: list[str], background: list[str] | None = None, *, min_lift: float = MIN_TOPIC_LIFT
) -> list[str | None]:
    """One topic word per prompt (see the module docstring).

    Candidates are the prompt's content words that at least two prompts of `prompts` share and that are
    at least `min_lift` times as common among `prompts` as in `background` (the window's whole traffic):
    words the failures are about, not template words every question uses. The topic is the candidate
    shared by most prompts (ties: higher lift, then alphabetical). A prompt without candidates gets its
    own rarest word, so it forms a topic of its own; one without content words gets None. With no
    background, or one equal to `prompts`, no word is over-represented and every prompt is on its own."""
    if not prompts:
        return []
    from sklearn.feature_extraction.text import CountVectorizer

    texts = [p or "" for p in prompts]
    background = [p or "" for p in background] if background else list(texts)
    if len(background) > TOPIC_BACKGROUND_MAX:
        pick = np.random.default_rng(0).choice(len(background), TOPIC_BACKGROUND_MAX, replace=False)
        background = [background[i] for i in np.sort(pick)]
    vectorizer = CountVectorizer(binary=True, stop_words="english", token_pattern=r"(?u)\b\w\w+\b")
    try:
        both = vectorizer.fit_transform(background + texts).tocsr()
    except ValueError:  # nothing but stop words and one-letter tokens anywhere
        return [None] * len(prompts)
    vocab = vectorizer.get_feature_names_out()
    cases = both[len(background) :]
    df_cases = np.asarray(cases.sum(axis=0)).ravel().astype(float)
    df_background = np.maximum(np.asarray(both[: len(background)].sum(axis=0)).ravel(), 1).astype(float)
    lift = (df_cases / len(texts)) / (df_background / len(background))
    rarity = -df_background  # the rarest word in the traffic is a prompt's most distinctive one
    candidate = (df_cases >= 2) & (lift >= min_lift)

    topics: list[str | None] = []
    for row in range(cases.shape[0]):
        cols = cases.indices[cases.indptr[row] : cases.indptr[row + 1]]
        if len(cols) == 0:
            topics.append(None)
            continue
        chosen = cols[candidate[cols]]
        if len(chosen):
            best = min(chosen, key=lambda j: (-df_cases[j], -lift[j], vocab[j]))
        else:
            best = min(cols, key=lambda j: (-rarity[j], vocab[j]))
        topics.append(str(vocab[best]))
    return topics


def topic_cap(counts: list[int], share: float, floor: int) -> int:
    """Largest c with c <= share * sum(min(n, c)); never below `floor`. No cap needed: max(counts)."""
    if not counts:
        return floor
    counts_arr = np.asarray(counts)
    best = 0
    # g(c) = share * sum(min(n, c)) - c is concave with g(0) = 0: the feasible c form one interval.
    for c in range(1, int(counts_arr.max()) + 1):
        if c <= share * np.minimum(counts_arr, c).sum() + 1e-9:
            best = c
        else:
            break
    return max(best, floor)


def _cap_topics(cases: list[Case], settings: ExtractSettings) -> tuple[list[Case], int]:
    groups: dict[str, list[int]] = {}
    singles = 0
    for i, case in enumerate(cases):
        if case.topic is None:
            singles += 1
        else:
            groups.setdefault(case.topic, []).append(i)
    # Cases without a topic count as topics of one each.
    counts = [len(g) for g in groups.values()] + [1] * singles
    cap = topic_cap(counts, settings.max_topic_share, settings.topic_cap_floor)
    drop: set[int] = set()
    for members in groups.values():
        if len(members) <= cap:
            continue
        ranked = sorted(members, key=lambda i: (-len(cases[i].kinds), cases[i].case_id))
        drop.update(ranked[cap:])
    return [c for i, c in enumerate(cases) if i not in drop], len(drop)


def extract_stage(log_files: Sequence[str], out_path: Path, *, logs: LogsSettings, signals: SignalsSettings,
                  settings: ExtractSettings, key: bytes, since: datetime | None, until: datetime | None,
                  quarantine: Path | None, grounding: Settings | None = None) -> StageResult:
    """The cycle's extraction stage: the window [since, until) of `log_files`, bad rows quarantined,
    cases written to `out_path`. With `grounding` (settings holding docs, verify, simulate, signals and
    paths; verify.verifier decides) answers the docs in force by `until` do not support become cases too."""
    start = time.perf_counter()
    loaded = load_logs(log_files, logs, quarantine=quarantine, since=since, until=until)
    found = extract_cases(loaded.table, signals, settings, key=key, out_path=out_path,
                          unsupported=unsupported_flags(grounding, until) if grounding is not None else None)
    counts = {"cases": found["cases"], "read": loaded.read, "quarantined": loaded.quarantined,
              "selected": found["read"], **{f"by_kind.{k}": v for k, v in found["by_kind"].items()},
              "duplicates_removed": found["duplicates_removed"], "capped": found["capped"]}
    return StageResult.of("extract", {"cases": out_path}, counts=counts, seconds=time.perf_counter() - start)


def unsupported_flags(grounding: Settings, until: datetime | None) -> Callable[[pa.Table], np.ndarray]:
    """A flag per row: the configured verifier (verify.verifier) found the answer unsupported by the docs
    in force by `until` (None: the newest docs)."""

    def flags(table: pa.Table) -> np.ndarray:
        from tasks.docs import load_docs
        from tasks.verify import make_verifier, verify_table

        rows, verdicts = verify_table(table, grounding, load_docs(grounding).at(until), make_verifier(grounding))
        out = np.zeros(table.num_rows, dtype=bool)
        out[rows] = [v.unsupported for v in verdicts]
        return out

    return flags
