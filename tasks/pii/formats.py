"""Recognizers for the formats Presidio's own miss: written-out e-mails, cards and IBANs by shape,
partly redacted SSNs, letter-prefixed ids, passports, MAC addresses, credentials, dates of birth,
spelled-out phone numbers and names in Hangul, kana/kanji and Arabic script.

Presidio validates what it finds (Luhn for cards, the mod-97 check for IBANs, SSN area rules) and
knows the usual lengths: a value typed with a wrong digit, an unusual length or a redaction is left
verbatim. Here the shape is enough. Scores say how sure a shape is on its own; those under the
threshold (`pii.score_threshold`, 0.4) need a context word nearby.

Names in Hangul, kanji/kana and Arabic script: no spaCy model for those languages installs from the
package registry here (no `xx_ent_wiki_sm` re-upload; the `ko`/`ja` "core-news" names there are
placeholders), and the English model labels such text at random, so its hits there are discarded
(tasks/pii/_engine.py). A conservative rule takes their place: a name right after a name cue ("제
이름은", "名前は", "اسمي", "my name is") or right before an honorific ("씨", "님", "さん", "様").
Without a cue a name in those scripts is missed; `benchmarks/pii_benchmark.py` measures both sides.
"""

from __future__ import annotations

import functools
from typing import Any

