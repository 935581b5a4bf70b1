"""Refusal detection for model outputs: phrase patterns, a shipped classifier, and the verdict per
response: none, partial (refusal language, but the response goes on to answer) or full.

Patterns (`signals.refusal_patterns`): case-insensitive regular expressions with Unicode word
boundaries, in every supported language (en, ko, fr, es, de, ja, zh): "I don't know", inability
("I cannot <verb>"), declining ("must decline"), apology-led refusals, "as an AI language model",
policy and moral judgements ("it is not appropriate", "illegal and unethical"). They run over all
rows as one RE2 alternation through Arrow where the syntax allows it (see `_re2_boundaries`).

Classifier (`signals.refusal_classifier`, "module:function" over a list of responses returning
booleans or scores in [0, 1]). The default, `tasks.refusal:shipped_classifier`, is a logistic
regression over hashed word unigrams and bigrams (`refusal_features`), trained on the dev split of
the public GPTFuzz refusal set plus ordinary assistant answers of OpenAssistant conversations
(`benchmarks/train_refusal_classifier.py` rebuilds it), stored as plain arrays in
`data/refusal/classifier.npz` (no pickle) and shipped in the wheel.

Verdict, with a classifier (score s, any pattern match = a cue). A short response (at most
`refusal_short_chars` characters) is decided by the patterns alone: with a cue it has no room for an
answer beside the refusal, without one it gives the classifier too few words to go on ("I can't wait
to see it!"). A longer one:
- full refusal: a cue and s >= `refusal_threshold`, or no cue and s >= `refusal_threshold_without_cue`
  (policy lectures and role-play deflections that never say "I can't");
- partial refusal: a cue, but not a full refusal (e.g. "As GPT I cannot ... As DAN: here is how ...");
- none otherwise.
Without a classifier, a pattern match is a full refusal (and there are no partial ones).
"""

from __future__ import annotations

import functools
import importlib
import re
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from tasks.config import SHIPPED_DATA, SignalsSettings

NONE, PARTIAL, FULL = 0, 1, 2
SHIPPED_CLASSIFIER = SHIPPED_DATA / "refusal" / "classifier.npz"
FEATURE_BITS = 17  # hashed feature space of the shipped classifier: 131k buckets
_CHUNK_ROWS = 1 << 20  # rows per Arrow compute call when work is spread over threads


