"""Quality signals over a window of production logs (DESIGN.md section 8).

Four signals, overall and per model_version, every rate with a Wilson 95% interval:

- refusal: multilingual phrase patterns (case-insensitive, Unicode word boundaries) plus an optional
  classifier (`signals.refusal_classifier`, "module:function" over a list of responses);
- re-ask: the same user sends a similar prompt within `reask_window_s` of the end of the previous
  response (previous ts + latency_ms when present). Rows are sorted by (user, ts) once and each prompt
  is compared only with that user's previous prompt: O(n log n), never all pairs. Similarity: char
  3-gram (char_wb) TF-IDF cosine with the IDF fitted once on a sample of the window, computed
  word-factorised (a document's n-grams are the sum of its words' n-grams, so Python touches each
  distinct word once and sparse products do the rest), or sentence embeddings when configured;
- thumbs: up, down, down-rate over rated records and feedback coverage over all records;
- hallucination risk: self-consistency of k samples through the `Generator` interface for a sample of
  prompts, plus a reference check where the knowledge base knows the answer.

Everything is vectorised over Arrow/numpy/scipy.sparse (`benchmarks/monitoring_throughput.py` times
10M records of one week against a plain pandas implementation).
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from tasks.config import SignalsSettings
from tasks.contracts import Generator

EMBEDDINGS_HINT = "pip install llm-flywheel[embeddings]"
# Character n-gram sizes of the TF-IDF similarity (like sklearn's analyzer="char_wb", ngram_range=(3, 3)):
# as good as (3, 4) on the simulator's re-asks (benchmarks/detector_quality.py) at half the work.
NGRAMS = (3,)
_HASH_BITS = 18  # hashed n-gram space: 262k buckets; a collision moves a cosine by ~0.001
_CHUNK_ROWS = 1 << 20  # rows per Arrow compute call when work is spread over threads
_FEATURE_CHUNK_DOCS = 50_000  # documents per sparse TF-IDF block (bounds memory)
_IDF_SAMPLE_ROWS = 50_000  # prompts of the window (a seeded sample) the re-ask IDF is fitted on


# --------------------------------------------------------------------------------------------------
# statistics


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n. With n == 0 nothing is known: (0.0, 1.0)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


def _rate(k: int, n: int) -> tuple[float | None, list[float] | None]:
    """A rate and its Wilson interval; both None (not 0, not NaN) when the denominator is 0."""
    if n == 0:
        return None, None
    low, high = wilson_interval(int(k), int(n))
    return float(k) / float(n), [low, high]


# --------------------------------------------------------------------------------------------------
# refusals


def _as_string_array(values: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        arr = values
    elif isinstance(values, pa.Array):
        arr = pa.chunked_array([values])
    else:
        arr = pa.chunked_array([pa.array(list(values), type=pa.string())])
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    if not pa.types.is_string(arr.type):
        if arr.null_count == len(arr):
            arr = arr.cast(pa.string())
        else:
            raise TypeError(f"expected a column of strings, got {arr.type}")
    return arr


# Constructs whose meaning differs between Python's `re` and RE2 (Arrow's regex engine) beyond `\b`,
# or that RE2 lacks: patterns using them are matched with Python alone (over distinct values).
_RE2_UNSAFE = re.compile(r"\\[wWdDsSBAZ]|\(\?[=!<]|\(\?P=|\\[1-9]|\[\[:|\\[pP]")


@functools.lru_cache(maxsize=32)
def _compiled_refusals(patterns: tuple[str, ...]) -> tuple[re.Pattern[str] | None, str | None, bool]:
    """One alternation for Python (exact semantics, Unicode word boundaries) and, where safe, one for
    RE2 (Arrow's regex engine, fast over all rows): the same decisions when `_re2_boundaries` can
    translate the word boundaries, else a superset without `\\b` (dropping a zero-width assertion
    only adds matches) whose few candidates Python confirms."""
    if not patterns:
        return None, None, False
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"signals.refusal_patterns: {pattern!r} is not a valid regular expression: {err}") from None
    exact = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
    joined = "|".join(f"(?:{p})" for p in patterns)
    if _RE2_UNSAFE.search(joined):
        return exact, None, False
    translated = _re2_boundaries(joined)
    loose = translated if translated is not None else re.sub(r"(?<!\\)((?:\\\\)*)\\b", r"\1", joined)
    try:
        pc.match_substring_regex(pa.array(["probe"]), loose, ignore_case=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return exact, None, False
    return exact, loose, translated is not None


_NOT_WORD = r"[^\p{L}\p{N}_]"


def _re2_boundaries(pattern: str) -> str | None:
    """RE2's `\b` is ASCII-only: "no sé\b" would never match there. A `\b` next to an ASCII letter
    or digit of the pattern is kept (the same decision as Python's, except for a non-ASCII letter
    glued to an English word in the text, e.g. "knowé"); one next to a non-ASCII letter that opens or
    closes an alternative becomes "start or a non-word character" / "a non-word character or end",
    which decides a match the same way. (Rewriting every `\b` like that makes RE2 ~500x slower.)
    Any other `\b`: None, and then RE2 only pre-filters and Python decides."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            if pattern[i + 1] != "b":
                out.append(pattern[i : i + 2])
                i += 2
                continue
            before, after = "".join(out), pattern[i + 2 :]
            prev_char, next_char = before[-1:], after[:1]
            if (next_char.isascii() and next_char.isalnum()) or (prev_char.isascii() and prev_char.isalnum()):
                out.append("\\b")
            elif (before == "" or before.endswith(("|", "(?:", "("))) and next_char.isalnum():
                out.append(f"(?:^|{_NOT_WORD})")
            elif (after == "" or after.startswith(("|", ")"))) and prev_char.isalnum():
                out.append(f"(?:{_NOT_WORD}|$)")
            else:
                return None
            i += 2
            continue
        out.append(pattern[i])
        i += 1
    return "".join(out)


def _map_chunks(func, arr: pa.ChunkedArray) -> list:
    """Apply an Arrow compute function per slice, on up to two threads (Arrow releases the GIL)."""
    pieces: list[pa.Array] = []
    for chunk in arr.chunks:
        for start in range(0, len(chunk), _CHUNK_ROWS):
            pieces.append(chunk.slice(start, _CHUNK_ROWS))
    if len(pieces) <= 1:
        return [func(p) for p in pieces]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(func, pieces))


