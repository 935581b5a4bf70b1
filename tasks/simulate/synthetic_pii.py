"""Synthetic personal data for prompts: names, emails, phones, Luhn-valid cards, addresses, order ids,
IBANs, SSNs, IPs and API keys, each sentence returned with the values it holds (the ground truth
that PII leak tests check against).
"""

from __future__ import annotations

import random

import numpy as np

_FIRST = ("James", "Maria", "Robert", "Linda", "Michael", "Sarah", "David", "Emily", "Daniel", "Olivia", "Thomas",
          "Sophia", "Kevin", "Grace", "Brian", "Chloe", "Jason", "Hannah", "Eric", "Natalie", "Minji", "Jisoo",
          "Carlos", "Priya", "Ahmed", "Elena", "Lucas", "Fatima", "Oliver", "Ingrid")
_LAST = ("Smith", "Garcia", "Johnson", "Brown", "Miller", "Davis", "Wilson", "Anderson", "Taylor", "Moore", "Jackson",
         "Martin", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker", "Young", "King", "Kim", "Park", "Lee",
         "Patel", "Rossi", "Novak", "Schmidt", "Dubois", "Silva", "Hansen")
_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "fastmail.com", "icloud.com")
_STREETS = ("Maple Street", "Oak Avenue", "Cedar Lane", "Pine Road", "Elm Street", "Lakeview Drive", "Hillcrest Road",
            "Sunset Boulevard", "Park Avenue", "River Road", "Willow Way", "Main Street")
_CITIES = ("Springfield", "Portland", "Austin", "Denver", "Seattle", "Boston", "Chicago", "Phoenix", "Atlanta", "Madison")
_AREA = (212, 310, 312, 415, 206, 303, 512, 404, 617, 702, 813, 919)
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PII_TYPES = ("PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "ORDER_ID", "LOCATION", "CREDIT_CARD", "IBAN_CODE", "US_SSN",
             "IP_ADDRESS", "API_KEY")
_PII_WEIGHTS = (0.22, 0.2, 0.15, 0.15, 0.1, 0.08, 0.03, 0.03, 0.02, 0.02)
_PII_SENTENCES: dict[str, tuple[str, ...]] = {
    "PERSON": ("My name is {v}.", "This is {v} speaking.", "I'm {v}."),
    "EMAIL_ADDRESS": ("My email is {v}.", "Please reply to {v} if needed.", "You can email me at {v}."),
    "PHONE_NUMBER": ("You can call me at {v}.", "My phone number is {v}."),
    "ORDER_ID": ("My order number is {v}.", "It's about order {v}."),
    "LOCATION": ("I live at {v}.", "Please ship it to {v}."),
    "CREDIT_CARD": ("I paid with card {v}.", "My card number is {v}."),
    "IBAN_CODE": ("Please refund to my IBAN {v}.", "My IBAN is {v}."),
    "US_SSN": ("My SSN is {v} if you need it.", "My social security number is {v}."),
    "IP_ADDRESS": ("My IP address is {v}, if that helps.", "I'm connecting from {v}."),
    "API_KEY": ("My API key is {v}.", "Here is my key {v} for your developer portal."),
}


def _digit_strings(digits: np.ndarray) -> list[str]:
    """Rows of a (k, w) matrix of digits 0-9 as strings."""
    k, w = digits.shape
    raw = (digits.astype(np.uint8) + 48).tobytes().decode("ascii")
    return [raw[i * w:(i + 1) * w] for i in range(k)]


def luhn_check_digit(body: np.ndarray) -> np.ndarray:
    """Check digit per row of `body` (digits) making body + check digit pass the Luhn test."""
    doubled = body[:, ::-1].astype(np.int64)
    doubled[:, 0::2] *= 2  # the body's last digit sits next to the check digit: doubled
    doubled = np.where(doubled > 9, doubled - 9, doubled)
    return (10 - doubled.sum(axis=1) % 10) % 10


def _iban(rng: random.Random) -> str:
    country, length = rng.choice((("DE", 18), ("GB", 0), ("FR", 23)))
    if country == "GB":
        bban = rng.choice(("NWBK", "BARC", "HBUK")) + "".join(str(rng.randrange(10)) for _ in range(14))
    else:
        bban = "".join(str(rng.randrange(10)) for _ in range(length))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    raw = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4)) if rng.random() < 0.5 else raw


