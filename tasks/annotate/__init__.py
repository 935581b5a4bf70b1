"""Annotation: the Label Studio round trip and the inter-annotator agreement gate (DESIGN.md sections 3 and 8).

labelstudio  cases -> tasks to label; Label Studio / CSV / JSONL annotation files -> annotations.jsonl
             (unusable rows quarantined); ratings and annotation records read back
collect      the cycle's stages: cases out to annotators and labels back (or AwaitingAnnotations), then
             agreement and curation
agreement    Krippendorff's alpha (bootstrap interval), Fleiss' and Cohen's kappa, per-label agreement, the
             gate decision, and score_agreement: agreement.json, curated.jsonl, adjudication.jsonl

The agreement *function* is not re-exported here: its name is the submodule's, and binding it on the
package would hide `tasks.annotate.agreement` the module. Import it from `tasks.annotate.agreement`.
"""

from tasks.annotate.agreement import (
    agreement_from_file,
    fleiss_kappa,
    gate_decision,
    score_agreement,
)
from tasks.annotate.collect import AwaitingAnnotations, agreement_stage, collect_stage
from tasks.annotate.labelstudio import (
    export_tasks,
    import_annotations,
    label_config,
    read_annotations,
    read_ratings,
)

__all__ = [
    "AwaitingAnnotations",
    "agreement_stage",
    "collect_stage",
    "agreement_from_file",
    "export_tasks",
    "fleiss_kappa",
    "gate_decision",
    "import_annotations",
    "label_config",
    "read_annotations",
    "read_ratings",
    "score_agreement",
]
