"""Input drift between a reference prompt set and a current window (DESIGN.md section 8).

Prompts are discretised into bins: by default the reference vocabulary (its `vocab_size` most frequent
word tokens) plus one out-of-vocabulary bucket; optionally k-means clusters of sentence embeddings
fitted on the reference. Both histograms get `smoothing` pseudo-counts per bin, then we report
KL(current || reference) against the bands (< same_below: "same", > drift_above: "drift", between:
"slight"), the Jensen-Shannon distance (base 2, in [0, 1]) and the PSI.

Plug-in KL is biased upward even without any drift, by about (K-1)/2 (1/n + 1/m). The null baseline
measures that bias: `null_resamples` times, a pseudo-reference and a pseudo-current window are drawn
from the reference with replacement, of the real sizes m and n, and `null_kl` is the `null_quantile`
of their KL. Real prompts come in conversations and sessions whose prompts share words, so the
sampling variance of a window is larger than that of independent prompts: the reference is resampled
by GROUP (block bootstrap; `null_resample_by`: session, else user, from the logs; a prompt file's
"group" field), so a conversation's prompts travel together, as a prompt's tokens do. For the same
reason a token enters the vocabulary only when at least two groups use it: a word only one
conversation uses is that conversation's own, and counts as new (OOV) on both sides. Without groups
(a plain prompt list, or null_resample_by: prompt) each prompt is its own group.

A prompt counts with at most `max_prompt_tokens` tokens (its first ones): one pasted document of
20,000 words must not outweigh a thousand ordinary questions in the histogram.

Current windows larger than `max_current_prompts` are binned from a seeded uniform sample of that
many prompts (n_current still reports the whole window, n_current_binned the sample, and the null
baseline uses the sample's size): at a million prompts the KL's sampling noise is ~1e-4, far below
the bands, so counting more only costs time.

Alert rule: alert = band in {"slight", "drift"} and kl > null_kl. Both conditions are needed: the band
alone fires on small samples (pure bias), the null baseline alone fires on huge samples where a
statistically real but tiny change (KL 0.01) is not worth a retraining. On a no-change week the
null-quantile condition alone is false with probability 1 - null_quantile (1% by default) and the band
condition removes most of the rest; benchmarks/detector_quality.py measures both the false-alarm rate
and the detection of the simulated product launch. Fewer than `min_prompts` prompts on either side:
band "insufficient", no alert, whatever the numbers.

Explanations are PII-safe: while tokenising, e-mail addresses, URLs and any token containing a digit
are replaced by <email>, <url> and <num>, so no address, phone, card, order or account number can
become a term. A term is only named when it is purely alphabetic (or one of those placeholders) and
occurs in at least `explain_min_prompts` distinct prompts of the side it is counted on (k-anonymity: a
name or handle typed by one user does not qualify); the rest stays in the "<oov>" bucket. Example
prompts are rendered from their tokens with every token that is not a nameable term replaced by "*".
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from tasks.config import DriftSettings

OOV = "<oov>"
PLACEHOLDERS = ("<email>", "<url>", "<num>")
_CHUNK_ROWS = 1 << 20
_CANDIDATE_TERMS = 200  # new (out-of-vocabulary) tokens considered for naming in an explanation


# --------------------------------------------------------------------------------------------------
# input


GROUP_FIELDS = ("group", "conversation_id", "session_id", "user_id")  # a prompt file's group, first found


def load_prompt_records(path: Path) -> tuple[list[str], list[str | None]]:
    """Prompts from a file, and each prompt's group (None when the file has none): JSONL with a
    "prompt" field per line (.jsonl/.ndjson, or any file whose first non-blank character is "{") and
    optionally one of GROUP_FIELDS, Parquet with a "prompt" column (and optionally one of those), else
    plain text with one prompt per line. Blank lines and empty prompts are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist: pass a JSONL file with a 'prompt' field "
                                "or a text file with one prompt per line")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "prompt" not in table.column_names:
            raise ValueError(f"{path}: a Parquet prompt file needs a 'prompt' column, found {table.column_names}")
        field = next((f for f in GROUP_FIELDS if f in table.column_names), None)
        prompts = table.column("prompt").to_pylist()
        groups = table.column(field).cast(pa.string()).to_pylist() if field else [None] * len(prompts)
        kept = [(p, g) for p, g in zip(prompts, groups) if p]
        return [p for p, _ in kept], [g for _, g in kept]
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix.lower() in (".jsonl", ".ndjson") or stripped.startswith("{"):
        prompts, groups = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg}); expected one object "
                                 "with a 'prompt' field per line") from None
            prompt = row.get("prompt") if isinstance(row, dict) else row if isinstance(row, str) else None
            if not isinstance(prompt, str):
                raise ValueError(f"{path}, line {number}: no 'prompt' string field; each line needs "
                                 '{"prompt": "..."} (a chat log? pass it as logs, see `flywheel drift --help`)')
            if prompt:
                group = next((row[f] for f in GROUP_FIELDS if isinstance(row, dict) and row.get(f) is not None), None)
                prompts.append(prompt)
                groups.append(None if group is None else str(group))
        return prompts, groups
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    return prompts, [None] * len(prompts)