def _load_classifier(spec: str):
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"signals.refusal_classifier must look like 'module:function', got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"signals.refusal_classifier {spec!r} cannot be loaded: {err}") from None


def detect_refusals(
    responses: Sequence[str] | pa.Array | pa.ChunkedArray, settings: SignalsSettings
) -> np.ndarray:
    """True per response that refuses: any `refusal_patterns` match (case-insensitive, word-boundary
    aware: Python's Unicode `\\b`, evaluated by RE2 over Arrow where it can be, see `_re2_boundaries`)
    or, when configured, the classifier (run once per distinct response) says so. Null: False."""
    arr = _as_string_array(responses)
    n = len(arr)
    result = np.zeros(n, dtype=bool)
    if n == 0:
        return result
    exact, loose, re2_exact = _compiled_refusals(tuple(settings.refusal_patterns))
    if exact is not None:
        if loose is not None:
            hits = _map_chunks(lambda a: pc.fill_null(pc.match_substring_regex(a, loose, ignore_case=True), False), arr)
            flags = np.concatenate([h.to_numpy(zero_copy_only=False) for h in hits]).astype(bool, copy=False)
            candidates = np.flatnonzero(flags)
            if re2_exact:
                result |= flags
            elif len(candidates):
                values = arr.take(pa.array(candidates))
                result[candidates] = _python_match(values, exact)
        else:
            result |= _python_match(arr, exact)
    if settings.refusal_classifier:
        classify = _load_classifier(settings.refusal_classifier)
        encoded = arr.combine_chunks().dictionary_encode() if n else arr
        uniques = encoded.dictionary.to_pylist()
        verdicts = np.asarray(list(classify(uniques)), dtype=bool)
        if len(verdicts) != len(uniques):
            raise ValueError(
                f"signals.refusal_classifier {settings.refusal_classifier!r} returned {len(verdicts)} "
                f"verdicts for {len(uniques)} responses"
            )
        codes = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        valid = ~np.asarray(encoded.indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        result[valid] |= verdicts[codes[valid]]
    return result


def _python_match(values: pa.ChunkedArray | pa.Array, pattern: re.Pattern[str]) -> np.ndarray:
    """Python regex over unique values only: responses repeat a lot (templated refusals)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = values.dictionary_encode()
    search = pattern.search
    verdicts = np.fromiter(
        (s is not None and search(s) is not None for s in encoded.dictionary.to_pylist()),
        dtype=bool,
        count=len(encoded.dictionary),
    )
    codes = encoded.indices
    out = np.zeros(len(values), dtype=bool)
    valid = np.flatnonzero(~np.asarray(codes.is_null().to_numpy(zero_copy_only=False), dtype=bool))
    if len(valid):
        out[valid] = verdicts[codes.to_numpy(zero_copy_only=False)[valid].astype(np.int64)]
    return out


# --------------------------------------------------------------------------------------------------
# text similarity: char n-gram TF-IDF cosine, vectorised (no Python loop per document)


# Punctuation trimmed from both ends of a word (ASCII and common Unicode quotes / CJK marks).
_TRIM = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum() and chr(c) != "@") + (
    "\u201c\u201d\u2018\u2019\u00ab\u00bb\u00bf\u00a1\u2026\u3001\u3002\uff0c\uff1f\uff01\uff1a"
)
_DIGITS = re.compile(r"\d+")
_FEATURES = (1 << _HASH_BITS) - 1


def _words(docs: pa.Array) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Words of each document: (document index per word, word code per word, distinct words).
    Lowercased, split on whitespace, punctuation trimmed from both ends: Arrow kernels only."""
    lists = pc.utf8_split_whitespace(pc.utf8_lower(pc.fill_null(docs, "")))
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.utf8_trim(pc.list_flatten(lists), characters=_TRIM)
    keep = pc.not_equal(flat, "")
    encoded = flat.filter(keep).dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return parents[keep.to_numpy(zero_copy_only=False)], codes, encoded.dictionary.to_pylist()


def _word_ngrams(words: list[str]) -> sp.csr_matrix:
    """Hashed char n-gram counts of each distinct word, exactly as sklearn's analyzer="char_wb"
    (the word padded with one space each side; a padded word shorter than n counts once). Digit runs
    become "0" and a word holding "@" (an e-mail address) becomes "@": personal data must not make
    two prompts look alike or different. Python runs once per distinct word, never per document."""
    indptr = [0]
    indices: list[int] = []
    crc = zlib.crc32
    for word in words:
        if "@" in word:
            word = "@"
        elif any(ch.isdigit() for ch in word):
            word = _DIGITS.sub("0", word)
        padded = f" {word} "
        length = len(padded)
        for n in NGRAMS:
            if length <= n:
                indices.append(crc(f"{n}{padded}".encode()) & _FEATURES)
                continue
            for i in range(length - n + 1):
                indices.append(crc(f"{n}{padded[i:i + n]}".encode()) & _FEATURES)
        indptr.append(len(indices))
    matrix = sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float64), np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
        shape=(len(words), 1 << _HASH_BITS),
    )
    matrix.sum_duplicates()
    return matrix