def _pii_values(kind: str, rng: np.random.Generator, k: int) -> list[str]:
    """k values of one PII type, drawn together."""
    ints = rng.integers
    if kind == "PERSON":
        return [f"{_FIRST[a]} {_LAST[b]}" for a, b in zip(ints(0, len(_FIRST), k).tolist(), ints(0, len(_LAST), k).tolist())]
    if kind == "EMAIL_ADDRESS":
        seps = (".", "_", "")
        return [f"{_FIRST[a].lower()}{seps[s]}{_LAST[b].lower()}{n}@{_DOMAINS[d]}" for a, s, b, n, d in zip(
            ints(0, len(_FIRST), k).tolist(), ints(0, 3, k).tolist(), ints(0, len(_LAST), k).tolist(),
            ints(1, 100, k).tolist(), ints(0, len(_DOMAINS), k).tolist())]
    if kind == "PHONE_NUMBER":
        exchange = ints(201, 990, k)
        exchange[exchange == 555] = 556  # 555 numbers are fictional: detectors may skip them
        styles = ("({a}) {e}-{n}", "{a}-{e}-{n}", "+1 {a} {e} {n}")
        return [styles[s].format(a=_AREA[a], e=e, n=n) for a, e, n, s in zip(
            ints(0, len(_AREA), k).tolist(), exchange.tolist(), ints(1000, 10000, k).tolist(), ints(0, 3, k).tolist())]
    if kind == "ORDER_ID":
        return [f"ORD-{n}" for n in ints(1_000_000, 10_000_000, k).tolist()]
    if kind == "LOCATION":
        return [f"{n} {_STREETS[a]}, {_CITIES[b]}" for n, a, b in zip(
            ints(12, 9800, k).tolist(), ints(0, len(_STREETS), k).tolist(), ints(0, len(_CITIES), k).tolist())]
    if kind == "CREDIT_CARD":
        body = ints(0, 10, (k, 15))
        visa = rng.random(k) < 0.6
        body[:, 0] = np.where(visa, 4, 5)
        body[:, 1] = np.where(visa, body[:, 1], ints(1, 6, k))  # Mastercard: 51-55
        numbers = _digit_strings(np.concatenate([body, luhn_check_digit(body)[:, None]], axis=1))
        spaced = (rng.random(k) < 0.5).tolist()
        return [" ".join((x[0:4], x[4:8], x[8:12], x[12:16])) if sp else x for x, sp in zip(numbers, spaced)]
    if kind == "IBAN_CODE":
        return [_iban(random.Random(int(seed))) for seed in ints(0, 2**62, k).tolist()]
    if kind == "US_SSN":
        area = np.where(rng.random(k) < 0.8, ints(1, 666, k), ints(667, 900, k))  # never 000, 666 or 9xx
        return [f"{a:03d}-{g:02d}-{n:04d}" for a, g, n in zip(area.tolist(), ints(1, 100, k).tolist(),
                                                             ints(1, 10000, k).tolist())]
    if kind == "IP_ADDRESS":
        first = _IP_FIRST[ints(0, len(_IP_FIRST), k)]
        return [f"{a}.{b}.{c}.{d}" for a, b, c, d in zip(first.tolist(), ints(0, 256, k).tolist(),
                                                          ints(0, 256, k).tolist(), ints(1, 255, k).tolist())]
    if kind == "API_KEY":
        raw = _ALNUM_BYTES[ints(0, len(_ALNUM_BYTES), (k, 32))].tobytes().decode("ascii")
        return ["sk-" + raw[i * 32:(i + 1) * 32] for i in range(k)]
    raise ValueError(f"no generator for PII type {kind!r}")


_IP_FIRST = np.array([a for a in range(11, 224) if a not in (127, 169, 172, 192)])
_ALNUM_BYTES = np.frombuffer(_ALNUM.encode("ascii"), dtype=np.uint8)


def pii_batch(rng: np.random.Generator, count: int) -> list[tuple[str, list[dict[str, str]]]]:
    """`count` PII sentences (one or two entities each) with the values they contain."""
    if count == 0:
        return []
    per = 1 + (rng.random(count) < 0.3)
    kinds = rng.choice(len(PII_TYPES), size=int(per.sum()), p=np.array(_PII_WEIGHTS) / sum(_PII_WEIGHTS))
    owner = np.repeat(np.arange(count), per)
    second = np.concatenate([[False], owner[1:] == owner[:-1]])
    dup = second & np.concatenate([[False], kinds[1:] == kinds[:-1]])  # the same type twice: keep one
    kinds, owner = kinds[~dup], owner[~dup]
    values: list[str] = [""] * len(kinds)
    for t, kind in enumerate(PII_TYPES):
        rows = np.flatnonzero(kinds == t)
        if len(rows):
            for row, value in zip(rows.tolist(), _pii_values(kind, rng, len(rows))):
                values[row] = value
    template = rng.integers(0, 6, len(kinds)).tolist()
    sentences: list[list[str]] = [[] for _ in range(count)]
    found: list[list[dict[str, str]]] = [[] for _ in range(count)]
    for o, t, v, tpl in zip(owner.tolist(), kinds.tolist(), values, template):
        kind = PII_TYPES[t]
        options = _PII_SENTENCES[kind]
        sentences[o].append(options[tpl % len(options)].format(v=v))
        found[o].append({"type": kind, "value": v})
    return [(" ".join(sents), f) for sents, f in zip(sentences, found)]