def load_prompts(path: Path) -> list[str]:
    """The prompts of a prompt file (see load_prompt_records)."""
    return load_prompt_records(path)[0]


def prompt_groups(table: pa.Table, by: str) -> list[str] | None:
    """The null baseline's group of each row of a log table (contracts.LOG_SCHEMA): by "session" the
    session id where there is one, else the user; by "user" the user; by "prompt" None (each prompt
    alone). Keys are hashed: a stored reference never holds a raw user or session id."""
    if by == "prompt" or table.num_rows == 0:
        return None
    users = pc.fill_null(table.column("user_id").cast(pa.string()), "")
    keys = pc.binary_join_element_wise("u", users, ":")
    if by == "session" and "session_id" in table.column_names:
        sessions = table.column("session_id").cast(pa.string())
        keys = pc.if_else(pc.is_valid(sessions), pc.binary_join_element_wise("s", pc.fill_null(sessions, ""), ":"), keys)
    return [hashlib.sha256(k.encode()).hexdigest()[:16] for k in keys.to_pylist()]


def _as_prompts(values: Sequence[str] | pa.Array | pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray]:
    """The non-empty prompts, and which of the given values they are (a boolean mask)."""
    if isinstance(values, pa.ChunkedArray):
        arr = values
    elif isinstance(values, pa.Array):
        arr = pa.chunked_array([values])
    else:
        arr = pa.chunked_array([pa.array(list(values), type=pa.string())])
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    keep = pc.and_(pc.is_valid(arr), pc.greater(pc.utf8_length(pc.fill_null(arr, "")), 0))
    mask = np.asarray(keep.to_numpy(zero_copy_only=False) if len(arr) else np.zeros(0), dtype=bool)
    return arr.filter(keep), mask


# --------------------------------------------------------------------------------------------------
# tokens


_TRIM = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum()) + (
    "\u201c\u201d\u2018\u2019\u00ab\u00bb\u00bf\u00a1\u00a0\u2026\u3000\u3001\u3002\uff0c\uff1f\uff01\uff1a"
)


