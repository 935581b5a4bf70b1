"""The world and its weekly traffic: `World` and `simulate_week`, conversations answered in batches.

A week lays conversations out over users and time (a daily and weekly rhythm, no two conversations
of one user overlapping), draws subjects and prompts, asks the model for all first turns, then all
second turns, then all third turns, lets the simulated user judge every answer, and assembles the
log records and ground-truth rows in time order.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks.config import SHIPPED_DATA, SimulateSettings
from tasks.contracts import Generator
from tasks.knowledge import KnowledgeBase, load_knowledge_base
from tasks.simulate.bank import CONTEXTS, GREETINGS, REASK_PREFIXES, VARIANTS, QuestionBank, build_bank
from tasks.simulate.judge import OUTCOMES, Judge
from tasks.simulate.synthetic_pii import pii_batch

TURN_KINDS = ("first", "reask", "switch", "followup")
WEEK_S = 7 * 86_400
REASK_DELAY_S = (2.0, 25.0)  # after the previous response: well inside a 30 s re-ask window
FOLLOWUP_MIN_S = 35.0  # a later follow-up comes clearly after the 30 s window
MAX_LATENCY_S = 6.0
CONVERSATIONS_PER_USER_WEEK = 200  # more traffic than that per user: the population grows


@dataclass
class World:
    """Everything a week of traffic is drawn from. Weeks are independent given the world: week k is
    drawn from the stream seeded by (seed, k), whatever was simulated before."""

    settings: SimulateSettings
    kb: KnowledgeBase  # v2: every topic that will ever exist
    bank: QuestionBank
    start: datetime
    data_dir: Path
    judge: Judge
    popularity: dict[str, tuple[np.ndarray, np.ndarray]]  # category -> (subjects, probabilities)
    judged_as: list[str] = field(default_factory=list)  # per subject: the topic id the judge checks against
    _user_weights: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @classmethod
    def create(cls, settings: SimulateSettings, data_dir: Path | None = None) -> World:
        if settings.unknown_product_share + settings.offtopic_share > 1:
            raise ValueError("simulate.unknown_product_share + simulate.offtopic_share must be <= 1 "
                             f"(got {settings.unknown_product_share} + {settings.offtopic_share})")
        try:
            start = datetime.combine(date.fromisoformat(settings.start), datetime.min.time(), tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(f"simulate.start must be a date like 2026-01-05, got {settings.start!r}") from None
        data_dir = Path(data_dir or SHIPPED_DATA)
        kb = load_knowledge_base(data_dir, "v2")
        bank = build_bank(kb)
        rng = np.random.default_rng([settings.seed, 0x70])
        popularity: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        groups = {"v1": [s for s in range(bank.size) if bank.kb_version[s] == "v1"],
                  "v2": [s for s in range(bank.size) if bank.kb_version[s] == "v2"],
                  "unknown": [s for s in range(bank.size) if bank.kinds[s] == "unknown"],
                  "offtopic": [s for s in range(bank.size) if bank.kinds[s] == "offtopic"]}
        for name, subjects in groups.items():
            ranks = rng.permutation(len(subjects))
            weights = 1.0 / (ranks + 3.0) ** 0.8  # a few popular topics, a long tail
            popularity[name] = (np.array(subjects, dtype=np.int64), weights / weights.sum())
        judged_as = [bank.label[i] if bank.kinds[i] == "kb" else bank.topic[i] for i in range(bank.size)]
        return cls(settings=settings, kb=kb, bank=bank, start=start, data_dir=data_dir, judge=Judge(kb),
                   popularity=popularity, judged_as=judged_as)

    def week_start(self, week: int) -> datetime:
        return self.start + timedelta(days=7 * (week - 1))

    @property
    def launch_date(self) -> datetime:
        return self.week_start(self.settings.launch_week)

    def user_weights(self, count: int) -> np.ndarray:
        """Activity of the first `count` users (lognormal; the same prefix whatever the count)."""
        if len(self._user_weights) < count:
            self._user_weights = np.random.default_rng([self.settings.seed, 0x05E5]).lognormal(0.0, 0.6, size=count)
        return self._user_weights[:count]


@dataclass
class WeekTraffic:
    week: int
    records: list[dict[str, Any]]  # LogRecord fields; ts a timezone-aware datetime; sorted by ts
    truth: list[dict[str, Any]]  # one ground-truth row per record, same order
    counts: dict[str, int]


class _Turns:
    """Column store of the turns of a week, grown round by round."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {k: [] for k in (
            "conv", "subject", "qlocal", "kind", "prev", "t_us", "prompt", "response", "outcome", "latency_ms",
            "prompt_tokens", "completion_tokens", "pii")}

    def __len__(self) -> int:
        return len(self.cols["conv"])

    def extend(self, **columns: Sequence[Any]) -> None:
        for key, values in columns.items():
            self.cols[key].extend(values)


