"""PII masking with Presidio: offline, fail-closed, keyed consistent pseudonyms (DESIGN.md section 8).

    texts --view (zero-width, full-width, percent-encoding undone)--> spaCy NER-only nlp.pipe, batched
          --> Presidio recognizers + project recognizers (+ formats found by shape)
          --> keyed pseudonyms (Presidio AnonymizerEngine, custom operator)
          --> re-scan of the outputs --> the independent leak scan of every column written
          --> masked records + an audit of counts (never text)

- **Offline.** The spaCy model is configuration (`pii.spacy_model`) and is never downloaded; the
  e-mail recognizer validates domains against tldextract's bundled public-suffix snapshot.
- **Entities.** `pii.entities` from Presidio's recognizers, spaCy NER (PERSON, LOCATION, ...) and
  this project's: ORDER_ID, ACCOUNT_NUMBER, API_KEY, street addresses (as LOCATION), names next to a
  cue (PERSON), phone and card numbers by context, and by shape whatever their checksum (formats):
  PASSPORT, MAC_ADDRESS, CREDENTIAL, DATE_OF_BIRTH, written-out e-mails, names in other scripts. A
  requested type nobody recognizes is an error.
- **Fail closed.** A record whose analysis or anonymisation raises is dropped and counted; it never
  reaches the output. Outputs with detections are analysed again; what that finds is masked too and
  analysed once more, and any detection left is a leak: `mask_file` writes the audit, removes the
  output and raises PiiLeakError.
- **A second opinion.** The independent leak scan (shapes only, nothing shared with the recognizers)
  reads every string of every column written; its hits are masked or fail the stage (`pii.leak_scan`),
  and are counted as leaks either way.
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

Modules
    ``keys``         the HMAC key (``load_pii_key``, ``KEY_FILE``) and keyed pseudonyms
    ``recognizers``  the recognizers of each entity type: Presidio's, spaCy NER's labels, the project's
    ``formats``      the project's recognizers for formats found by shape (no checksums), names in other scripts
    ``view``         ``TextView``: what detection reads of a text, and the way back to its offsets
    ``scan``         ``LeakScan``: the independent leak scan, shape detectors sharing nothing with the recognizers
    ``planted``      made-up texts with planted hard-to-mask values (benchmark and tests)
    ``_engine``      the analysis fast path: NER-only spaCy, gates, the lean AnalyzerEngine loop
    ``masker``       ``Masker`` / ``build_masker``: analysis + tidy-up rules + pseudonyms + re-scan
    ``pool``         ``mask_shard`` / ``analyze_shard`` and ``ShardPool``, the worker processes
    ``stage``        ``mask_file``, the mask stage: a record file in, masked records and an audit out (topics
                     re-derived from the masked text, every column scanned)
    ``scoring``      ``evaluate_pii``: precision, recall and F2 on a span-labelled set (pii-eval)
"""

from tasks.pii._engine import load_ner_pipeline
from tasks.pii.keys import KEY_FILE, PSEUDONYM_RE, PiiKeyError, load_pii_key, normalise_value, pseudonym
from tasks.pii.masker import Masker, MaskOutcome, allow_pattern, build_masker
from tasks.pii.pool import ShardPool, analyze_shard, mask_shard
from tasks.pii.recognizers import NER_LABELS, find_addresses, supported_entities
from tasks.pii.scan import LeakScan
from tasks.pii.scoring import (
    DATASET_ENTITY_MAP,
    HALVES,
    TokenScorer,
    dataset_half,
    evaluate_pii,
    gold_spans,
    read_span_dataset,
    score_halves,
)
from tasks.pii.stage import AUDIT_FILE, DEFAULT_FIELDS, PiiLeakError, mask_file, mask_stage

__all__ = [
    "AUDIT_FILE",
    "DATASET_ENTITY_MAP",
    "DEFAULT_FIELDS",
    "HALVES",
    "KEY_FILE",
    "LeakScan",
    "NER_LABELS",
    "PSEUDONYM_RE",
    "MaskOutcome",
    "Masker",
    "PiiKeyError",
    "PiiLeakError",
    "ShardPool",
    "TokenScorer",
    "allow_pattern",
    "analyze_shard",
    "build_masker",
    "dataset_half",
    "evaluate_pii",
    "find_addresses",
    "gold_spans",
    "load_ner_pipeline",
    "load_pii_key",
    "mask_file",
    "mask_stage",
    "mask_shard",
    "normalise_value",
    "pseudonym",
    "read_span_dataset",
    "score_halves",
    "supported_entities",
]
