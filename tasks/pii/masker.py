"""The masker: Presidio analysis, tidy-up rules and keyed pseudonyms over a batch of texts, with a
re-scan of its own outputs.

`build_masker(settings, key)` builds the engines once (spaCy NER, the recognizers of
`pii.entities`, Presidio's anonymizer with a pseudonym operator per type); `Masker.mask_verified`
masks a batch, re-scans what changed, masks what the re-scan finds (up to `REMASK_ROUNDS` times) and
reports what the final re-scan still finds. A text whose analysis or anonymisation raises comes back
as a `MaskOutcome` without text (fail closed), naming the exception's type only.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from tasks.config import PiiSettings
from tasks.pii._engine import LeanAnalyzer, ner_engine, presidio_types
from tasks.pii.keys import PSEUDONYM_RE, PiiKeyError, pseudonym
from tasks.pii.recognizers import NER_LABELS, recognizers_for

REMASK_ROUNDS = 2  # re-scans whose findings are masked before the final, deciding re-scan


@dataclass(frozen=True)
class MaskOutcome:
    text: str | None  # None: the record failed and must be dropped
    entities: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the exception's type name only, never its message


# --------------------------------------------------------------------------------------------------
# Logging: Presidio logs some matched text (e.g. the IBAN validator at ERROR). Keep the message
# template, drop the arguments.


class _DropLogArguments(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg, record.args = f"{record.msg} [arguments withheld by tasks.pii]", None
        return True


def _quiet_presidio_logs() -> None:
    for name in ("presidio-analyzer", "presidio-anonymizer"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLogArguments) for f in logger.filters):
            logger.addFilter(_DropLogArguments())


# --------------------------------------------------------------------------------------------------
# Masker


def allow_pattern(terms: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive whole-word pattern for allow-listed terms (None when there are none)."""
    terms = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
    if not terms:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in terms) + r")(?!\w)", re.IGNORECASE)