def as_string_array(values: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """A column of texts as a ChunkedArray of Arrow strings (nulls kept)."""
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


# --------------------------------------------------------------------------------------------------
# patterns


# Constructs whose meaning differs between Python's `re` and RE2 (Arrow's regex engine) beyond `\b`,
# or that RE2 lacks: patterns using them are matched with Python alone (over distinct values).
_RE2_UNSAFE = re.compile(r"\\[wWdDsSBAZ]|\(\?[=!<]|\(\?P=|\\[1-9]|\[\[:|\\[pP]")


@functools.lru_cache(maxsize=32)
def _compiled(patterns: tuple[str, ...], key: str) -> tuple[re.Pattern[str] | None, str | None, bool]:
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
            raise ValueError(f"{key}: {pattern!r} is not a valid regular expression: {err}") from None
    exact = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE | re.MULTILINE)
    joined = "|".join(f"(?:{p})" for p in patterns)
    if _RE2_UNSAFE.search(joined):
        return exact, None, False
    pieces = [p if p.isascii() else _re2_boundaries(p) for p in patterns]
    translated = None if None in pieces else "|".join(f"(?:{p})" for p in pieces)
    loose = translated if translated is not None else re.sub(r"(?<!\\)((?:\\\\)*)\\b", r"\1", joined)
    loose = f"(?m){loose}"
    try:
        pc.match_substring_regex(pa.array(["probe"]), loose, ignore_case=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return exact, None, False
    return exact, loose, translated is not None


_NOT_WORD = r"[^\p{L}\p{N}_]"


def _re2_boundaries(pattern: str) -> str | None:
    """RE2's `\b` is ASCII-only: "no sé\b" would never match there. A pattern written in ASCII
    keeps its `\b`s (`_compiled` does not call this for it). A `\b` next to an ASCII letter
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


def map_chunks(func, arr: pa.ChunkedArray) -> list:
    """Apply an Arrow compute function per slice, on up to two threads (Arrow releases the GIL)."""
    pieces: list[pa.Array] = []
    for chunk in arr.chunks:
        for start in range(0, len(chunk), _CHUNK_ROWS):
            pieces.append(chunk.slice(start, _CHUNK_ROWS))
    if len(pieces) <= 1:
        return [func(p) for p in pieces]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(func, pieces))


def _python_match(values: pa.ChunkedArray | pa.Array, pattern: re.Pattern[str]) -> np.ndarray:
    """Python regex over unique values only: responses repeat a lot (templated refusals)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = values.dictionary_encode()
    search = pattern.search
    verdicts = np.fromiter(
        (s is not None and search(_straight_quotes(s)) is not None for s in encoded.dictionary.to_pylist()),
        dtype=bool,
        count=len(encoded.dictionary),
    )
    codes = encoded.indices
    out = np.zeros(len(values), dtype=bool)
    valid = np.flatnonzero(~np.asarray(codes.is_null().to_numpy(zero_copy_only=False), dtype=bool))
    if len(valid):
        out[valid] = verdicts[codes.to_numpy(zero_copy_only=False)[valid].astype(np.int64)]
    return out


def _straight_quotes(text: str) -> str:
    return text.replace("\u2019", "'") if "\u2019" in text else text


def match_patterns(
    texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, patterns: Sequence[str], key: str
) -> np.ndarray:
    """True per text that any of `patterns` matches (case-insensitive, "^" at any line start, word
    boundaries as Python's Unicode `\\b`, evaluated by RE2 over Arrow where it can be; a typographic
    apostrophe counts as "'"). Null: False. `key` names the setting in error messages."""
    arr = as_string_array(texts)
    result = np.zeros(len(arr), dtype=bool)
    exact, loose, re2_exact = _compiled(tuple(patterns), key)
    if exact is None or len(arr) == 0:
        return result
    if loose is None:
        return _python_match(arr, exact)

    def hits(a: pa.Array) -> pa.Array:
        straight = pc.replace_substring(a, "\u2019", "'")
        return pc.fill_null(pc.match_substring_regex(straight, loose, ignore_case=True), False)

    flags = np.concatenate([h.to_numpy(zero_copy_only=False) for h in map_chunks(hits, arr)]).astype(bool, copy=False)
    if re2_exact:
        return flags
    candidates = np.flatnonzero(flags)
    if len(candidates):
        result[candidates] = _python_match(arr.take(pa.array(candidates)), exact)
    return result


def match_refusal_patterns(
    responses: Sequence[str | None] | pa.Array | pa.ChunkedArray, settings: SignalsSettings
) -> np.ndarray:
    """True per response with refusal language (`signals.refusal_patterns`)."""
    return match_patterns(responses, settings.refusal_patterns, "signals.refusal_patterns")


# --------------------------------------------------------------------------------------------------
# the classifier: hashed word unigrams + bigrams, logistic regression


# Punctuation trimmed from both ends of a whitespace-separated word (ASCII, quotes, CJK marks): a
# regex split would be ~3x slower over a week of responses. Inner apostrophes stay ("can't").
PUNCTUATION = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum() and chr(c) != "@") + (
    "\u201c\u201d\u2018\u2019\u00ab\u00bb\u00bf\u00a1\u2026\u3001\u3002\uff0c\uff1f\uff01\uff1a"
)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _word_hashes(words: list[str], bits: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """Per distinct word: a 32-bit hash (for bigrams) and its unigram features. A word in a script
    written without spaces (Chinese, Japanese; Korean runs too) contributes its character bigrams,
    so a long run of such text is not one opaque token."""
    mask = (1 << bits) - 1
    word_hash = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    indptr, indices = [0], []
    for w in words:
        if _CJK.search(w) and len(w) > 2:
            indices.extend({zlib.crc32(f"c{w[i:i + 2]}".encode()) & mask for i in range(len(w) - 1)})
        else:
            indices.append(zlib.crc32(f"u{w}".encode()) & mask)
        indptr.append(len(indices))
    matrix = sp.csr_matrix((np.ones(len(indices)), np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
                           shape=(len(words), 1 << bits))
    return word_hash, matrix


def refusal_features(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, bits: int = FEATURE_BITS) -> sp.csr_matrix:
    """Binary hashed word unigram + bigram features of each text, L2-normalised rows (n x 2**bits).

    Lowercased, typographic apostrophes straightened, split on whitespace, punctuation trimmed from
    both ends of each word (Arrow kernels). Python runs once per distinct word; bigram buckets are mixed from
    the two words' hashes with numpy. The same function builds training and serving features."""
    arr = as_string_array(texts).combine_chunks()
    n = len(arr)
    lowered = pc.replace_substring(pc.utf8_lower(pc.fill_null(arr, "")), "\u2019", "'")
    lists = pc.utf8_split_whitespace(lowered)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.utf8_trim(pc.list_flatten(lists), characters=PUNCTUATION)
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    parents = parents[keep]
    encoded = flat.filter(pa.array(keep)).dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    words = encoded.dictionary.to_pylist()
    word_hash, word_features = _word_hashes(words, bits)
    doc_words = sp.csr_matrix((np.ones(len(codes)), (parents, codes)), shape=(n, len(words)))
    unigrams = doc_words @ word_features
    same_doc = parents[1:] == parents[:-1]
    left, right = word_hash[codes[:-1][same_doc]], word_hash[codes[1:][same_doc]]
    with np.errstate(over="ignore"):
        mixed = ((left << np.uint64(32)) | right) * _MIX
    buckets = (mixed >> np.uint64(64 - bits)).astype(np.int64)
    bigrams = sp.csr_matrix((np.ones(len(buckets)), (parents[1:][same_doc], buckets)), shape=(n, 1 << bits))
    features = (unigrams + bigrams).tocsr()
    features.data[:] = 1.0  # presence, not counts: a long answer is not more of a refusal
    norms = np.sqrt(np.asarray(features.sum(axis=1)).ravel())
    scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    features = sp.diags(scale) @ features
    return features.tocsr()


@functools.lru_cache(maxsize=4)
def load_classifier(path: Path = SHIPPED_CLASSIFIER) -> tuple[np.ndarray, float, int]:
    """(weights, intercept, feature bits) of a classifier stored by the training script as plain
    arrays in an .npz file (loaded without pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"refusal classifier {path} is missing: rebuild it with "
                                "`python benchmarks/train_refusal_classifier.py`, or set signals.refusal_classifier: null")
    with np.load(path, allow_pickle=False) as stored:
        weights = stored["weights"].astype(np.float64)
        intercept = float(stored["intercept"])
        bits = int(stored["bits"])
    if weights.shape != (1 << bits,):
        raise ValueError(f"refusal classifier {path}: {weights.shape[0]} weights for {bits} feature bits")
    return weights, intercept, bits


def score_responses(responses: Sequence[str | None] | pa.Array | pa.ChunkedArray, path: Path = SHIPPED_CLASSIFIER) -> np.ndarray:
    """Probability of a full refusal per response under the classifier stored at `path`."""
    weights, intercept, bits = load_classifier(path)
    logits = refusal_features(responses, bits) @ weights + intercept
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))


def shipped_classifier(responses: list[str]) -> np.ndarray:
    """The `signals.refusal_classifier` shipped with llm-flywheel (scores in [0, 1])."""
    return score_responses(responses)


def _load_classifier(spec: str):
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"signals.refusal_classifier must look like 'module:function', got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"signals.refusal_classifier {spec!r} cannot be loaded: {err}") from None


def _classifier_scores(classify, texts: list[str], settings: SignalsSettings) -> np.ndarray:
    scores = np.asarray(list(classify(texts)), dtype=np.float64)
    if len(scores) != len(texts):
        raise ValueError(f"signals.refusal_classifier {settings.refusal_classifier!r} returned {len(scores)} "
                         f"verdicts for {len(texts)} responses")
    return scores


# --------------------------------------------------------------------------------------------------
# verdicts


def classify_refusals(
    responses: Sequence[str | None] | pa.Array | pa.ChunkedArray, settings: SignalsSettings
) -> np.ndarray:
    """Per response: NONE (0), PARTIAL (1) or FULL (2) refusal, by the rules in the module docstring.
    The classifier scores only the responses whose verdict its score can change (a custom one once per
    distinct response; the shipped one is vectorised, so deduplicating would cost more than it saves).
    Null: NONE."""
    arr = as_string_array(responses)
    cue = match_refusal_patterns(arr, settings)
    if not settings.refusal_classifier or len(arr) == 0:
        return np.where(cue, FULL, NONE).astype(np.int8)
    classify = _load_classifier(settings.refusal_classifier)  # a bad spec fails even if nothing needs a score
    lengths = np.concatenate([pc.fill_null(pc.utf8_length(c), 0).to_numpy(zero_copy_only=False) for c in arr.chunks])
    short = lengths <= settings.refusal_short_chars
    no_cue_bar = settings.refusal_threshold_without_cue
    todo = np.flatnonzero(~short & (cue if no_cue_bar is None else True))
    scores = np.zeros(len(arr))
    if len(todo):
        texts = arr.take(pa.array(todo)).combine_chunks()
        if classify is shipped_classifier:
            scores[todo] = score_responses(texts)
        else:
            encoded = texts.dictionary_encode()
            distinct = _classifier_scores(classify, encoded.dictionary.to_pylist(), settings)
            scores[todo] = distinct[encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    full = cue & (short | (scores >= settings.refusal_threshold))
    if no_cue_bar is not None:
        full |= ~short & (scores >= no_cue_bar)
    return np.where(full, FULL, np.where(cue, PARTIAL, NONE)).astype(np.int8)


def detect_refusals(
    responses: Sequence[str | None] | pa.Array | pa.ChunkedArray, settings: SignalsSettings
) -> np.ndarray:
    """True per response that is a full refusal (`classify_refusals` == FULL)."""
    return classify_refusals(responses, settings) == FULL