def _diurnal_warp(length_s: float, first_weekday: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(cdf, grid) mapping uniform [0, 1] onto [0, length_s] with a daily rhythm (peak 15:00 UTC,
    quieter weekends), and the peak density relative to the mean."""
    grid = np.linspace(0.0, length_s, 4097)
    hours = (grid / 3600.0) % 24.0
    weekday = (first_weekday + (grid // 86_400).astype(int)) % 7
    density = (0.25 + np.exp(-(((hours - 15.0) / 5.0) ** 2))) * np.where(weekday >= 5, 0.7, 1.0)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2.0)])
    cdf /= cdf[-1]
    return cdf, grid, float(density.max() / density.mean())


def _layout(world: World, rng: np.random.Generator, conversations: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(user index, start second within the week) per conversation, and the longest follow-up delay.

    Conversations of one user are at least G seconds apart and never cross the week's end, so the
    previous request of a user is always the previous turn of the same conversation."""
    s = world.settings
    users = max(s.users, math.ceil(conversations / CONVERSATIONS_PER_USER_WEEK))
    while True:
        weights = world.user_weights(users)
        user = rng.choice(users, size=conversations, p=weights / weights.sum()) if conversations else np.zeros(0, np.int64)
        k_max = int(np.bincount(user, minlength=users).max()) if conversations else 1
        _, _, peak = _diurnal_warp(WEEK_S - 1100.0, world.start.weekday())
        gap = min(1800.0, 0.9 * (WEEK_S - 1100.0) / (peak * max(k_max, 1)))
        if gap >= 150.0:
            break
        users *= 2
    followup_max = min(900.0, gap - 70.0)
    length = WEEK_S - (followup_max + 3 * MAX_LATENCY_S + REASK_DELAY_S[1] + 35.0)
    cdf, grid, peak = _diurnal_warp(length, world.start.weekday())
    step = gap * peak / length
    v = rng.random(conversations)
    order = np.lexsort((v, user))
    sorted_user = user[order]
    counts = np.bincount(sorted_user, minlength=users)
    first_of_group = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(conversations) - first_of_group[sorted_user]
    k = counts[sorted_user]
    x = v[order] * (1.0 - (k - 1) * step) + rank * step
    starts = np.empty(conversations)
    starts[order] = np.interp(np.clip(x, 0.0, 1.0), cdf, grid)
    return user, starts, followup_max


def _draw_subjects(world: World, rng: np.random.Generator, count: int, week: int) -> np.ndarray:
    s = world.settings
    after_launch = week >= s.launch_week
    new_share = s.new_topic_share if after_launch else 0.0
    rest = 1.0 - new_share
    p = {"v2": new_share, "unknown": rest * s.unknown_product_share, "offtopic": rest * s.offtopic_share}
    p["v1"] = max(0.0, 1.0 - sum(p.values()))
    names = ("v1", "v2", "unknown", "offtopic")
    probs = np.array([p[n] for n in names])
    category = rng.choice(4, size=count, p=probs / probs.sum())
    out = np.empty(count, dtype=np.int64)
    for c, name in enumerate(names):
        rows = np.flatnonzero(category == c)
        if len(rows):
            subjects, weights = world.popularity[name]
            out[rows] = subjects[rng.choice(len(subjects), size=len(rows), p=weights)]
    return out


def _draw_prompts(world: World, rng: np.random.Generator, subjects: np.ndarray, qlocal: np.ndarray,
                  reask: np.ndarray) -> tuple[list[str], list[list[dict[str, str]]]]:
    """Prompt texts (question variant plus optional greeting / context / re-ask phrase / PII)."""
    bank, s = world.bank, world.settings
    n = len(subjects)
    variant = rng.choice(VARIANTS, size=n, p=(0.78, 0.05, 0.05, 0.12))
    flat = bank.offset[subjects] + qlocal * VARIANTS + variant
    greet = np.where(rng.random(n) < 0.15, rng.integers(0, len(GREETINGS), n), -1)
    context = np.where(rng.random(n) < 0.10, rng.integers(0, len(CONTEXTS), n), -1)
    prefix = np.where(reask & (rng.random(n) < 0.3), rng.integers(0, len(REASK_PREFIXES), n), -1)
    has_pii = rng.random(n) < s.pii_rate
    pii_first = rng.random(n) < 0.3
    pii_items = iter(pii_batch(rng, int(has_pii.sum())))
    text = bank.text
    prompts = [text[f] for f in flat.tolist()]  # most prompts are the bare question
    empty: list[dict[str, str]] = []
    pii: list[list[dict[str, str]]] = [empty] * n
    decorated = np.flatnonzero((greet >= 0) | (prefix >= 0) | (context >= 0) | has_pii)
    for i, g, x, c, p, first in zip(decorated.tolist(), greet[decorated].tolist(), prefix[decorated].tolist(),
                                    context[decorated].tolist(), has_pii[decorated].tolist(),
                                    pii_first[decorated].tolist()):
        parts = []
        if g >= 0:
            parts.append(GREETINGS[g])
        if x >= 0:
            parts.append(REASK_PREFIXES[x])
        if c >= 0:
            parts.append(CONTEXTS[c])
        if p:
            sentence, pii[i] = next(pii_items)
            parts.extend((sentence, prompts[i]) if first else (prompts[i], sentence))
        else:
            parts.append(prompts[i])
        prompts[i] = " ".join(parts)
    return prompts, pii


def _ask(model: Generator, prompts: list[str], seed: int) -> list[str]:
    if not prompts:
        return []
    out = model.generate(prompts, n=1, temperature=0.0, seed=seed)
    if len(out) != len(prompts):
        raise RuntimeError(f"model {getattr(model, 'model_version', model)!r} returned {len(out)} answers for "
                           f"{len(prompts)} prompts")
    return [row[0] if row else "" for row in out]


def _approx_tokens(texts: Sequence[str]) -> np.ndarray:
    """About 4 characters a token: the scripted path has no tokenizer, and a real one is not ours."""
    return np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) // 4 + 1