# Common Korean surnames (over 90% of the population): a Hangul word before an honorific is a name
# only when it starts with one.
_KO_SURNAMES = (
    "김이박최정강조윤장임한오서신권황안송류유전홍고문양손배백허남심노하곽성차주우구민진나지엄채원천방공현함변"
    "염여추도소석선설마길연위표명기반왕금옥육인맹제모탁국어은편용예경봉사부가복태목형피두감음빈동온호범좌팽승간상갈"
)
# Nouns that take an honorific like a name does: "고객님" is "dear customer", "担当者様" "the person in charge".
_KO_NOT_NAMES = "고객|선생|사장|회원|교수|부장|과장|대리|팀장|기사|상담사|관리자|작가|원장|실장|소장|반장|어머|아버|주인|형|누|아드|따"
_KO_HONORIFIC = "(?:씨|님|고객님|선생님|교수님|대리님|과장님|부장님|팀장님)"
_JA_HONORIFIC = "(?:さん|様|さま|氏|先生|君|くん|ちゃん)"
_JA_NOT_NAMES = "担当者|関係者|利用者|会員|皆|学生|社長|部長|課長|先生|店長|医者|患者|神|お客|客|各位|皆々"
_HANGUL, _HAN = r"\uac00-\ud7a3", r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KANA = r"\u30a0-\u30ff\u3040-\u309f"
_ARABIC_WORD = r"[\u0621-\u064a\u0660-\u0669\u066e-\u06d3\u06fa-\u06ff]+"
_DIGIT_WORDS = "zero|oh|one|two|three|four|five|six|seven|eight|nine"
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = (
    r"(?:\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|\d{1,2}(?:st|nd|rd|th)?[ \t]+(?:of[ \t]+)?" + _MONTH
    + r",?[ \t]+\d{2,4}|" + _MONTH + r"[ \t]+\d{1,2}(?:st|nd|rd|th)?,?[ \t]+\d{2,4})"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@functools.lru_cache(maxsize=1)
def _classes() -> Any:
    """Presidio subclasses, defined on first use so that importing this module stays cheap."""
    from types import SimpleNamespace

    import regex
    import tldextract
    from presidio_analyzer import AnalysisExplanation, LocalRecognizer, Pattern, PatternRecognizer, RecognizerResult

    suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)
    at_word = regex.compile(r"\s*[\[({<]\s*(?:at|@)\s*[\])}>]\s*|\s+at\s+", regex.I)
    dot_word = regex.compile(r"\s*[\[({<]\s*(?:dot|\.)\s*[\])}>]\s*|\s+dot\s+", regex.I)

    class WrittenOutEmailRecognizer(PatternRecognizer):
        """"john at example dot com", "jane[at]example[dot]org", "jdoe (at) mail.example.com":
        the address read back must end in a public suffix (tldextract's bundled snapshot)."""

        def __init__(self) -> None:
            at = r"(?:[ \t]*[\[({<][ \t]*(?:at|@)[ \t]*[\])}>][ \t]*|[ \t]+at[ \t]+)"
            dot = r"(?:[ \t]*[\[({<][ \t]*(?:dot|\.)[ \t]*[\])}>][ \t]*|[ \t]+dot[ \t]+|\.)"
            super().__init__(
                supported_entity="EMAIL_ADDRESS",
                name="WrittenOutEmailRecognizer",
                patterns=[
                    # Bracketed "at", or "at" and "dot" both as words: meant as an address.
                    Pattern("bracketed", r"(?<![\w.+-])[\w.+-]+[ \t]*[\[({<][ \t]*(?:at|@)[ \t]*[\])}>][ \t]*[\w-]+(?:" + dot + r"[\w-]+)+", 0.8),
                    Pattern("worded", r"(?<![\w.+-])[\w.+-]+" + at + r"[\w-]+(?:" + dot + r"[\w-]+)*[ \t]+dot[ \t]+[A-Za-z]{2,24}\b", 0.7),
                    # "jdoe at example.com": an address with a context word ("email me"), a shop without.
                    Pattern("at and a domain (weak)", r"(?<![\w.+-])[\w.+-]+[ \t]+at[ \t]+[\w-]+(?:\.[\w-]+)+\b", 0.1),
                ],
                context=["email", "e-mail", "mail", "contact", "write", "reach", "address", "inbox"],
                global_regex_flags=regex.IGNORECASE | regex.MULTILINE,
            )

        def validate_result(self, pattern_text: str) -> bool | None:
            address = dot_word.sub(".", at_word.sub("@", pattern_text, count=1))
            domain = address.rpartition("@")[2]
            parts = suffixes(domain)
            return None if parts.suffix and parts.domain else False

    class ShapeValidated(PatternRecognizer):
        """A pattern recognizer whose matches need `min_digits` digits (shape only, no checksum)."""

        def __init__(self, *, min_digits: int = 0, **kwargs: Any):
            super().__init__(**kwargs)
            self.min_digits = min_digits

        def validate_result(self, pattern_text: str) -> bool | None:
            return None if sum(c.isdigit() for c in pattern_text) >= self.min_digits else False

    class CardShapeRecognizer(LocalRecognizer):
        """12-19 digits with single spaces, dashes or dots between: Luhn-valid is a card (whatever
        its length or prefix: Presidio's pattern knows 13-17 digits and [- ] only); grouped in fours
        without Luhn is a card typed wrong; a bare run is a number of some account."""

        RUN = regex.compile(r"(?<![\d+])(?<!\d[ .-])\d(?:[ .-]?\d){11,18}(?!\d)(?![ .-]\d)")
        GROUPED = regex.compile(r"\d{4}([ .-])\d{4}\1\d{4}(?:\1\d{1,4}){0,2}|\d{4}([ .-])\d{6}\2\d{4,5}")

        def __init__(self) -> None:
            super().__init__(supported_entities=["CREDIT_CARD"], name="CardShapeRecognizer",
                             context=["card", "credit", "debit", "visa", "mastercard", "amex"])

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            results = []
            for match in self.RUN.finditer(text):
                value = match.group()
                digits = "".join(c for c in value if c.isdigit())
                if len({c for c in digits}) == 1:
                    continue  # 0000 0000 0000 is a placeholder
                # Other layouts ("001-555-123-4567", an IP address) are phone numbers and the like.
                if self.GROUPED.fullmatch(value) or value.isdigit():
                    if luhn_valid(digits):
                        entity, score, why = "CREDIT_CARD", 0.9, "luhn"
                    elif not value.isdigit():
                        entity, score, why = "CREDIT_CARD", 0.5, "grouped like a card"
                    else:
                        entity, score, why = "ACCOUNT_NUMBER", 0.45, "long number"
                else:
                    continue
                if entity not in entities:
                    continue
                explanation = AnalysisExplanation(recognizer=self.name, original_score=score, pattern_name=why)
                results.append(RecognizerResult(entity, match.start(), match.end(), score, explanation))
            return results

    class ScriptNameRecognizer(PatternRecognizer):
        """Names in Hangul, kanji/kana and Arabic script next to a name cue or an honorific."""

        def __init__(self) -> None:
            han_kana = f"[{_HAN}{_KANA}ー・]"
            non_latin = f"[{_HANGUL}{_HAN}{_KANA}ー・\u0621-\u064a\u066e-\u06d3]"
            super().__init__(
                supported_entity="PERSON",
                name="ScriptNameRecognizer",
                patterns=[
                    Pattern("korean name cue",
                            r"(?:이름은|이름이|성함은|성함이|이름\s*[:：])\s*\K[" + _HANGUL + r"]{2,4}?"
                            r"(?=입니다|이에요|예요|이고|이며|이라고|라고|[\s.,!?]|$)", 0.7),
                    Pattern("korean honorific",
                            r"(?<![" + _HANGUL + r"])(?!(?:" + _KO_NOT_NAMES + r")\s?" + _KO_HONORIFIC + r")[" + _KO_SURNAMES
                            + r"][" + _HANGUL + r"]{1,2}(?=\s?" + _KO_HONORIFIC + r")", 0.6),
                    Pattern("japanese name cue",
                            r"(?:名前は|なまえは|氏名\s*[:：]?)\s*\K" + han_kana + r"{2,8}?(?=です|と申します|といいます|と言います|でございます|[。、\s]|$)", 0.7),
                    Pattern("japanese introduction", han_kana + r"{2,8}(?=と申します|といいます|と言います)", 0.7),
                    Pattern("japanese honorific",
                            r"(?<![" + _HAN + r"\u30a0-\u30ffー・])(?!(?:" + _JA_NOT_NAMES + r")" + _JA_HONORIFIC + r")"
                            r"(?:[" + _HAN + r"]{2,4}|[\u30a0-\u30ffー]{2,}(?:・[\u30a0-\u30ffー]{2,})*)(?=" + _JA_HONORIFIC + r")", 0.6),
                    Pattern("arabic name cue",
                            r"(?:اسمي|اسمه|اسمها|السيد|السيدة|الأستاذ|الأستاذة|الدكتور|الدكتورة)\s+\K" + _ARABIC_WORD
                            + r"(?:\s+(?:(?:عبد|بن|بنت|ابن|أبو|آل)\s+)?" + _ARABIC_WORD + r"){0,2}", 0.7),
                    Pattern("english cue, non-latin name",
                            r"(?i:\b(?:my name is|i am|i'm|name\s*:|call me|this is|mr\.?|mrs\.?|ms\.?))[ \t]*\K"
                            + non_latin + r"+(?:[ \t]+" + non_latin + r"+){0,2}", 0.7),
                ],
                global_regex_flags=regex.MULTILINE,
            )

    return SimpleNamespace(
        WrittenOutEmailRecognizer=WrittenOutEmailRecognizer,
        ShapeValidated=ShapeValidated,
        CardShapeRecognizer=CardShapeRecognizer,
        ScriptNameRecognizer=ScriptNameRecognizer,
    )