def _doc_word_matrix(parents: np.ndarray, codes: np.ndarray, n_docs: int, n_words: int) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(codes)), (parents, codes)), shape=(n_docs, n_words))
    matrix.sum_duplicates()
    return matrix


class _TfidfVectors:
    """Char n-gram TF-IDF vectors (L2-normalised) of a set of documents, never materialised for all
    documents at once: char_wb n-grams never cross a word, so a document's counts are the sum of its
    words' counts, and rows are built (document-word matrix @ word-n-gram matrix) only for the pairs
    being compared. IDF fitted once: on an IDF corpus when given, else on the documents."""

    def __init__(self, docs: pa.Array, idf_corpus: pa.Array | None = None):
        self.n_docs = len(docs)
        all_docs = docs if idf_corpus is None else pa.concat_arrays([docs, idf_corpus])
        parents, codes, words = _words(all_docs)
        word_ngrams = _word_ngrams(words)
        doc_words = _doc_word_matrix(parents, codes, len(all_docs), len(words))
        # document frequency per feature over the corpus (the documents themselves when none is given)
        corpus_rows = doc_words if idf_corpus is None else doc_words[self.n_docs :]
        df = np.zeros(1 << _HASH_BITS)
        for start in range(0, corpus_rows.shape[0], _FEATURE_CHUNK_DOCS):
            block = corpus_rows[start : start + _FEATURE_CHUNK_DOCS] @ word_ngrams
            df += np.bincount(block.indices, minlength=1 << _HASH_BITS)
        idf = np.log((1.0 + corpus_rows.shape[0]) / (1.0 + df)) + 1.0  # sklearn's smooth_idf
        self.doc_words = doc_words[: self.n_docs].tocsr()
        self.word_features = (word_ngrams @ sp.diags(idf)).tocsr()

    def _rows(self, docs: np.ndarray) -> sp.csr_matrix:
        rows = (self.doc_words[docs] @ self.word_features).tocsr()
        rows.sort_indices()  # canonical rows: scipy's element-wise product then takes its fast merge path
        norms = np.sqrt(np.bincount(np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr)),
                                    weights=rows.data * rows.data, minlength=rows.shape[0]))
        scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
        rows.data *= np.repeat(scale, np.diff(rows.indptr))
        return rows

    def cosine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise cosine of documents a[i] and b[i], in blocks: no all-pairs matrix."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        out = np.zeros(len(a), dtype=np.float64)
        for start in range(0, len(a), _FEATURE_CHUNK_DOCS):
            left = self._rows(a[start : start + _FEATURE_CHUNK_DOCS])
            right = self._rows(b[start : start + _FEATURE_CHUNK_DOCS])
            out[start : start + len(left.indptr) - 1] = np.asarray(left.multiply(right).sum(axis=1)).ravel()
            # two documents without a single word (empty or punctuation only) are the same text
            empty = (np.diff(left.indptr) == 0) & (np.diff(right.indptr) == 0)
            out[start : start + len(empty)][empty] = 1.0
        return np.clip(out, 0.0, 1.0)