def _run_round(world: World, model: Generator, rng: np.random.Generator, turns: _Turns, seed: int, *,
               conv: np.ndarray, subjects: np.ndarray, qlocal: np.ndarray, kind: np.ndarray, prev: np.ndarray,
               t_us: np.ndarray) -> None:
    reask = kind == 1
    prompts, pii = _draw_prompts(world, rng, subjects, qlocal, reask)
    responses = _ask(model, prompts, seed)
    judge, judged_as = world.judge, world.judged_as
    code = {o: i for i, o in enumerate(OUTCOMES)}
    keys = [(judged_as[s], r) for s, r in zip(subjects.tolist(), responses)]
    known = judge.cache
    outcome = [code[known.get(k) or judge(*k)] for k in keys]
    pt, ct = _approx_tokens(prompts), _approx_tokens(responses)
    latency = (120.0 + 18.0 * ct + 2.0 * pt) * np.exp(rng.normal(0.0, 0.35, len(prompts)))
    latency = np.round(np.clip(latency, 40.0, MAX_LATENCY_S * 1000.0), 1)
    turns.extend(conv=conv.tolist(), subject=subjects.tolist(), qlocal=qlocal.tolist(), kind=kind.tolist(),
                 prev=prev.tolist(), t_us=t_us.tolist(), prompt=prompts, response=responses, outcome=outcome,
                 latency_ms=latency.tolist(), prompt_tokens=pt.tolist(), completion_tokens=ct.tolist(), pii=pii)