class Masker(LeanAnalyzer):
    """Analyzer + anonymizer built once; `mask_texts` masks a batch in this process."""

    def __init__(self, settings: PiiSettings, key: bytes, *, extra_recognizers: Sequence[Any] = ()):
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer
        from presidio_anonymizer import AnonymizerEngine

        if not key:
            raise PiiKeyError("an empty PII key cannot pseudonymise: see load_pii_key")
        _quiet_presidio_logs()
        self.entities = list(dict.fromkeys(settings.entities))
        if not self.entities:
            raise ValueError("pii.entities is empty: nothing would be masked; list the entity types to mask")
        recognizers = recognizers_for(self.entities)
        recognizers.extend(extra_recognizers)
        ner_entities = [e for e in self.entities if e in NER_LABELS]
        nlp_engine = ner_engine(settings.spacy_model, ner_entities)
        if ner_entities:
            recognizers.append(SpacyRecognizer(supported_entities=ner_entities))
        entities = sorted(set(self.entities) | {e for r in extra_recognizers for e in r.supported_entities})
        super().__init__(settings, nlp_engine, recognizers, entities)
        self.anonymizer = AnonymizerEngine()
        self._allow = allow_pattern(settings.allow_list)
        self._set_key(key)

    def _set_key(self, key: bytes) -> None:
        from presidio_anonymizer.entities import OperatorConfig

        self._key = key
        self._operators = {
            entity: OperatorConfig("custom", {"lambda": functools.partial(pseudonym, key, entity)})
            for entity in self._analyze_entities
        }
        self._operators["DEFAULT"] = OperatorConfig("replace", {"new_value": "<PII>"})

    def with_key(self, key: bytes) -> Masker:
        """The same engines under another key (cheap: nothing is rebuilt)."""
        if not key:
            raise PiiKeyError("an empty PII key cannot pseudonymise: see load_pii_key")
        other = copy.copy(self)
        other._set_key(key)
        return other

    @property
    def key(self) -> bytes:
        """The pseudonym key (compare it with hmac.compare_digest)."""
        return self._key

    def tidy(self, text: str, results: list[Any]) -> list[Any]:
        """The tidy-up rules (`_tidy`) with this masker's allow list."""
        return _tidy(text, results, self._allow)

    # -- masking ------------------------------------------------------------------------------------

    def anonymize(self, text: str, results: list[Any]) -> str:
        return self.anonymizer.anonymize(text=text, analyzer_results=results, operators=self._operators).text

    def mask_texts(self, texts: Sequence[str]) -> list[MaskOutcome]:
        outcomes: list[MaskOutcome] = []
        for text, results in zip(texts, self.analyze_texts(texts)):
            if isinstance(results, BaseException):
                outcomes.append(MaskOutcome(None, {}, type(results).__name__))
                continue
            try:
                masked = self.anonymize(text, results)
                counts = Counter(r.entity_type for r in results)
                outcomes.append(MaskOutcome(masked, dict(counts), None))
            except Exception as err:  # noqa: BLE001
                outcomes.append(MaskOutcome(None, {}, type(err).__name__))
        return outcomes

    def leak_spans(self, masked_texts: Sequence[str]) -> list[list[tuple[int, int, str]] | BaseException]:
        """Re-scan masked texts: per text, the detected spans outside pseudonym tokens (start, end,
        type), or the exception its analysis raised."""
        out: list[list[tuple[int, int, str]] | BaseException] = []
        for text, results in zip(masked_texts, self.analyze_texts(masked_texts)):
            if isinstance(results, BaseException):
                out.append(results)
                continue
            tokens = [m.span() for m in PSEUDONYM_RE.finditer(text)]
            out.append([span for r in results for span in _outside_tokens(text, r.start, r.end, r.entity_type, tokens)])
        return out

    def find_leaks(self, masked_texts: Sequence[str]) -> list[list[str]]:
        """Entity types the re-scan still finds per masked text ("RESCAN_ERROR" if it raised)."""
        return [
            ["RESCAN_ERROR"] if isinstance(spans, BaseException) else [t for _, _, t in spans]
            for spans in self.leak_spans(masked_texts)
        ]

    def mask_verified(self, texts: Sequence[str], *, remask: bool = True) -> list[tuple[MaskOutcome, list[str]]]:
        """Mask, re-scan the outputs, and return each outcome with the entity types still found.

        Masking changes a text's context, and NER sometimes finds a name only next to a pseudonym
        ("said <PERSON_..> to Maurice"). With `remask`, what a re-scan finds is masked too and those
        texts are re-scanned again (at most REMASK_ROUNDS times); what the final re-scan finds is a
        leak. A text whose re-scan raises is dropped (fail closed)."""
        outcomes = self.mask_texts(texts)
        leaks: dict[int, list[str]] = {}
        # A text in which the first pass detected nothing was not changed, and analysing it again
        # would repeat the very same computation: only texts with detections are re-scanned
        # (whether or not the anonymizer really changed them).
        live = [i for i, o in enumerate(outcomes) if o.text is not None and (o.entities or o.text != texts[i])]
        rounds = REMASK_ROUNDS if remask else 0
        for round_ in range(rounds + 1):
            final = round_ == rounds
            if not live:
                break
            again = []
            for i, spans in zip(live, self.leak_spans([outcomes[i].text for i in live])):
                if isinstance(spans, BaseException):
                    outcomes[i] = MaskOutcome(None, {}, f"rescan:{type(spans).__name__}")
                elif spans and final:
                    leaks[i] = [t for _, _, t in spans]
                elif spans:
                    try:
                        from presidio_analyzer import RecognizerResult

                        results = [RecognizerResult(t, a, b, 1.0) for a, b, t in spans]
                        counts = Counter(outcomes[i].entities)
                        counts.update(t for _, _, t in spans)
                        outcomes[i] = MaskOutcome(self.anonymize(outcomes[i].text, results), dict(counts), None)
                        again.append(i)
                    except Exception as err:  # noqa: BLE001
                        outcomes[i] = MaskOutcome(None, {}, type(err).__name__)
            live = again
        return [(o, leaks.get(i, [])) for i, o in enumerate(outcomes)]