@functools.lru_cache(maxsize=2)
def _sentence_model(name: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError(
            f"the 'embeddings' backend needs sentence-transformers: {EMBEDDINGS_HINT} "
            "(or set signals.reask_backend: tfidf)"
        ) from None
    return SentenceTransformer(name)


def embed_texts(texts: Sequence[str], model_name: str) -> np.ndarray:
    """Unit-norm sentence embeddings (optional extra `llm-flywheel[embeddings]`)."""
    model = _sentence_model(model_name)
    vectors = model.encode(list(texts), batch_size=256, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def pair_similarity(
    left: Sequence[str] | pa.Array,
    right: Sequence[str] | pa.Array,
    settings: SignalsSettings,
    *,
    idf_corpus: Sequence[str] | pa.Array | pa.ChunkedArray | None = None,
) -> np.ndarray:
    """Similarity in [0, 1] of left[i] and right[i] with the configured backend. Identical texts
    (after lowercasing) score 1 without any vector work.

    TF-IDF: the IDF is fitted on `idf_corpus` (typically a sample of the window's prompts, so that
    greetings and boilerplate weigh little), else on the compared texts."""
    left_arr = _as_string_array(left).combine_chunks()
    right_arr = _as_string_array(right).combine_chunks()
    if len(left_arr) != len(right_arr):
        raise ValueError("pair_similarity needs two sequences of the same length")
    out = np.zeros(len(left_arr), dtype=np.float64)
    if len(left_arr) == 0:
        return out
    both = pa.chunked_array([left_arr, right_arr]).combine_chunks()
    encoded = pc.utf8_trim_whitespace(pc.utf8_lower(pc.fill_null(both, ""))).dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    a, b = codes[: len(left_arr)], codes[len(left_arr) :]
    same = a == b
    out[same] = 1.0
    todo = np.flatnonzero(~same)
    if len(todo) == 0:
        return out
    # only the distinct texts that still need a comparison are vectorised
    needed, inverse = np.unique(np.concatenate([a[todo], b[todo]]), return_inverse=True)
    texts = encoded.dictionary.take(pa.array(needed))
    ia, ib = inverse[: len(todo)], inverse[len(todo) :]
    if settings.reask_backend == "embeddings":
        vectors = embed_texts(texts.to_pylist(), settings.embedding_model)
        out[todo] = np.clip(np.einsum("ij,ij->i", vectors[ia], vectors[ib]), 0.0, 1.0)
    else:
        corpus = None if idf_corpus is None else _as_string_array(idf_corpus).combine_chunks()
        out[todo] = _TfidfVectors(texts, corpus).cosine(ia, ib)
    return out


# --------------------------------------------------------------------------------------------------
# re-asks


def _timestamps_us(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("us", tz=column.type.tz))
    return column.cast(pa.int64()).to_numpy().astype(np.int64)


def _dictionary_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """Integer codes (-1 for null) and the distinct values of a column."""
    encoded = column.combine_chunks().dictionary_encode()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary.to_pylist()


def _user_time_order(users: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order by (user, ts), stable: one int64 key when it fits, a lexsort otherwise."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    t0 = ts.min()
    span = int(ts.max()) - int(t0) + 1
    n_users = int(users.max()) + 2
    if n_users * span < (1 << 62):
        return np.argsort((users + 1) * span + (ts - t0), kind="stable")
    return np.lexsort((ts, users))


def detect_reasks(table: pa.Table, settings: SignalsSettings) -> np.ndarray:
    """Per row: -1, or the row index of the same user's previous prompt that this prompt re-asks.

    A prompt re-asks its predecessor (same user_id, order by ts) when it arrives at most
    `reask_window_s` after the previous response ended (previous ts + latency_ms; ts alone when the
    latency is unknown; a prompt sent before the response ended counts too) and its text is similar:
    similarity >= `reask_similarity` (char n-gram TF-IDF cosine, IDF fitted on a sample of the
    window's prompts, or embeddings), or >= `reask_similarity_after_refusal` when the previous
    response was a refusal (a refused user who writes again within seconds is retrying, usually in
    other words). Null users never match.
    """
    n = table.num_rows
    result = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return result
    users, _ = _dictionary_codes(table.column("user_id"))
    ts = _timestamps_us(table.column("ts"))
    if "latency_ms" in table.column_names:
        latency = table.column("latency_ms").cast(pa.float64()).fill_null(0.0).to_numpy()
        latency = np.nan_to_num(latency, nan=0.0)
        ends = ts + np.round(np.maximum(latency, 0.0) * 1000.0).astype(np.int64)
    else:
        ends = ts
    order = _user_time_order(users, ts)
    prev, cur = order[:-1], order[1:]
    window_us = int(round(settings.reask_window_s * 1_000_000))
    candidate = (users[cur] == users[prev]) & (users[cur] >= 0) & (ts[cur] - ends[prev] <= window_us)
    pairs = np.flatnonzero(candidate)
    if len(pairs) == 0:
        return result
    prompts = table.column("prompt")
    before, after = prev[pairs], cur[pairs]
    left = prompts.take(pa.array(before))
    right = prompts.take(pa.array(after))
    threshold = np.full(len(pairs), settings.reask_similarity)
    if settings.reask_similarity_after_refusal is not None and "response" in table.column_names:
        refused = detect_refusals(table.column("response").take(pa.array(before)), settings)
        threshold[refused] = min(settings.reask_similarity, settings.reask_similarity_after_refusal)
    similar = threshold <= 0.0  # a bar of 0 needs no similarity at all
    todo = np.flatnonzero(~similar)
    if len(todo):
        corpus = None
        if settings.reask_backend == "tfidf":
            sample = np.random.default_rng(0).choice(n, size=min(n, _IDF_SAMPLE_ROWS), replace=False)
            corpus = prompts.take(pa.array(np.sort(sample)))
        similarity = pair_similarity(left.take(pa.array(todo)), right.take(pa.array(todo)), settings, idf_corpus=corpus)
        similar[todo] = similarity >= threshold[todo]
    result[after[similar]] = before[similar]
    return result


# --------------------------------------------------------------------------------------------------
# hallucination risk


_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _reference_agreement(sample: str, reference: str) -> float:
    """Share of the reference's distinct word tokens that the sample contains (recall of facts)."""
    ref_tokens = set(_WORD.findall(reference.lower()))
    if not ref_tokens:
        return 1.0
    return len(ref_tokens & set(_WORD.findall((sample or "").lower()))) / len(ref_tokens)


def self_consistency(
    generator: Generator,
    prompts: Sequence[str],
    settings: SignalsSettings,
    references: Sequence[str | None] | None = None,
    seed: int = 0,
) -> dict:
    """Self-consistency over `consistency_samples` samples per prompt at `consistency_temperature`:
    the mean pairwise similarity (char n-gram TF-IDF cosine) of the samples. A score below
    `consistency_threshold` puts the prompt at risk. Consistency is not factuality: where a reference
    answer is given, the samples' recall of its word tokens is checked as well (below the same
    threshold: a mismatch). Per-prompt entries carry the prompt's index, never its text."""
    prompts = list(prompts)
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"self_consistency: {len(references)} references for {len(prompts)} prompts")
    k = settings.consistency_samples
    per_prompt: list[dict[str, Any]] = []
    if prompts:
        outputs = generator.generate(prompts, n=k, temperature=settings.consistency_temperature, seed=seed)
        if len(outputs) != len(prompts):
            raise ValueError(f"generator returned {len(outputs)} answers for {len(prompts)} prompts")
        samples = [[s if isinstance(s, str) else "" for s in (out or [])] for out in outputs]
        texts = [s for group in samples for s in group]
        firsts = np.cumsum([0] + [len(g) for g in samples])
        left, right, owner = [], [], []
        for i, group in enumerate(samples):
            for x in range(len(group)):
                for y in range(x + 1, len(group)):
                    left.append(firsts[i] + x)
                    right.append(firsts[i] + y)
                    owner.append(i)
        if left:
            sims = pair_similarity(
                [texts[j] for j in left], [texts[j] for j in right], settings.model_copy(update={"reask_backend": "tfidf"})
            )
        else:
            sims = np.zeros(0)
        owner_arr = np.asarray(owner, dtype=np.int64)
        sums = np.bincount(owner_arr, weights=sims, minlength=len(prompts))
        counts = np.bincount(owner_arr, minlength=len(prompts))
        for i in range(len(prompts)):
            score = float(sums[i] / counts[i]) if counts[i] else (1.0 if len(samples[i]) == 1 else 0.0)
            entry: dict[str, Any] = {
                "index": i,
                "samples": len(samples[i]),
                "score": score,
                "at_risk": bool(score < settings.consistency_threshold),
                "reference_agreement": None,
                "reference_mismatch": None,
            }
            reference = references[i] if references is not None else None
            if reference:
                agreement = float(np.mean([_reference_agreement(s, reference) for s in samples[i]])) if samples[i] else 0.0
                entry["reference_agreement"] = agreement
                entry["reference_mismatch"] = bool(agreement < settings.consistency_threshold)
            per_prompt.append(entry)
    n = len(per_prompt)
    at_risk = sum(e["at_risk"] for e in per_prompt)
    checked = [e for e in per_prompt if e["reference_agreement"] is not None]
    mismatches = sum(e["reference_mismatch"] for e in checked)
    flagged = sum(e["at_risk"] or bool(e["reference_mismatch"]) for e in per_prompt)
    at_risk_rate, at_risk_ci = _rate(at_risk, n)
    mismatch_rate, mismatch_ci = _rate(mismatches, len(checked))
    flagged_rate, flagged_ci = _rate(flagged, n)
    return {
        "model_version": getattr(generator, "model_version", None),
        "prompts": n,
        "samples_per_prompt": k,
        "temperature": settings.consistency_temperature,
        "threshold": settings.consistency_threshold,
        "mean_score": float(np.mean([e["score"] for e in per_prompt])) if n else None,
        "at_risk_count": int(at_risk),
        "at_risk_rate": at_risk_rate,
        "at_risk_rate_ci": at_risk_ci,
        "reference_checked": len(checked),
        "mean_reference_agreement": (
            float(np.mean([e["reference_agreement"] for e in checked])) if checked else None
        ),
        "reference_mismatch_count": int(mismatches),
        "reference_mismatch_rate": mismatch_rate,
        "reference_mismatch_rate_ci": mismatch_ci,
        "flagged_count": int(flagged),
        "flagged_rate": flagged_rate,
        "flagged_rate_ci": flagged_ci,
        "per_prompt": per_prompt,
    }


# --------------------------------------------------------------------------------------------------
# all signals


def _summary(records: int, refusals: int, reasks: int, up: int, down: int) -> dict[str, Any]:
    rated = up + down
    out: dict[str, Any] = {"records": int(records)}
    out["refusal_count"] = int(refusals)
    out["refusal_rate"], out["refusal_rate_ci"] = _rate(refusals, records)
    out["reask_count"] = int(reasks)
    out["reask_rate"], out["reask_rate_ci"] = _rate(reasks, records)
    out["thumbs_up"] = int(up)
    out["thumbs_down"] = int(down)
    out["rated"] = int(rated)
    out["thumbs_down_rate"], out["thumbs_down_rate_ci"] = _rate(down, rated)
    out["feedback_coverage"], out["feedback_coverage_ci"] = _rate(rated, records)
    return out


def compute_signals(
    table: pa.Table,
    settings: SignalsSettings,
    *,
    generator: Generator | None = None,
    references: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict:
    """The four signals over a window of logs (a table in contracts.LOG_SCHEMA), overall and per
    model_version. Rates are None when their denominator is 0 (e.g. no feedback at all).

    Re-asks count against the model version whose answer was re-asked (the earlier row), so the
    per-version counts add up to the overall one. `hallucination` is None without a generator; with
    one, `consistency_prompts` rows are sampled (seeded) and their prompts checked through it;
    `references` maps a prompt's text to the answer the knowledge base knows for it.
    """
    missing = [c for c in ("user_id", "ts", "prompt", "response", "model_version") if c not in table.column_names]
    if missing:
        raise ValueError(f"compute_signals: the log table lacks column(s) {missing}; expected contracts.LOG_SCHEMA")
    n = table.num_rows
    refusal = detect_refusals(table.column("response"), settings)
    reask_of = detect_reasks(table, settings)
    if "feedback" in table.column_names:
        feedback = table.column("feedback").cast(pa.int8()).fill_null(0).to_numpy()
    else:
        feedback = np.zeros(n, dtype=np.int8)
    up_mask = feedback == 1
    down_mask = feedback == -1
    reask_rows = np.flatnonzero(reask_of >= 0)

    result = _summary(n, int(refusal.sum()), len(reask_rows), int(up_mask.sum()), int(down_mask.sum()))

    versions, names = _dictionary_codes(table.column("model_version"))
    by_version: dict[str, Any] = {}
    if n:
        slots = versions + 1  # null version -> slot 0
        size = len(names) + 1
        records = np.bincount(slots, minlength=size)
        refusals = np.bincount(slots, weights=refusal, minlength=size)
        reasks = np.bincount(slots[reask_of[reask_rows]], minlength=size)
        ups = np.bincount(slots, weights=up_mask, minlength=size)
        downs = np.bincount(slots, weights=down_mask, minlength=size)
        labels = ["<unknown>"] + [str(v) for v in names]
        for slot in np.argsort(labels, kind="stable"):
            if records[slot] == 0:
                continue
            by_version[labels[slot]] = _summary(
                int(records[slot]), int(refusals[slot]), int(reasks[slot]), int(ups[slot]), int(downs[slot])
            )
    result["by_model_version"] = by_version

    result["hallucination"] = None
    if generator is not None and settings.consistency_prompts > 0 and n:
        rng = np.random.default_rng(seed)
        rows = rng.permutation(n)
        prompts_col = table.column("prompt")
        chosen: list[str] = []
        seen: set[str] = set()
        for start in range(0, n, 4 * settings.consistency_prompts):
            block = prompts_col.take(pa.array(rows[start : start + 4 * settings.consistency_prompts])).to_pylist()
            for prompt in block:
                if prompt and prompt not in seen:
                    seen.add(prompt)
                    chosen.append(prompt)
                    if len(chosen) == settings.consistency_prompts:
                        break
            if len(chosen) == settings.consistency_prompts:
                break
        refs = [references.get(p) for p in chosen] if references else None
        result["hallucination"] = self_consistency(generator, chosen, settings, refs, seed=seed)
    return result