def _next_turns(world: World, rng: np.random.Generator, turns: _Turns, rows: np.ndarray, week: int,
                followup_max: float, *, allow_other: bool) -> dict[str, np.ndarray]:
    """The turns that follow `rows` (indices into `turns`): re-asks of unhappy answers, and with
    allow_other quick switches and later follow-ups."""
    s = world.settings
    cols = turns.cols
    n = len(rows)
    outcome = np.array([cols["outcome"][r] for r in rows], dtype=np.int64)
    unhappy = outcome != 0
    u = rng.random((3, n))
    is_reask = unhappy & (u[0] < s.reask_probability)
    is_switch = ~is_reask & (u[1] < s.topic_switch_rate) & allow_other
    is_follow = ~is_reask & ~is_switch & ~unhappy & (u[2] < s.followup_rate) & allow_other
    kind = np.select([is_reask, is_switch, is_follow], [1, 2, 3], 0)
    keep = kind > 0
    rows, kind = rows[keep], kind[keep]
    m = len(rows)
    subject = np.array([cols["subject"][r] for r in rows], dtype=np.int64)
    qprev = np.array([cols["qlocal"][r] for r in rows], dtype=np.int64)
    # A re-ask asks the same question again (its own spelling, greeting and re-ask phrase are drawn
    # anew); a switch or follow-up is about a different subject. Another question about the same
    # subject ("How much is the Vertex 14?" -> "How much RAM does it have?") is not asking again.
    other = _draw_subjects(world, rng, m, week)
    for _ in range(10):  # a switch or follow-up is about something else
        clash = (other == subject) & (kind != 1)
        if not clash.any():
            break
        other[clash] = _draw_subjects(world, rng, int(clash.sum()), week)
    keep = (other != subject) | (kind == 1)
    rows, kind, subject, qprev, other = rows[keep], kind[keep], subject[keep], qprev[keep], other[keep]
    m = len(rows)
    new_subject = np.where(kind == 1, subject, other)
    new_nq = world.bank.n_questions[new_subject]
    q_other = np.floor(rng.random(m) * new_nq).astype(np.int64)
    qlocal = np.where(kind == 1, qprev, q_other)
    prev_t = np.array([cols["t_us"][r] for r in rows], dtype=np.int64)
    prev_lat = np.array([cols["latency_ms"][r] for r in rows])
    quick = rng.uniform(*REASK_DELAY_S, m)
    later = rng.uniform(FOLLOWUP_MIN_S, followup_max, m)
    delay_s = np.where(kind == 3, later, quick)
    t_us = prev_t + np.round(prev_lat * 1000.0).astype(np.int64) + np.round(delay_s * 1e6).astype(np.int64)
    conv = np.array([cols["conv"][r] for r in rows], dtype=np.int64)
    return {"conv": conv, "subjects": new_subject, "qlocal": qlocal, "kind": kind, "prev": rows, "t_us": t_us}


def _followons(s: SimulateSettings, unhappy: float) -> float:
    """Expected follow-on turns per conversation when a share `unhappy` of answers disappoints."""
    u, r, sw, fr = unhappy, s.reask_probability, s.topic_switch_rate, s.followup_rate
    second = u * r + (1 - u * r) * sw + (1 - u) * (1 - sw) * fr
    return second + second * u * r


def _expected_followons(s: SimulateSettings, week: int) -> float:
    """_followons if the model behaved like the default scripted one."""
    new = s.new_topic_share if week >= s.launch_week else 0.0
    unknown = new + (1 - new) * (s.unknown_product_share + s.offtopic_share)
    return _followons(s, unknown + (1 - unknown) * s.hallucination_rate)


def simulate_week(world: World, week: int, model: Generator, *, exact: bool = True) -> WeekTraffic:
    """One week of traffic answered by `model`, in whole batches: all first turns, then all second
    turns, then all third turns (a fourth batch when conversations were added to fill the week).
    With `exact`, the week holds exactly `simulate.records_per_week` records."""
    # Hundreds of thousands of small dicts and lists, no reference cycles: the cyclic collector would
    # only rescan them over and over.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate_week(world, week, model, exact=exact)
    finally:
        if enabled:
            gc.enable()