def format_recognizers() -> dict[str, list[Any]]:
    """The recognizers of this module, by the entity they produce."""
    from presidio_analyzer import Pattern, PatternRecognizer

    classes = _classes()
    iban_shape = classes.ShapeValidated(
        min_digits=8,
        supported_entity="IBAN_CODE",
        name="IbanShapeRecognizer",
        # Two capitals, two digits, 8-30 letters and digits in groups of four or run together:
        # whether or not the check digits add up (Presidio's validates them and drops the rest).
        patterns=[Pattern("iban shape", r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?(?![A-Za-z0-9])", 0.5)],
        context=["iban", "bank", "account", "transfer", "refund", "wire"],
    )
    redacted_ssn = classes.ShapeValidated(
        min_digits=4,
        supported_entity="US_SSN",
        name="SsnShapeRecognizer",
        # 3-2-4 groups, partly redacted too ("XXX-XX-1234", "123-45-****"); area rules not applied.
        patterns=[Pattern("ssn shape", r"(?<![\w*#•])(?:\d{3}|[Xx*#•]{3})[- ](?:\d{2}|[Xx*#•]{2})[- ](?:\d{4}|[Xx*#•]{4})(?![\w*#•])", 0.5)],
        context=["ssn", "social", "security"],
    )
    passport = PatternRecognizer(
        supported_entity="PASSPORT",
        name="PassportRecognizer",
        patterns=[
            Pattern("after the word",
                    r"(?i:\bpassport\b(?:[ \t]+(?:number|no\.?|nr\.?|id|#))?(?:[ \t]+is)?[ \t]*[:#]?[ \t]*)\K"
                    r"(?=[A-Z0-9]*\d)[A-Z0-9]{6,10}\b", 0.85),
            Pattern("letters and digits (weak)", r"\b[A-Z]{1,2}\d{6,8}\b", 0.3),
        ],
        context=["passport"],
        global_regex_flags=0,
    )
    mac = PatternRecognizer(
        supported_entity="MAC_ADDRESS",
        name="MacAddressRecognizer",
        patterns=[
            Pattern("six pairs", r"(?i)(?<![0-9a-f:-])[0-9a-f]{2}([:-])(?:[0-9a-f]{2}\1){4}[0-9a-f]{2}(?![0-9a-f:-])", 0.7),
            Pattern("three quads", r"(?i)(?<![0-9a-f.])[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}(?![0-9a-f.])", 0.6),
        ],
        global_regex_flags=0,
    )
    credential = PatternRecognizer(
        supported_entity="CREDENTIAL",
        name="CredentialRecognizer",
        patterns=[
            Pattern("user:password in a URL", r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://\K[^\s:/@]+:[^\s@/]+(?=@)", 0.9),
            Pattern("value after the word",
                    r"(?i:\b(?:password|passwd|passphrase|pwd|passcode|pin|secret|api[ _-]?key|access[ _-]?key"
                    r"|auth[ _-]?token|token)\b)[\"']?[ \t]*(?:[:=]|=>)[ \t]*[\"']?\K[^\s\"']+", 0.85),
            Pattern("password is ...",
                    r"(?i:\b(?:password|passwd|passphrase|pwd|passcode)[ \t]+is[ \t]*:?[ \t]*)\K"
                    r"(?!(?i:not|wrong|incorrect|invalid|correct|right|too|expired|the|a|an|my|your|being|still|working"
                    r"|required|missing|case|reset|changed|forgotten|blank|empty|long|short|weak|strong|same|different"
                    r"|locked|saved|stored|set|ok|okay|fine|no|also|already|never|now)\b)[^\s\"']+", 0.6),
        ],
        global_regex_flags=0,
    )
    date_of_birth = PatternRecognizer(
        supported_entity="DATE_OF_BIRTH",
        name="DateOfBirthRecognizer",
        patterns=[Pattern("date after a birth word",
                          r"(?i)\b(?:born|birth|birthday|dob|d\.o\.b\.?|b-day)\b[^\n\d]{0,30}?\K" + _DATE, 0.85)],
        global_regex_flags=0,
    )
    spelled_phone = classes.ShapeValidated(
        min_digits=0,
        supported_entity="PHONE_NUMBER",
        name="SpelledPhoneRecognizer",
        patterns=[Pattern("seven digits spelled out",
                          r"(?i)(?<!\w)(?:" + _DIGIT_WORDS + r")(?:[ \t,.-]+(?:" + _DIGIT_WORDS + r"|\d{1,4})){6,}(?!\w)", 0.6)],
        global_regex_flags=0,
    )
    return {
        "EMAIL_ADDRESS": [classes.WrittenOutEmailRecognizer()],
        "CREDIT_CARD": [classes.CardShapeRecognizer()],
        "IBAN_CODE": [iban_shape],
        "US_SSN": [redacted_ssn],
        "PASSPORT": [passport],
        "MAC_ADDRESS": [mac],
        "CREDENTIAL": [credential],
        "DATE_OF_BIRTH": [date_of_birth],
        "PHONE_NUMBER": [spelled_phone],
        "PERSON": [classes.ScriptNameRecognizer()],
    }
