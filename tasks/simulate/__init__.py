"""Synthetic production traffic for a consumer-electronics support assistant (`flywheel simulate`).

The world: the shop's knowledge base (`data/knowledge_base/v1.json`, plus `v2.json` for the products
and policies launched in `simulate.launch_week`), a population of users, and a model answering them.
Every week, users open conversations spread over the week (a daily and weekly rhythm, no two
conversations of one user overlapping). A conversation is a chain of at most three turns:

    first question -> [re-ask | quick different question | later follow-up] -> [re-ask]

An unhappy user (the answer was a refusal or wrong) re-asks within 30 s with probability
`reask_probability`: the same question again, in its own spelling and often with a phrase like "Let me
rephrase." (another question about the same product is not a re-ask); anyone may switch to a different question within 30 s (`topic_switch_rate`, a
negative for re-ask detectors), and a satisfied user sometimes asks something else minutes later
(`followup_rate`). Some answers get thumbs (`feedback_rate`), some thumbs-down carry the right answer as
a correction. Prompts carry greetings, typos, context sentences and, at `pii_rate`, personal data
(names, emails, phones, Luhn-valid card numbers, addresses, order ids, IBANs, SSNs, IPs, API keys).

Whatever the model (the fast `ScriptedModel`, or a real `Generator` the demo plugs in), it is called
with whole batches: all first turns of a week, then all second turns, then all third turns. The
simulated user judges each answer against the knowledge base (`judge_response`); the truth about
every request (topic, outcome, re-ask links, inserted PII) goes to `ground_truth.jsonl`, which also
drives the synthetic annotators (`simulated_annotations`).

From `launch_week` on, `new_topic_share` of the questions users start with (and switch to) are about
v2 topics; re-asks of what the model could not answer make their share of all records higher.

ground_truth.jsonl, one row per request in log order: request_id, week, topic (KB topic id,
"unknown_product" or "offtopic"), subject (topic id, product name or off-topic theme), kb_version
("v1" | "v2" | null), turn (first | reask | switch | followup), is_refusal, is_reask, reask_of,
follows (the previous request of the conversation), is_hallucination, outcome (correct | refusal |
wrong) and pii ([{"type": "EMAIL_ADDRESS", "value": ...}], each value verbatim in the prompt).

Deterministic: the same settings, seed and model give byte-identical files. Each week draws from its
own seeded stream, so one week can be simulated alone (`weeks=[k]`) and comes out as in a full run.

The package, one job per module: `bank` (the question bank), `judge` (how the simulated user takes
an answer), `policy` (the scripted model), `synthetic_pii` (personal data in prompts), `traffic` (the
world and its weeks), `run` (simulate() and the files it writes, outcome_summary) and `annotators`
(the synthetic annotators); `_lines` is the fast ground-truth line writer.
"""

from tasks.simulate.annotators import TRUE_LABELS, simulated_annotations, true_label
from tasks.simulate.bank import OFFTOPIC, UNKNOWN_PRODUCT
from tasks.simulate.judge import OUTCOMES, Outcome, judge_response
from tasks.simulate.policy import ScriptedModel, default_model
from tasks.simulate.run import SimulationResult, outcome_summary, simulate
from tasks.simulate.synthetic_pii import PII_TYPES, luhn_check_digit
from tasks.simulate.traffic import TURN_KINDS, WeekTraffic, World, simulate_week

__all__ = [
    "OFFTOPIC",
    "OUTCOMES",
    "PII_TYPES",
    "TRUE_LABELS",
    "TURN_KINDS",
    "UNKNOWN_PRODUCT",
    "Outcome",
    "ScriptedModel",
    "SimulationResult",
    "WeekTraffic",
    "World",
    "default_model",
    "judge_response",
    "luhn_check_digit",
    "outcome_summary",
    "simulate",
    "simulate_week",
    "simulated_annotations",
    "true_label",
]