def _simulate_week(world: World, week: int, model: Generator, *, exact: bool) -> WeekTraffic:
    if week < 1:
        raise ValueError(f"weeks are numbered from 1, got {week}")
    s = world.settings
    rng = np.random.default_rng([s.seed, week, 0x5EED])
    target = s.records_per_week
    # Follow-on turns add records: start fewer conversations than the target (as many as the scripted
    # model's error rates predict). After the first batch the model's real unhappy rate is known: more
    # conversations start with the second batch if needed (from a reserve laid out in advance), and
    # whole conversations are trimmed off a long week.
    main = max(1, round(target / (1.0 + _expected_followons(s, week))))
    reserve = math.ceil(0.5 * main) + 5
    total_conv = main + reserve
    user, starts, followup_max = _layout(world, rng, total_conv)
    perm = rng.permutation(total_conv)  # which conversations are main, which reserve
    subjects = _draw_subjects(world, rng, total_conv, week)
    qlocal = np.floor(rng.random(total_conv) * world.bank.n_questions[subjects]).astype(np.int64)
    start_us = np.round(starts * 1e6).astype(np.int64)
    turns = _Turns()
    base_seed = int(rng.integers(0, 2**31 - 1))

    def first_turns(conv: np.ndarray) -> dict[str, np.ndarray]:
        k = len(conv)
        return {"conv": conv, "subjects": subjects[conv], "qlocal": qlocal[conv], "kind": np.zeros(k, np.int64),
                "prev": np.full(k, -1, np.int64), "t_us": start_us[conv]}

    batch, batch_depth = first_turns(perm[:main]), np.zeros(main, np.int64)  # depth: turn number in its conversation
    used, calls = main, 0
    while len(batch["conv"]):
        mark = len(turns)
        calls += 1
        _run_round(world, model, rng, turns, base_seed + calls, **batch)
        rows = np.arange(mark, len(turns))
        parts = [(_next_turns(world, rng, turns, rows[batch_depth == d], week, followup_max, allow_other=d == 0), d + 1)
                 for d in (0, 1) if (batch_depth == d).any()]
        if calls == 1 and exact:
            unhappy = float(np.mean(np.array(turns.cols["outcome"]) != 0))
            expected = main * (1.0 + _followons(s, unhappy))
            more = min(reserve, max(0, math.ceil((target - expected) / (1.0 + _followons(s, unhappy)))))
            if more:
                parts.append((first_turns(perm[used:used + more]), 0))
                used += more
        batch = {key: np.concatenate([p[key] for p, _ in parts]) if parts else np.zeros(0, np.int64)
                 for key in ("conv", "subjects", "qlocal", "kind", "prev", "t_us")}
        batch_depth = np.concatenate([np.full(len(p["conv"]), d, np.int64) for p, d in parts]) if parts else np.zeros(0, np.int64)
    if exact and len(turns) < target and used < total_conv:  # still short: single-turn conversations
        extra = perm[used:used + min(total_conv - used, target - len(turns))]
        _run_round(world, model, rng, turns, base_seed + calls + 1, **first_turns(extra))
    keep = np.ones(len(turns), dtype=bool)
    if exact and len(turns) > target:
        keep = _trim(rng, np.array(turns.cols["conv"], dtype=np.int64), len(turns) - target)
    return _assemble(world, week, turns, keep, user, model)


def _trim(rng: np.random.Generator, conv: np.ndarray, excess: int) -> np.ndarray:
    """Drop whole conversations (chosen at random) so that exactly `excess` turns go."""
    ids, sizes = np.unique(conv, return_counts=True)
    order = rng.permutation(len(ids))
    cum = np.cumsum(sizes[order])
    cut = int(np.searchsorted(cum, excess, side="left"))  # first prefix reaching the excess
    if cut < len(cum) and cum[cut] == excess:
        drop = ids[order[:cut + 1]]
    else:
        drop = list(ids[order[:cut]])
        left = excess - (int(cum[cut - 1]) if cut else 0)
        rest = order[cut:]
        singles = ids[rest[sizes[rest] == 1]]
        if len(singles) >= left:
            drop.extend(singles[:left].tolist())
        else:  # cannot hit the target exactly: drop the prefix that overshoots least
            drop = ids[order[:cut + 1]]
        drop = np.array(drop, dtype=np.int64)
    return ~np.isin(conv, drop)