# --------------------------------------------------------------------------------------------------
# Tidy-up rules

_SOFT_TYPES = {"PERSON", "LOCATION", "ORGANIZATION", "NRP"}  # free-text entities: trim their edges
_SOFT_EDGE = re.compile(r"(?:['’]s|[\s,;:!?\"“”'’)\]]+|(?<=\w{4})\.)$")
_NOT_A_NAME_PART = {"the", "and", "van", "von", "der", "den", "del", "mr", "mrs", "ms", "dr"}


# Partial leaks: what is left beside a found span is often the rest of it. A person's span takes the
# capitalised word right after it (a surname NER did not include) or right before it; a place takes
# a postal code right beside it ("Berlin 10115", "SW1A 1AA, London").
_NOT_THE_REST_OF_A_NAME = frozenset(
    "I A An The And Or But So If Then Thanks Thank Hi Hello Hey Dear Regards Best Cheers Please Yes No Ok Okay "
    "Mr Mrs Ms Dr Prof Sir Madam Inc Ltd LLC Corp Co Group Bank University Team Support Customer Service Order "
    "Account Street Road Avenue Lane Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February "
    "March April May June July August September October November December Today Tomorrow Yesterday How What "
    "Why When Where Who Which Can Could Would Will Is Are Do Does Did My Your Our We You He She They It This "
    "That There Here Sorry Just Also Hope Call Tell Ask Email Write Send Please".split()
)
_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}|[A-Z]\d[A-Z][ \t]?\d[A-Z]\d|\d{4}[ \t]?[A-Z]{2}|\d{3,6}(?:-\d{3,4})?)"


@functools.lru_cache(maxsize=1)
def _beside_patterns() -> dict[str, Any]:
    import regex

    word = r"\p{Lu}[\p{Ll}\p{M}'’-]+"
    return {
        "name_after": regex.compile(
            r"[ \t](?:\p{Lu}\.?[ \t]+)?(?:(?:van|von|de|der|den|da|di|del|le|la|bin|al)[ \t]+)?(" + word + r")(?![\w@])"
        ),
        # Only mid-sentence: a capitalised word opening a sentence is as often a verb ("Contact").
        "name_before": regex.compile(r"(?<=[\p{Ll},;][ \t])(" + word + r")[ \t]$"),
        "postcode_after": regex.compile(r"[ \t]*,?[ \t]*(" + _POSTCODE + r")(?![\w-])"),
        "postcode_before": regex.compile(r"(?<![\w-])(" + _POSTCODE + r")[ \t]*,?[ \t]*$"),
    }


def _extend_person(text: str, start: int, end: int) -> tuple[int, int]:
    patterns = _beside_patterns()
    after = patterns["name_after"].match(text, end)
    if after and after.group(1) not in _NOT_THE_REST_OF_A_NAME:
        end = after.end(1)
    before = patterns["name_before"].search(text, max(0, start - 30), start)
    if before and before.group(1) not in _NOT_THE_REST_OF_A_NAME:
        start = before.start(1)
    return start, end


def _extend_location(text: str, start: int, end: int) -> tuple[int, int]:
    patterns = _beside_patterns()
    after = patterns["postcode_after"].match(text, end)
    if after:
        end = after.end(1)
    before = patterns["postcode_before"].search(text, max(0, start - 16), start)
    if before:
        start = before.start(1)
    return start, end


_EXTENDED = {"PERSON": _extend_person, "LOCATION": _extend_location}


