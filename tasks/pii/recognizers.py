"""The recognizers that find each entity type: Presidio's own, spaCy NER's labels, and this project's.

Presidio's predefined recognizers cover e-mail (validated offline against tldextract's bundled
public-suffix snapshot), phone numbers (python-phonenumbers, parsed only in windows around its own
candidates), cards, IBANs, IPs, US identifiers and more; spaCy NER gives PERSON, LOCATION,
ORGANIZATION, NRP and DATE_TIME. This project adds ORDER_ID, ACCOUNT_NUMBER, API_KEY, street
addresses (as LOCATION), names next to a cue (PERSON), and phone, card and driver's licence numbers
by context; tasks/pii/formats.py adds the formats found by shape (PASSPORT, MAC_ADDRESS, CREDENTIAL,
DATE_OF_BIRTH, written-out e-mails, cards and IBANs without their checksums, names in other scripts). `recognizers_for` gives the recognizers of a list of entity types and refuses a type
nobody recognizes (Presidio would silently skip it).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Sequence

from tasks.pii.formats import format_recognizers


# spaCy NER labels behind each Presidio entity the NER recognizer can produce.
NER_LABELS: dict[str, tuple[str, ...]] = {
    "PERSON": ("PERSON", "PER"),
    "LOCATION": ("GPE", "LOC", "FAC"),
    "ORGANIZATION": ("ORG",),
    "NRP": ("NORP",),
    "DATE_TIME": ("DATE", "TIME"),
}

_DIGIT = re.compile(r"\d")


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


# 7-15 digits in groups of up to six, an area code in brackets allowed, nothing digit-like after.
_PHONE_GROUPS = r"(?:\(\d{1,4}\)[ .-]?)?\d{1,6}(?:[ .-]\d{1,6}){0,5}(?![\w.-]?\d)"


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
            # "416 60 039 office", "mobile: 99 577450": a phone word right beside the number, which
            # Presidio's context window (counted from the number's first token) does not reach.
            Pattern(
                "digit groups before a phone word",
                r"(?<![\w+.-])(?=(?:[\s().-]{0,3}\d){7})" + _PHONE_GROUPS
                + r"(?=[ \t]*[-,:/]?[ \t]*(?:office|fax|mobile|cell|desk|phone|tel|home|work)\b)",
                0.6,
            ),
            Pattern(
                "digit groups after a phone word",
                r"\b(?:phone|tel|mobile|cell|desk|fax|office)\b[ \t]*(?:number|no\.?|#)?[ \t]*[:#]?[ \t]*\K"
                r"(?=(?:[\s().-]{0,3}\d){7})" + _PHONE_GROUPS,
                0.6,
            ),
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
            # AB12345678, F1628235: capitals and six or more digits, whatever the issuer's format
            Pattern("letter-prefixed id", r"(?<![A-Za-z0-9])[A-Z]{1,4}[-_#]?\d(?:[ -]?\d){5,}(?![A-Za-z0-9])(?![ -]\d)", 0.45),
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
    found = {
        "US_DRIVER_LICENSE": [driver_license],
        "ORDER_ID": [order_id],
        "ACCOUNT_NUMBER": [account],
        "API_KEY": [api_key],
        "LOCATION": [classes.AddressRecognizer()],
        "PERSON": [classes.PersonCueRecognizer()],
        "PHONE_NUMBER": [phone],
        "CREDIT_CARD": [card],
    }
    for entity, recognizers in format_recognizers().items():
        found.setdefault(entity, []).extend(recognizers)
    return found


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


def recognizers_for(entities: Sequence[str]) -> list[Any]:
    factories = _predefined_factories()
    project = _project_recognizers()
    missing = [e for e in entities if e not in NER_LABELS and e not in factories and e not in project]
    if missing:
        raise ValueError(
            f"pii.entities: no recognizer for {', '.join(missing)}; supported: "
            f"{', '.join(supported_entities())}. Remove it from pii.entities or add a recognizer "
            f"in tasks/pii/recognizers.py (Presidio would silently skip it otherwise)."
        )
    recognizers: list[Any] = []
    for entity in entities:
        if entity in factories:
            recognizers.append(factories[entity]())
        recognizers.extend(project.get(entity, []))
    return recognizers