def _numbered(prefix: str, numbers: np.ndarray, width: int) -> list[str]:
    """[f"{prefix}{n:0{width}d}" for n in numbers], built as one byte buffer (ids for every record)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    width = max(width, len(str(int(numbers.max()))) if len(numbers) else width)
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    digits = (numbers[:, None] // 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)) % 10 + 48
    rows = np.concatenate([np.broadcast_to(head, (len(numbers), len(head))), digits.astype(np.uint8)], axis=1)
    step = rows.shape[1]
    raw = rows.tobytes().decode("ascii")
    return [raw[i:i + step] for i in range(0, len(raw), step)]


def _assemble(world: World, week: int, turns: _Turns, keep: np.ndarray, user: np.ndarray,
              model: Generator) -> WeekTraffic:
    """Sort the kept turns by time, number them, add thumbs and corrections, and build the rows."""
    cols, bank, kb, s = turns.cols, world.bank, world.kb, world.settings
    t_all = np.array(cols["t_us"], dtype=np.int64)
    conv_all = np.array(cols["conv"], dtype=np.int64)
    idx = np.flatnonzero(keep)
    order = idx[np.lexsort((conv_all[idx], t_all[idx]))]
    n = len(order)
    position = np.full(len(t_all), -1, dtype=np.int64)
    position[order] = np.arange(n)
    rids = _numbered(f"req-{week:02d}-", np.arange(1, n + 1), 7)
    conv = conv_all[order]
    _, first_seen, conv_rank = np.unique(conv, return_index=True, return_inverse=True)
    session_no = np.empty(len(first_seen), dtype=np.int64)
    session_no[np.argsort(first_seen, kind="stable")] = np.arange(1, len(first_seen) + 1)
    sessions = _numbered(f"sess-{week:02d}-", session_no, 6)
    session = [sessions[k] for k in np.asarray(conv_rank).ravel().tolist()]
    user_no = user[conv] + 1
    user_ids = _numbered("user-", user_no, 5)

    pick = order.tolist()
    subject = np.array(cols["subject"], dtype=np.int64)[order]
    kind = np.array(cols["kind"], dtype=np.int64)[order]
    outcome = np.array(cols["outcome"], dtype=np.int64)[order]
    prev = np.array(cols["prev"], dtype=np.int64)[order]
    prev_pos = np.where(prev >= 0, position[np.maximum(prev, 0)], -1)
    follows = [rids[p] if p >= 0 else None for p in prev_pos.tolist()]
    reask_of = [f if k == 1 else None for f, k in zip(follows, kind.tolist())]

    rng = np.random.default_rng([s.seed, week, 0xFEED])
    happy = outcome == 0
    has_fb = rng.random(n) < s.feedback_rate
    down = np.where(happy, rng.random(n) < 0.08, rng.random(n) < 0.9)
    wants_fix = rng.random(n) < s.correction_rate
    feedback_arr = np.where(has_fb, np.where(down, -1, 1), 0)
    feedback = [f or None for f in feedback_arr.tolist()]
    correction: list[str | None] = [None] * n
    is_kb = np.array([k == "kb" for k in bank.kinds])[subject]
    for i in np.flatnonzero((feedback_arr == -1) & wants_fix & is_kb).tolist():
        correction[i] = kb.by_id[bank.label[int(subject[i])]].answer

    start = world.week_start(week)
    ts = [start + timedelta(microseconds=t) for t in t_all[order].tolist()]
    version = model.model_version
    prompts = [cols["prompt"][r] for r in pick]
    responses = [cols["response"][r] for r in pick]
    latency = [cols["latency_ms"][r] for r in pick]
    ptok = [cols["prompt_tokens"][r] for r in pick]
    ctok = [cols["completion_tokens"][r] for r in pick]
    pii = [cols["pii"][r] for r in pick]
    records = [
        {"request_id": rid, "ts": t, "user_id": uid, "session_id": sid, "prompt": p, "response": r,
         "model_version": version, "latency_ms": lat, "prompt_tokens": pt, "completion_tokens": ct,
         "feedback": fb, "correction": cor, "metadata": {}}
        for rid, t, uid, sid, p, r, lat, pt, ct, fb, cor in zip(
            rids, ts, user_ids, session, prompts, responses, latency, ptok, ctok, feedback, correction)
    ]
    subj_list = subject.tolist()
    topics = [bank.topic[x] for x in subj_list]
    labels = [bank.label[x] for x in subj_list]
    versions = [bank.kb_version[x] for x in subj_list]
    outcomes = [OUTCOMES[o] for o in outcome.tolist()]
    turn = [TURN_KINDS[k] for k in kind.tolist()]
    truth = [
        {"request_id": rid, "week": week, "topic": tp, "subject": lb, "kb_version": kv, "turn": tk,
         "is_refusal": oc == "refusal", "is_reask": ro is not None, "reask_of": ro, "follows": fo,
         "is_hallucination": oc == "wrong", "outcome": oc, "pii": pi}
        for rid, tp, lb, kv, tk, oc, ro, fo, pi in zip(rids, topics, labels, versions, turn, outcomes, reask_of,
                                                         follows, pii)
    ]
    v2 = np.array([v == "v2" for v in bank.kb_version])[subject]
    counts = {
        "records": n, "correct": int((outcome == 0).sum()), "refusals": int((outcome == 1).sum()),
        "hallucinations": int((outcome == 2).sum()), "first_turns": int((kind == 0).sum()),
        "reasks": int((kind == 1).sum()), "switches": int((kind == 2).sum()), "followups": int((kind == 3).sum()),
        "thumbs_up": int((feedback_arr == 1).sum()), "thumbs_down": int((feedback_arr == -1).sum()),
        "corrections": n - correction.count(None), "pii_records": n - pii.count([]),
        "v2_records": int(v2.sum()),
    }
    return WeekTraffic(week=week, records=records, truth=truth, counts=counts)