def _raw_tokens(arr: pa.Array, cap: int | None = None) -> tuple[pa.Array, np.ndarray]:
    """Word tokens of the prompts, possibly with empty strings (punctuation-only words), and the
    list offsets (tokens of prompt i are flat[offsets[i]:offsets[i + 1]]).

    Lowercased, split on whitespace, punctuation trimmed from both ends. A chunk holding "@" becomes
    <email>, one starting with http:// https:// www. becomes <url>, and any other token with a digit
    becomes <num>: no address or number ever becomes a term. Arrow kernels only, no regex over all the
    text; the placeholder checks only look at the prompts that hold a digit, "@" or a link. With a
    `cap`, a prompt keeps only its first `cap` tokens."""
    lowered = pc.utf8_lower(arr)
    lists = pc.ascii_split_whitespace(lowered)
    offsets = lists.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    raw = pc.list_flatten(lists)
    flat = pc.utf8_trim(raw, characters=_TRIM)
    flagged = np.flatnonzero(pc.match_substring_regex(lowered, r"[0-9@]|http|www\.|\p{N}").fill_null(False)
                             .to_numpy(zero_copy_only=False))
    if len(flagged):
        positions = _ranges(offsets[flagged], offsets[flagged + 1])
        take = pa.array(positions)
        raw_odd, tok_odd = raw.take(take), flat.take(take)
        is_email = pc.match_substring(raw_odd, "@")
        is_url = pc.or_(pc.starts_with(raw_odd, "http://"),
                        pc.or_(pc.starts_with(raw_odd, "https://"), pc.starts_with(raw_odd, "www.")))
        has_digit = pc.match_substring_regex(tok_odd, r"[0-9]|\p{N}")
        fixed = pc.if_else(is_email, pa.scalar("<email>"), pc.if_else(is_url, pa.scalar("<url>"),
                           pc.if_else(has_digit, pa.scalar("<num>"), tok_odd)))
        mask = np.zeros(len(flat), dtype=bool)
        mask[positions] = True
        flat = pc.replace_with_mask(flat, pa.array(mask), fixed)
    if cap is not None:
        lengths = np.diff(offsets)
        if len(lengths) and lengths.max() > cap:
            position = np.arange(len(flat), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
            flat = flat.filter(pa.array(position < cap))
            offsets = np.concatenate([[0], np.cumsum(np.minimum(lengths, cap))]).astype(np.int64)
    return flat, offsets


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[i], ends[i]) without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shifts = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shifts


def _tokens(arr: pa.Array, cap: int | None = None) -> tuple[pa.Array, np.ndarray]:
    """Non-empty word tokens of the prompts (at most the first `cap` of each) and, per token, the
    index of its prompt within `arr`."""
    flat, offsets = _raw_tokens(arr, cap)
    keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    parents = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    return flat.filter(pa.array(keep)), parents[keep]


def _map(func, arr: pa.ChunkedArray) -> list:
    pieces = [c.slice(s, _CHUNK_ROWS) for c in arr.chunks for s in range(0, len(c), _CHUNK_ROWS)]
    if len(pieces) <= 1:
        return [func(p) for p in pieces]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(func, pieces))


def _nameable(term: str) -> bool:
    return term in PLACEHOLDERS or (len(term) >= 2 and term.isalpha())


# --------------------------------------------------------------------------------------------------
# the measures


def _smoothed(counts: np.ndarray, alpha: float) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64) + alpha
    return counts / counts.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def _measures(cur_counts: np.ndarray, ref_counts: np.ndarray, alpha: float) -> dict[str, Any]:
    p = _smoothed(cur_counts, alpha)
    q = _smoothed(ref_counts, alpha)
    m = 0.5 * (p + q)
    js_div = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return {
        "p": p,
        "q": q,
        "kl": _kl(p, q),
        "js": float(math.sqrt(max(js_div, 0.0))),
        "psi": float(np.sum((p - q) * np.log(p / q))),
    }


