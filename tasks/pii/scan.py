"""The independent leak scan: a second opinion on what leaves the mask stage (DESIGN.md section 8).

The masking's own re-scan asks the same recognizers again, so whatever they cannot see they miss
twice. This scan shares nothing with them but the text view (tasks/pii/view.py: zero-width characters
dropped, full-width forms folded, percent-encoded punctuation decoded): plain shapes, no checksums, no
length tables, no NER, no context scores. Recall comes first: an IBAN-shaped string is a hit whether
or not its check digits add up, a 12-19 digit run whether or not it passes Luhn.

Detectors (`pii.leak_scan_detectors`), each with the pseudonym type a hit is masked with:

    email                  local@domain.tld                                   EMAIL_ADDRESS
    obfuscated_email       "john at example dot com", "jane[at]example[dot]org" EMAIL_ADDRESS
    iban                   two letters, two digits, 8-30 letters/digits (8+ digits) IBAN_CODE
    card                   12-19 digits, single spaces, dots or dashes between   CREDIT_CARD
    digit_run              9+ digits in a row, or 10+ with separators           ID_NUMBER
    ssn                    3-2-4 digit groups, also partly redacted (XXX-XX-1234) US_SSN
    prefixed_id            1-4 capitals then 6+ digits (passports, licences)     ID_NUMBER
    secret                 key prefixes (sk-, ghp_, AKIA ...), long mixed letter/digit tokens API_KEY
    credential             user:password@ in URLs, values after password:/token= ... CREDENTIAL
    mac                    six hex pairs (00:1A:2B:3C:4D:5E), or three hex quads  MAC_ADDRESS
    ipv4                   four dot-separated numbers                            IP_ADDRESS
    date_of_birth          a date after "born", "birth", "DOB"                    DATE_OF_BIRTH
    spelled_number         seven or more digits spelled out ("five five five ...") PHONE_NUMBER
    phone_shaped           7-15 digits in 2+ groups, 9-15 in one ("78 651 450"), no date PHONE_NUMBER
    name_beside_token      a capitalised word right beside a <PERSON_..> token   PERSON
    postcode_beside_token  a postal-code shape right beside a <LOCATION_..> token LOCATION

Pseudonym tokens themselves are never hits: they are blanked before the shapes are looked for.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterable, Sequence

from tasks.pii.keys import PSEUDONYM_RE, pseudonym
from tasks.pii.view import TextView

BLANK = "\x00"  # what a pseudonym token becomes while shapes are looked for: no letter, digit or blank

SCAN_TYPES = {
    "email": "EMAIL_ADDRESS",
    "obfuscated_email": "EMAIL_ADDRESS",
    "iban": "IBAN_CODE",
    "card": "CREDIT_CARD",
    "digit_run": "ID_NUMBER",
    "ssn": "US_SSN",
    "prefixed_id": "ID_NUMBER",
    "secret": "API_KEY",
    "credential": "CREDENTIAL",
    "mac": "MAC_ADDRESS",
    "ipv4": "IP_ADDRESS",
    "date_of_birth": "DATE_OF_BIRTH",
    "spelled_number": "PHONE_NUMBER",
    "phone_shaped": "PHONE_NUMBER",
    "name_beside_token": "PERSON",
    "postcode_beside_token": "LOCATION",
}
DETECTORS = tuple(SCAN_TYPES)

_DIGIT_WORDS = "zero|oh|one|two|three|four|five|six|seven|eight|nine"
# Words that say what is wrong with a password rather than what it is ("my password is not working").
_NOT_A_SECRET = frozenset(
    "not wrong incorrect invalid correct right too expired the a an my your being still working required "
    "missing case reset changed forgotten blank empty long short weak strong same different locked saved "
    "stored set ok okay fine no also already never now there here this that it".split()
)
# "it at amazon.com" is a shop, not an address: with a plain " at " and a plain dot, the local part
# must not be one of these.
_NOT_A_MAILBOX = frozenset(
    "it this that them him her me us you one something anything everything stuff item items product products "
    "order orders look looking available sold sale online here there home work school arrive arrived "
    "bought buy purchased ordered listed priced shop shopping sign signed log logged login is was are".split()
)
# Capitalised words that are not the rest of a name beside a person token.
_NOT_A_NAME = frozenset(
    "I A An The And Or But So If Then Thanks Thank Hi Hello Hey Dear Regards Best Cheers Please Yes No Ok Okay "
    "Mr Mrs Ms Dr Prof Sir Madam Inc Ltd LLC Corp Co Team Support Customer Service Order Account "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July "
    "August September October November December Today Tomorrow Yesterday How What Why When Where Who Which "
    "Can Could Would Will Is Are Do Does Did My Your Our We You He She They It This That There Here Sorry "
    "Just Also Hope".split()
)


@functools.lru_cache(maxsize=1)
def _patterns() -> dict[str, re.Pattern[str]]:
    """The shapes, as stdlib regular expressions (several times faster here than the regex module).
    Where only part of a match is the value, the group "value" holds it."""
    at = r"(?:[ \t]*[\[({<][ \t]*(?:[aA][tT]|@)[ \t]*[\])}>][ \t]*|[ \t]+[aA][tT][ \t]+|[ \t]*@[ \t]*)"
    dot = r"(?:[ \t]*[\[({<][ \t]*(?:[dD][oO][tT]|\.)[ \t]*[\])}>][ \t]*|[ \t]+[dD][oO][tT][ \t]+|\.)"
    month = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
    date = (
        r"(?:\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|\d{1,2}(?:st|nd|rd|th)?[ \t]+(?:of[ \t]+)?" + month
        + r",?[ \t]+\d{2,4}|" + month + r"[ \t]+\d{1,2}(?:st|nd|rd|th)?,?[ \t]+\d{2,4})"
    )
    # Digits glued to letters by a dash or underscore belong to an identifier ("req-03-0000123", a UUID):
    # not a number of their own.
    no_id_before, no_id_after = r"(?<![A-Za-z0-9])(?<![A-Za-z0-9][-_])", r"(?![A-Za-z0-9])(?![-_][A-Za-z0-9])"
    return {
        "email": re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)+"),
        "obfuscated_email": re.compile(
            r"(?<![\w.+-])(?P<user>[\w.+-]+)(?P<at>" + at + r")[\w-]+(?:" + dot + r"[\w-]+)*?(?P<dot>" + dot
            + r")[A-Za-z]{2,24}(?![\w-])"
        ),
        "iban": re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}(?:[ -]?[A-Za-z0-9]{1,3})?(?![A-Za-z0-9])"),
        "card": re.compile(no_id_before + r"(?<!\d[ .-])\d(?:[ .-]?\d){11,18}" + no_id_after + r"(?![ .-]\d)"),
        "digit_run": re.compile(
            no_id_before + r"\d{9,}" + no_id_after
            + r"|" + no_id_before + r"(?<!\d[ .()/-])\d(?:[ .()/-]{1,2}\d|\d){9,}(?![\d:])" + no_id_after + r"(?![ .()/-]\d)"
        ),
        "ssn": re.compile(r"(?<![\w*#•])(?:\d{3}|[Xx*#•]{3})[- ](?:\d{2}|[Xx*#•]{2})[- ](?:\d{4}|[Xx*#•]{4})(?![\w*#•])"),
        "prefixed_id": re.compile(r"(?<![A-Za-z0-9])[A-Z]{1,4}[-_#]?\d(?:[ -]?\d){5,}(?![A-Za-z0-9])(?![ -]\d)"),
        "secret": re.compile(
            r"(?<![A-Za-z0-9])(?P<known>(?:AKIA|ASIA|AIza|gh[pousr]_|github_pat_|xox[abpors]-|sk-|[spr]k_(?:live|test)_"
            r"|glpat-|hf_)[A-Za-z0-9_-]{10,})|(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{20,}"
        ),
        "credential": re.compile(
            r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://(?P<value>[^\s:/@\x00]+:[^\s@/\x00]+)(?=@)"
            r"|\b(?i:password|passwd|passphrase|pwd|passcode|pin|secret|api[ _-]?key|access[ _-]?key|auth[ _-]?token"
            r"|token)\b[\"']?[ \t]*(?:(?P<is>[iI][sS])[ \t]*[:=]?|[:=]|=>)[ \t]*[\"']?(?P<value2>[^\s\x00\"']+)"
        ),
        "mac": re.compile(
            r"(?<![0-9A-Fa-f:-])[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}(?![0-9A-Fa-f:-])"
            r"|(?<![0-9A-Fa-f.])[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}(?![0-9A-Fa-f.])"
        ),
        "ipv4": re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)"),
        "date_of_birth": re.compile(
            r"(?i)\b(?:born|birth|birthday|dob|d\.o\.b\.?|b-day)\b[^\n\d\x00]{0,30}?(?P<value>" + date + r")"
        ),
        "spelled_number": re.compile(
            r"(?i)(?<!\w)(?:" + _DIGIT_WORDS + r"|\d{1,4})(?:[ \t,.-]+(?:" + _DIGIT_WORDS + r"|\d{1,4})){6,}(?!\w)"
        ),
        # Groups of digits joined by single spaces, dots or dashes, an optional +country code and
        # (area code) in front and an xNNN extension behind; not glued to letters, ids or times.
        "phone_shaped": re.compile(
            r"(?<![\w+./:(-])(?<!\d,)(?:\+\d{8,15}|\d{9,15}|(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,6}(?:[ .-]\d{1,6}){1,5})"
            r"(?:[ ]?x\d{1,5})?(?!\w)(?![:.,/-]?\d)"
        ),
        "word_after": re.compile(r"[ \t]{1,2}([^\W\d_][\w'’-]+)"),
        "word_before": re.compile(r"(?<=[^\W\d_A-Z,;][ \t])([^\W\d_][\w'’-]+)[ \t]{1,2}$|(?<=[,;][ \t])([^\W\d_][\w'’-]+)[ \t]{1,2}$"),
        "postcode": re.compile(
            r"[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}(?![A-Za-z])|[A-Z]\d[A-Z][ \t]?\d[A-Z]\d|\d{4}[ \t]?[A-Z]{2}(?![A-Za-z])"
            r"|\d{3,6}(?:-\d{3,4})?(?!\w)"
        ),
        "separator": re.compile(r"[ \t]*,?[ \t]*"),
    }


# --------------------------------------------------------------------------------------------------
# Post-filters: what a shape must also have to count (still no checksum, no length table)


def _digits(value: str) -> int:
    return sum(c.isdigit() for c in value)


def _keep_email(match: Any) -> bool:
    if "@" in match.group("at") and match.group("dot") == ".":
        return True  # a plain address: the email detector's too, counted once after merging
    plain = match.group("at").strip().lower() == "at" and match.group("dot") == "."
    user = match.group("user")
    return not (plain and (user.lower() in _NOT_A_MAILBOX or not any(c.isalpha() for c in user)))


def _keep_secret(match: Any) -> bool:
    """A known key prefix, or a long token with a piece of 16+ characters holding 2+ digits and 2+
    letters: long words, slugs ("aurora-x2-headphones-2024") and UUIDs (pieces of 4-12) are no keys."""
    if match.group("known"):
        return True
    for piece in match.group().replace("_", "-").split("-"):
        if len(piece) >= 16 and _digits(piece) >= 2 and sum(c.isalpha() for c in piece) >= 2:
            return True
    return False


def _keep_credential(match: Any) -> bool:
    if match.group("is") is None:
        return True
    return match.group("value2").lower().strip(".,;:!?)") not in _NOT_A_SECRET


# Digit groups that are no phone number: dates (2026-04-20, 20.04.2026), a range of years (1984-1995),
# a decimal number (38.249069).
_NOT_A_PHONE = re.compile(
    r"\d{4}([./-])\d{1,2}\1\d{1,2}|\d{1,2}([./-])\d{1,2}\2\d{2,4}|(?:1[5-9]|20)\d{2} ?[-/] ?(?:1[5-9]|20)\d{2}|\d+\.\d+"
)


def _keep_phone(match: Any) -> bool:
    """7-15 digits (shorter is a price or a count, longer the card and digit-run detectors' job), and
    not a date, a range of years or a decimal number."""
    return 7 <= _digits(match.group()) <= 15 and not _NOT_A_PHONE.fullmatch(match.group())


def _keep_spelled(value: str) -> bool:
    words = re.findall(r"[A-Za-z]+|\d+", value)
    spelled = sum(1 for w in words if not w.isdigit())
    return spelled >= 3 and sum(len(w) if w.isdigit() else 1 for w in words) >= 7


_FILTERS: dict[str, Callable[[Any], bool]] = {
    "obfuscated_email": _keep_email,
    "iban": lambda m: _digits(m.group()) >= 8,
    "ssn": lambda m: _digits(m.group()) >= 4,
    "secret": _keep_secret,
    "credential": _keep_credential,
    "spelled_number": lambda m: _keep_spelled(m.group()),
    "phone_shaped": _keep_phone,
}
# Cheap looks: what a text needs for a detector to find anything (given the text and its lower case).
_DIGIT_WORD = re.compile(r"\b(?:" + _DIGIT_WORDS + r")\b")
_CREDENTIAL_WORDS = ("://", "pass", "pwd", "pin", "secret", "key", "token")
_NEEDS: dict[str, Callable[[str, str], bool]] = {
    "email": lambda t, low: "@" in t,
    "card": lambda t, low: _digits(t) >= 12,
    "digit_run": lambda t, low: _digits(t) >= 9,
    "ssn": lambda t, low: _digits(t) >= 4,
    "prefixed_id": lambda t, low: _digits(t) >= 6,
    "iban": lambda t, low: _digits(t) >= 8,
    "mac": lambda t, low: _digits(t) >= 2 and (":" in t or "-" in t or "." in t),
    "ipv4": lambda t, low: _digits(t) >= 4 and "." in t,
    "credential": lambda t, low: any(w in low for w in _CREDENTIAL_WORDS),
    "date_of_birth": lambda t, low: _digits(t) >= 2 and ("birth" in low or "born" in low or "dob" in low or "d.o.b" in low or "b-day" in low),
    "spelled_number": lambda t, low: len(_DIGIT_WORD.findall(low, 0)) >= 3,
    "phone_shaped": lambda t, low: _digits(t) >= 7,
}


# --------------------------------------------------------------------------------------------------
# The scan


class LeakScan:
    """`hits(text)`: spans (start, end, detector) of the original text; `mask(text, hits, key)`."""

    def __init__(self, detectors: Sequence[str] = DETECTORS):
        unknown = sorted(set(detectors) - set(DETECTORS))
        if unknown:
            raise ValueError(
                f"pii.leak_scan_detectors: unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS)}"
            )
        self.detectors = [d for d in DETECTORS if d in set(detectors)]
        self._patterns = _patterns()

    def hits(self, text: str) -> list[tuple[int, int, str]]:
        """Every detector's hits, overlapping ones merged (the first detector's name kept)."""
        if not text:
            return []
        view = TextView(text)
        tokens = [(m.start(), m.end(), m.group(1)) for m in PSEUDONYM_RE.finditer(view.text)]
        seen = view.text
        for a, b, _ in tokens:
            seen = seen[:a] + BLANK * (b - a) + seen[b:]
        lower = seen.lower()
        found: list[tuple[int, int, str]] = []
        for name in self.detectors:
            if name.endswith("_beside_token"):
                found.extend(self._beside_tokens(name, seen, tokens))
                continue
            needs = _NEEDS.get(name)
            if needs is not None and not needs(seen, lower):
                continue
            keep = _FILTERS.get(name)
            for match in self._patterns[name].finditer(seen):
                if keep is None or keep(match):
                    start, end = _value_span(match)
                    if end > start:
                        found.append((start, end, name))
        return [(*view.span(a, b), name) for a, b, name in _merge(found)]

    def _beside_tokens(self, name: str, seen: str, tokens: list[tuple[int, int, str]]) -> Iterable[tuple[int, int, str]]:
        kind = "PERSON" if name == "name_beside_token" else "LOCATION"
        for start, end, entity in tokens:
            if entity != kind:
                continue
            if kind == "PERSON":
                # The whole run of name-like words after the token: masking one word must not leave
                # the next one beside a new token for a second scan to find.
                position, run_start = end, None
                while (after := self._patterns["word_after"].match(seen, position)) and _name_like(after.group(1)):
                    run_start = after.start(1) if run_start is None else run_start
                    position = after.end(1)
                if run_start is not None:
                    yield run_start, position, name
                before = self._patterns["word_before"].search(seen, max(0, start - 40), start)
                group = before and (1 if before.group(1) else 2)
                if before and _name_like(before.group(group)):
                    yield before.start(group), before.end(group), name
            else:
                gap = self._patterns["separator"].match(seen, end)
                code = self._patterns["postcode"].match(seen, gap.end()) if gap and gap.end() > end else None
                if code:
                    yield code.start(), code.end(), name
                for code in self._patterns["postcode"].finditer(seen, max(0, start - 14), start):
                    rest = seen[code.end() : start]
                    if rest and self._patterns["separator"].fullmatch(rest):
                        yield code.start(), code.end(), name

    def mask(self, text: str, hits: Sequence[tuple[int, int, str]], key: bytes) -> str:
        """`text` with each hit replaced by the keyed pseudonym of its detector's type."""
        out = text
        for start, end, name in sorted(hits, reverse=True):
            out = out[:start] + pseudonym(key, SCAN_TYPES[name], text[start:end]) + out[end:]
        return out


def _value_span(match: re.Match[str]) -> tuple[int, int]:
    for group in ("value", "value2"):
        if group in match.re.groupindex and match.group(group) is not None:
            return match.span(group)
    return match.span()


def _name_like(word: str) -> bool:
    return word[0].isupper() and word not in _NOT_A_NAME


def _merge(found: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    merged: list[tuple[int, int, str]] = []
    for start, end, name in sorted(found):
        if merged and start < merged[-1][1]:
            a, b, first = merged[-1]
            merged[-1] = (a, max(b, end), first)
        else:
            merged.append((start, end, name))
    return merged


@functools.lru_cache(maxsize=8)
def leak_scan(detectors: tuple[str, ...] = DETECTORS) -> LeakScan:
    """The scan of these detectors, built once per process."""
    return LeakScan(detectors)