def _tidy(text: str, results: list[Any], allow: re.Pattern[str] | None = None) -> list[Any]:
    """Trim spans, drop spans inside larger ones or inside allow-listed terms, and mask the other
    mentions of a found value.

    Whitespace at the edges and a possessive "'s" are not part of a name; a span inside a larger
    one is masked by it anyway; a name found once ("Vanessa P. Hertzog") is also masked where it
    occurs again in the same text, whole or by its parts ("Vanessa")."""
    _, RecognizerResult = presidio_types()

    allowed = [m.span() for m in allow.finditer(text)] if allow is not None else []
    spans = []
    for r in results:
        start, end = r.start, r.end
        if allowed and any(a <= start and end <= b for a, b in allowed):
            continue
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if r.entity_type in _SOFT_TYPES:
            while end > start and (edge := _SOFT_EDGE.search(text, start, end)) and edge.start() < end:
                end = edge.start()
        if end > start:
            r.start, r.end = start, end
            if r.entity_type in _EXTENDED:
                r.start, r.end = _EXTENDED[r.entity_type](text, r.start, r.end)
            spans.append(r)
    spans.sort(key=lambda r: (r.start, -(r.end - r.start), -r.score))
    kept: list[Any] = []
    for r in spans:
        if any(k.start <= r.start and r.end <= k.end for k in kept[-8:]):
            continue
        kept.append(r)
    values: dict[str, tuple[str, float]] = {}
    for r in kept:
        if r.entity_type in _SOFT_TYPES:
            value = text[r.start : r.end]
            parts = [value] + (value.split() if r.entity_type == "PERSON" else [])
            for part in parts:
                part = part.strip(".,")
                if len(part) >= 3 and part[0].isupper() and part.lower() not in _NOT_A_NAME_PART:
                    values.setdefault(part, (r.entity_type, r.score))
    if values:
        covered = [(k.start, k.end) for k in kept]
        for start, end, value in _whole_word_mentions(text, values):
            if not any(a < end and start < b for a, b in covered):
                entity, score = values[value]
                kept.append(RecognizerResult(entity, start, end, score))
                covered.append((start, end))
    return kept


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"  # what the re module's \w matches in str patterns


def _whole_word_mentions(text: str, values: Iterable[str]) -> list[tuple[int, int, str]]:
    """Whole-word occurrences of `values` from left to right, longest first where several start at
    the same place, none overlapping: what finditer of the alternation (?<!\w)(?:v1|v2..)(?!\w),
    longest value first, gives, without compiling a new regular expression for every text."""
    candidates = []
    for value in values:
        start = text.find(value)
        while start >= 0:
            end = start + len(value)
            if (start == 0 or not _is_word_char(text[start - 1])) and (end == len(text) or not _is_word_char(text[end])):
                candidates.append((start, -len(value), value))
            start = text.find(value, start + 1)
    candidates.sort()
    mentions, position = [], 0
    for start, negative_length, value in candidates:
        if start >= position:
            position = start - negative_length
            mentions.append((start, position, value))
    return mentions


def _outside_tokens(
    text: str, start: int, end: int, entity_type: str, tokens: list[tuple[int, int]]
) -> list[tuple[int, int, str]]:
    """The parts of [start, end) outside pseudonym tokens that hold a letter or digit."""
    parts, cursor = [], start
    for a, b in tokens:
        if b <= cursor or a >= end:
            continue
        if a > cursor:
            parts.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < end:
        parts.append((cursor, end))
    out = []
    for a, b in parts:
        while a < b and not text[a].isalnum():
            a += 1
        while b > a and not text[b - 1].isalnum():
            b -= 1
        if b > a:
            out.append((a, b, entity_type))
    return out


def build_masker(settings: PiiSettings, key: bytes, *, extra_recognizers: Sequence[Any] = ()) -> Masker:
    """Build the engines once. Raises ValueError naming a requested entity without a recognizer."""
    return Masker(settings, key, extra_recognizers=extra_recognizers)