def _null_baseline(matrix: sp.csr_matrix, n_current: int, n_reference: int, settings: DriftSettings,
                   seed: int) -> np.ndarray:
    """KL between a pseudo-current (n_current prompts) and a pseudo-reference (n_reference prompts),
    both drawn with replacement from the reference's rows (one row per group of prompts: a block
    bootstrap; one per prompt when there are no groups): the KL of 'no drift at all' at these sample
    sizes. Poisson bootstrap (each row's weight ~ Poisson(prompts wanted / n_reference)), a block of
    resamples per sparse product, so that 200 resamples of a large reference take well under a second."""
    m = matrix.shape[0]
    rng = np.random.default_rng(seed)
    transposed = matrix.T.tocsr().astype(np.int64)
    alpha = settings.smoothing
    out = []
    block = max(1, min(settings.null_resamples, 20_000_000 // max(m, 1)))
    for start in range(0, settings.null_resamples, block):
        size = min(block, settings.null_resamples - start)
        w_cur = rng.poisson(n_current / n_reference, size=(m, size))
        w_ref = rng.poisson(1.0, size=(m, size))
        p = (transposed @ w_cur) + alpha  # bins x resamples
        q = (transposed @ w_ref) + alpha
        p /= p.sum(axis=0, keepdims=True)
        q /= q.sum(axis=0, keepdims=True)
        out.append(np.sum(p * np.log(p / q), axis=0))
    return np.concatenate(out)


def _group_codes(groups: Sequence[str | None] | None, n: int) -> np.ndarray:
    """An integer group per reference prompt: equal keys share one, a prompt without a key (or
    without any groups given) is a group of its own."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    codes: dict[str, int] = {}
    out = np.empty(n, dtype=np.int64)
    alone = []
    for i, g in enumerate(groups):
        if g is None:
            alone.append(i)
        else:
            out[i] = codes.setdefault(g, len(codes))
    out[alone] = len(codes) + np.arange(len(alone))
    return out


def _grouped(matrix: sp.csr_matrix, group_of: np.ndarray) -> sp.csr_matrix:
    """The per-prompt bin counts summed per group: the rows the block bootstrap resamples."""
    n_groups = int(group_of.max()) + 1 if len(group_of) else 0
    if n_groups == matrix.shape[0]:
        return matrix
    indicator = sp.csr_matrix((np.ones(len(group_of)), (group_of, np.arange(len(group_of)))),
                              shape=(n_groups, len(group_of)))
    return (indicator @ matrix).tocsr()


def _band(kl: float, settings: DriftSettings) -> str:
    if kl < settings.same_below:
        return "same"
    if kl > settings.drift_above:
        return "drift"
    return "slight"


# --------------------------------------------------------------------------------------------------
# token bins


def _reference_token_bins(reference: pa.ChunkedArray, settings: DriftSettings, group_of: np.ndarray) -> dict[str, Any]:
    ref_tokens = _map(functools.partial(_tokens, cap=settings.max_prompt_tokens), reference)
    # reference: one row per prompt, so that the null baseline can resample by prompt
    flat_parts, parent_parts, base = [], [], 0
    for (flat, parents), piece_len in zip(ref_tokens, _piece_lengths(reference)):
        flat_parts.append(flat)
        parent_parts.append(parents + base)
        base += piece_len
    ref_flat = pa.chunked_array(flat_parts, type=pa.string()) if flat_parts else pa.chunked_array([], pa.string())
    ref_parent = np.concatenate(parent_parts) if parent_parts else np.zeros(0, np.int64)
    counts = pc.value_counts(ref_flat)
    values = counts.field("values").to_pylist()
    freq = counts.field("counts").to_numpy()
    # Tokens seen in a single reference group (a conversation/session, or a prompt without one) stay
    # out of the vocabulary: they go to the OOV bin on both sides, so the reference has the share of
    # never-seen-before tokens (typos, names, one conversation's own words) that any new window has
    # too (Good-Turing), and the null baseline, which can only resample reference groups, sees that
    # share as well.
    token_codes = pc.index_in(ref_flat, value_set=counts.field("values")).to_numpy().astype(np.int64)
    owner = group_of[ref_parent]
    group_pairs = np.unique(owner * len(values) + token_codes) if len(values) else np.zeros(0, np.int64)
    groups_per_token = np.bincount(group_pairs % max(len(values), 1), minlength=len(values))
    eligible = [i for i in range(len(values)) if groups_per_token[i] >= 2]
    order = sorted(eligible, key=lambda i: (-int(freq[i]), values[i]))[: settings.vocab_size]
    vocab = [values[i] for i in order]
    k = len(vocab) + 1  # + OOV
    vocab_arr = pa.array(vocab, type=pa.string())
    ref_bin = pc.index_in(ref_flat, value_set=vocab_arr).fill_null(len(vocab)).to_numpy().astype(np.int64)
    matrix = sp.csr_matrix(
        (np.ones(len(ref_bin)), (ref_parent, ref_bin)), shape=(len(reference), k)
    )
    matrix.sum_duplicates()
    return {
        "kind": "tokens",
        "labels": vocab + [OOV],
        "vocab_array": vocab_arr,
        "matrix": matrix,
        "ref_counts": np.asarray(matrix.sum(axis=0)).ravel(),
        "ref_doc_freq": np.diff(matrix.tocsc().indptr),
        "ref_token_counts": dict(zip(values, (int(f) for f in freq))),
        "vocab": set(vocab),
    }


def current_token_stats(arr: pa.Array, vocab: pa.Array, settings: DriftSettings) -> dict[str, Any]:
    """The sufficient statistics of some current prompts for the token bins: per-bin token counts,
    and per nameable new (out-of-vocabulary) token its count and the number of prompts holding it.
    Those of disjoint sets of prompts add up (`merge_token_stats`) to those of their union."""
    k = len(vocab) + 1
    flat, offsets = _raw_tokens(arr, settings.max_prompt_tokens)
    idx = pc.index_in(flat, value_set=vocab)
    bins = np.bincount(idx.fill_null(len(vocab)).to_numpy().astype(np.int64), minlength=k)
    oov_positions = np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))
    oov = flat.take(pa.array(oov_positions))
    empties = pc.equal(oov, "")
    bins[len(vocab)] -= int(pc.sum(empties).as_py() or 0)  # punctuation-only words are no tokens
    parents = np.searchsorted(offsets, oov_positions, side="right") - 1
    parents = parents[~empties.to_numpy(zero_copy_only=False)]
    oov = oov.filter(pc.invert(empties))
    counted = pc.value_counts(oov)
    names = counted.field("values").to_pylist()
    totals = counted.field("counts").to_numpy()
    prompts = np.zeros(len(names), dtype=np.int64)
    if names:
        codes = pc.index_in(oov, value_set=counted.field("values")).to_numpy().astype(np.int64)
        pairs = np.unique(parents * len(names) + codes)
        prompts = np.bincount(pairs % len(names), minlength=len(names))
    new = {t: [int(c), int(d)] for t, c, d in zip(names, totals, prompts) if _nameable(t)}
    return {"bins": bins, "new_tokens": new, "prompts": len(arr)}


def merge_token_stats(parts: Sequence[dict[str, Any]], k: int) -> dict[str, Any]:
    merged: dict[str, Any] = {"bins": np.zeros(k, dtype=np.int64), "new_tokens": {}, "prompts": 0}
    for part in parts:
        merged["bins"] = merged["bins"] + part["bins"]
        merged["prompts"] += part["prompts"]
        for token, (count, prompts) in part["new_tokens"].items():
            mine = merged["new_tokens"].setdefault(token, [0, 0])
            mine[0] += count
            mine[1] += prompts
    return merged


def bins_with_current(bins: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """The reference bins completed with the current side: counts and the naming candidates."""
    new = stats["new_tokens"]
    candidates = sorted(new, key=lambda t: (-new[t][0], t))[:_CANDIDATE_TERMS]  # the most frequent new tokens
    return bins | {"cur_counts": stats["bins"], "oov_counts": {t: new[t][0] for t in candidates},
                   "oov_doc_freq": {t: new[t][1] for t in candidates}}


def _piece_lengths(arr: pa.ChunkedArray) -> list[int]:
    return [min(_CHUNK_ROWS, len(c) - s) for c in arr.chunks for s in range(0, len(c), _CHUNK_ROWS)]


def _embedding_bins(reference: pa.ChunkedArray, current: pa.ChunkedArray, settings: DriftSettings, seed: int) -> dict:
    from sklearn.cluster import MiniBatchKMeans

    from tasks.signals import embed_texts

    ref_vec = embed_texts(reference.to_pylist(), settings.embedding_model)
    cur_vec = embed_texts(current.to_pylist(), settings.embedding_model)
    clusters = min(settings.clusters, len(reference))
    model = MiniBatchKMeans(n_clusters=clusters, random_state=seed, n_init=3).fit(ref_vec)
    ref_label = model.predict(ref_vec)
    cur_label = model.predict(cur_vec)
    matrix = sp.csr_matrix((np.ones(len(ref_label)), (np.arange(len(ref_label)), ref_label)), shape=(len(ref_label), clusters))
    return {
        "kind": "embeddings",
        "labels": [f"cluster {c}" for c in range(clusters)],
        "matrix": matrix,
        "ref_counts": np.bincount(ref_label, minlength=clusters).astype(np.float64),
        "cur_counts": np.bincount(cur_label, minlength=clusters).astype(np.float64),
        "cur_label": cur_label,
    }


# --------------------------------------------------------------------------------------------------
# explanation


def _top_terms(bins: dict[str, Any], measures: dict[str, Any], settings: DriftSettings) -> list[dict[str, Any]]:
    p, q = measures["p"], measures["q"]
    contribution = p * np.log(p / q)
    labels = bins["labels"]
    cur_total = float(bins["cur_counts"].sum()) or 1.0
    ref_total = float(bins["ref_counts"].sum()) or 1.0
    rows: list[dict[str, Any]] = []
    if bins["kind"] == "tokens":
        min_docs = settings.explain_min_prompts
        for i, term in enumerate(labels[:-1]):
            if not _nameable(term) or bins["ref_doc_freq"][i] < min_docs:
                continue
            rows.append({
                "term": term, "contribution": float(contribution[i]), "current_share": float(bins["cur_counts"][i] / cur_total),
                "reference_share": float(bins["ref_counts"][i] / ref_total), "in_reference_vocabulary": True,
            })
        oov_index = len(labels) - 1
        oov_count = float(bins["cur_counts"][oov_index])
        named = 0.0
        if oov_count > 0:
            for term, count in bins["oov_counts"].items():
                if bins["oov_doc_freq"].get(term, 0) < min_docs:
                    continue
                share = count / oov_count
                named += count
                rows.append({
                    "term": term, "contribution": float(contribution[oov_index] * share),
                    "current_share": float(count / cur_total),
                    "reference_share": float(bins["ref_token_counts"].get(term, 0) / ref_total),
                    "in_reference_vocabulary": False,
                })
        rest = oov_count - named
        if rest > 0 or oov_count == 0:
            rows.append({
                "term": OOV, "contribution": float(contribution[oov_index] * (rest / oov_count if oov_count else 1.0)),
                "current_share": float(rest / cur_total), "reference_share": float(bins["ref_counts"][oov_index] / ref_total),
                "in_reference_vocabulary": False,
            })
    else:
        for i, label in enumerate(labels):
            rows.append({
                "term": label, "contribution": float(contribution[i]), "current_share": float(p[i]),
                "reference_share": float(q[i]), "in_reference_vocabulary": True,
            })
    rows.sort(key=lambda r: (-r["contribution"], r["term"]))
    return rows[: settings.top_terms]


# --------------------------------------------------------------------------------------------------
# public


def example_candidates(piece: pa.Array, keys: np.ndarray, terms: list[str], shown: set[str], count: int) -> list:
    """(key, rendered prompt) of the first `count` distinct renderings of this piece's prompts that
    hold one of `terms`, keyed by their position in the current window (`keys`, increasing); the
    merge of any split of the window (`merge_examples`) equals the examples of the whole."""
    if not terms or count <= 0:
        return []
    wanted = pa.array(terms, type=pa.string())
    out: list[tuple[int, str]] = []
    seen: set[str] = set()
    for start in range(0, len(piece), 50_000):
        chunk = piece.slice(start, 50_000)
        flat, parents = _tokens(chunk)
        hits = pc.is_in(flat, value_set=wanted).to_numpy(zero_copy_only=False)
        tokens = flat.to_pylist()
        starts = np.searchsorted(parents, np.arange(len(chunk) + 1))
        for row in np.unique(parents[hits]):
            rendered: list[str] = []
            for t in tokens[starts[row] : starts[row + 1]]:
                word = t if t in shown else "*"
                if not (word == "*" and rendered and rendered[-1] == "*"):
                    rendered.append(word)
            text = " ".join(rendered)
            if text not in seen:
                seen.add(text)
                out.append((int(keys[start + row]), text))
            if len(out) >= count:
                return out
    return out


def merge_examples(parts: Sequence[list], count: int) -> list[str]:
    """The first `count` distinct renderings in window order, from each part's `example_candidates`."""
    out: list[str] = []
    for _, text in sorted(item for part in parts for item in part):
        if text not in out:
            out.append(text)
        if len(out) == count:
            break
    return out


def prepare_reference(reference: Sequence[str] | pa.Array | pa.ChunkedArray, settings: DriftSettings, *,
                      reference_groups: Sequence[str | None] | None = None) -> dict[str, Any]:
    """The reference side of the drift measures: its prompts, groups and (token bins) vocabulary."""
    ref, kept = _as_prompts(reference)
    if reference_groups is not None and len(reference_groups) != len(kept):
        raise ValueError(f"compute_drift: {len(reference_groups)} reference groups for {len(kept)} reference prompts")
    groups = None
    if reference_groups is not None and settings.null_resample_by != "prompt":
        groups = [g for g, k in zip(reference_groups, kept) if k]
    group_of = _group_codes(groups, len(ref))
    bins = _reference_token_bins(ref, settings, group_of) if settings.bins == "tokens" and len(ref) else None
    return {"prompts": ref, "n": len(ref), "grouped": groups is not None, "group_of": group_of, "bins": bins}


def current_sample(n_current: int, settings: DriftSettings, seed: int = 0) -> np.ndarray | None:
    """Which of the window's n_current non-empty prompts are binned (sorted), None for all of them."""
    if settings.max_current_prompts is not None and n_current > settings.max_current_prompts:
        return np.sort(np.random.default_rng(seed).choice(n_current, settings.max_current_prompts, replace=False))
    return None


def empty_drift_result(settings: DriftSettings, n_ref: int, n_cur: int, n_binned: int) -> dict[str, Any]:
    return {
        "bins": settings.bins, "n_reference": n_ref, "n_current": n_cur, "kl": None, "js": None, "psi": None,
        "null_kl": None, "null_kl_mean": None, "kl_excess": None, "band": "insufficient", "alert": False,
        "thresholds": {"same_below": settings.same_below, "drift_above": settings.drift_above,
                       "null_quantile": settings.null_quantile, "min_prompts": settings.min_prompts},
        "top_terms": [], "examples": [], "reason": None, "n_current_binned": n_binned,
        "null_resampled_by": None, "null_groups": None,
    }


def drift_from_bins(reference: dict[str, Any], bins: dict[str, Any], n_cur: int, n_binned: int,
                    settings: DriftSettings, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The measures, null baseline and top terms from both sides' bins; and what `example_candidates`
    needs to find the examples (None: no examples to look for), for `finish_drift`."""
    n_ref = reference["n"]
    result = empty_drift_result(settings, n_ref, n_cur, n_binned)
    if bins["cur_counts"].sum() == 0 or bins["ref_counts"].sum() == 0:
        result["reason"] = "insufficient data: no tokens on one side"
        return result, None
    group_of = reference["group_of"]
    measures = _measures(bins["cur_counts"], bins["ref_counts"], settings.smoothing)
    null = _null_baseline(_grouped(bins["matrix"], group_of), n_binned, n_ref, settings, seed)
    result.update(null_resampled_by=settings.null_resample_by if reference["grouped"] else "prompt",
                  null_groups=int(group_of.max()) + 1)
    kl = measures["kl"]
    null_kl = float(np.quantile(null, settings.null_quantile))
    result.update(kl=kl, js=measures["js"], psi=measures["psi"], null_kl=null_kl,
                  null_kl_mean=float(null.mean()), kl_excess=kl - float(null.mean()), bin_count=len(bins["labels"]))
    top = _top_terms(bins, measures, settings)
    result["top_terms"] = top
    wanted = None
    if bins["kind"] == "tokens":
        shown = {t for t in bins["vocab"] if _nameable(t)} | {r["term"] for r in top} | set(PLACEHOLDERS)
        shown = {t for t in shown if t != OOV}
        idx_of = {t: i for i, t in enumerate(bins["labels"])}
        shown = {t for t in shown if t not in idx_of or bins["ref_doc_freq"][idx_of[t]] >= settings.explain_min_prompts
                 or t in PLACEHOLDERS or t in {r["term"] for r in top}}
        terms = [r["term"] for r in top if r["term"] != OOV and r["contribution"] > 0][:3]
        wanted = {"terms": terms, "shown": shown, "count": settings.examples}
    else:  # clusters: counts only, no prompt text (nothing to mask it with)
        labels = bins["cur_label"]
        result["examples"] = [
            f"{r['term']}: {int((labels == int(r['term'].split()[-1])).sum())} current prompts"
            for r in top[: settings.examples]
        ]
    return result, wanted


def finish_drift(result: dict[str, Any], settings: DriftSettings, examples: list[str] | None = None) -> dict[str, Any]:
    """The band, alert and reason of a measured drift result (and its examples, when looked for)."""
    if examples is not None:
        result["examples"] = examples
    if result["kl"] is None:
        return result
    n_ref, n_cur = result["n_reference"], result["n_current"]
    kl, null_kl = result["kl"], result["null_kl"]
    if min(n_ref, n_cur) < settings.min_prompts:
        result["band"] = "insufficient"
        result["reason"] = (f"insufficient data: {n_ref} reference and {n_cur} current prompts "
                            f"(need {settings.min_prompts} each); not evidence of 'no drift'")
        return result
    band = _band(kl, settings)
    result["band"] = band
    result["alert"] = bool(band != "same" and kl > null_kl)
    if result["alert"]:
        result["reason"] = f"KL {kl:.3f} is in band '{band}' and above the no-drift baseline {null_kl:.3f}"
    elif band != "same":
        result["reason"] = f"KL {kl:.3f} is in band '{band}' but within the no-drift baseline {null_kl:.3f} (sampling noise)"
    else:
        result["reason"] = f"KL {kl:.3f} below {settings.same_below}"
    return result


def compute_drift(
    reference: Sequence[str] | pa.Array | pa.ChunkedArray,
    current: Sequence[str] | pa.Array | pa.ChunkedArray,
    settings: DriftSettings,
    *,
    seed: int = 0,
    reference_groups: Sequence[str | None] | None = None,
) -> dict:
    """Drift of `current` prompts against `reference` prompts: kl, js, psi, null_kl, band, alert,
    n_reference, n_current, top_terms, examples (see the module docstring for the rules).
    `reference_groups`: per reference prompt, its conversation/session/user key (None: alone), for
    the block bootstrap of the null baseline; ignored with null_resample_by: prompt.
    (tasks/partitions.py computes the same from partitions of the window, in bounded memory.)"""
    ref = prepare_reference(reference, settings, reference_groups=reference_groups)
    cur, _ = _as_prompts(current)
    n_ref, n_cur = ref["n"], len(cur)
    rows = current_sample(n_cur, settings, seed)
    if rows is not None:
        cur = cur.take(pa.array(rows))
    if n_ref == 0 or n_cur == 0:
        result = empty_drift_result(settings, n_ref, n_cur, len(cur))
        result["reason"] = f"insufficient data: {n_ref} reference and {n_cur} current prompts (need {settings.min_prompts} each)"
        return result
    if settings.bins == "embeddings":
        bins = _embedding_bins(ref["prompts"], cur, settings, seed)
    else:
        vocab = ref["bins"]["vocab_array"]
        stats = merge_token_stats(_map(lambda piece: current_token_stats(piece, vocab, settings), cur), len(vocab) + 1)
        bins = bins_with_current(ref["bins"], stats)
    result, wanted = drift_from_bins(ref, bins, n_cur, len(cur), settings, seed)
    if wanted is None:
        return finish_drift(result, settings)
    keys = np.arange(len(cur), dtype=np.int64)
    pieces = [example_candidates(chunk.slice(s, _CHUNK_ROWS), keys[base + s : base + s + _CHUNK_ROWS], **wanted)
              for base, chunk in zip(np.cumsum([0] + [len(c) for c in cur.chunks]), cur.chunks)
              for s in range(0, len(chunk), _CHUNK_ROWS)]
    return finish_drift(result, settings, merge_examples(pieces, settings.examples))
