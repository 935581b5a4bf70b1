"""Model registry (DESIGN.md sections 6 and 9): adapters as MLflow model versions, aliases, reviews,
gate overrides, promotion and rollback, with an audit history on the registered model.

* A version is the LoRA adapter only, logged as a pyfunc model with the adapter folder as artifact;
  the base model is referenced by path + digest (tags), never copied.
* Aliases, not stages: `champion` (what production serves) and `canary` (the candidate under review).
  No champion alias means the base model is served without an adapter; champion moves name that
  "base". Promotion records the previous champion on the new one (tag `previous_champion`; none when it
  replaced the base) so rollback knows where to go.
* Every review is kept, one version tag each (`review.000001`, ...); the latest one counts.
* Rules: a rejection is final for that version (no later approval, no promotion: register the adapter
  again); no promotion without an approval as the latest review; no promotion of a failed gate without
  a recorded override (reviewer + reason), by someone who did not approve it
  (review.require_distinct_override); the serving champion cannot be rejected (roll it back first);
  rollback only to the base or a version that was champion before, and to a version rejected since
  only with a recorded override (reviewer + reason, kept as its latest review, decision "restore").
* Writers are serialised by an exclusive `fcntl.flock` on `<workspace>/registry.lock` and re-read the
  registry inside it, so two concurrent promote/rollback calls never leave the aliases and the audit
  history disagreeing. The lock covers one machine (processes and threads). Writers on several machines
  sharing an MLflow server must instead run these calls under a Prefect global concurrency limit named
  "model-registry" (`with prefect.concurrency.sync.concurrency("model-registry", occupy=1): ...`, the
  limit created with `prefect gcl create model-registry --limit 1`).
* Every change is appended to the audit history, kept in one place: the registered-model tag `audit`,
  one JSON object per line, oldest first (seq, time, action, actor, version, alias, from, to, details),
  and `audit_head`, the latest entry in words. Should `audit` outgrow a tag, its oldest lines move to
  `audit_archive.000001`, ... (read back in order). Histories written before, one `audit.000001` tag per
  entry, are read as the chain's start.
* The actor of an entry is a person: the reviewer for reviews, overrides and rollbacks with one; for a
  promotion the caller's `actor`, else the reviewer whose approval it follows; otherwise the `actor`
  passed in (`--actor`), else registry.actor, else $FLYWHEEL_ACTOR, else the words "unattributed (OS user
  NAME)", so an unnamed move never passes for a named one.
* Rollback must be quick from a fresh process (`flywheel rollback` in an incident), and `import mlflow`
  alone takes seconds. So nothing here imports mlflow until it is needed, and against a tracking server
  (registry.tracking_uri http(s)://...) the reads, alias moves and audit entries go over MLflow's REST
  API with urllib (`RestRegistryClient`): a rollback there never imports mlflow at all.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import re
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from tasks.config import Settings
from tasks.tracking import artifact_location, over_http, require_reachable, tracking_uri, use_tracking

CHAMPION, CANARY = "champion", "canary"
BASE = "base"  # how champion moves and rollback name "no champion alias: the base model, no adapter"
AUDIT_TAG = "audit"  # the chain, one JSON entry per line
AUDIT_HEAD_TAG = "audit_head"  # the latest entry in words
AUDIT_ARCHIVE_PREFIX = "audit_archive."  # older lines once `audit` outgrows AUDIT_TAG_CHARS
AUDIT_TAG_CHARS = 60_000  # below MLflow's 100,000-character limit on a registered-model tag value
LEGACY_AUDIT_PREFIX = "audit."  # one tag per entry, as histories were written before
REVIEW_PREFIX = "review."  # one version tag per review: review.000001, review.000002, ...
EXPERIMENT = "flywheel-registry"  # where adapters are logged when no training/eval run is given
_ALIAS_ACTIONS = ("promote", "rollback", "reconcile")

# The pyfunc wrapper logged with every adapter (MLflow "models from code": no pickled objects). It
# depends on transformers + peft only, so `mlflow.pyfunc.load_model("models:/<name>@champion")` works
# without this project installed, given the base model at the recorded path.
_PYFUNC_CODE = '''\
"""llm-flywheel LoRA adapter: base model by reference (model_config), adapter as artifact."""
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


class FlywheelAdapter(PythonModel):
    def load_context(self, context):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = context.model_config or {}
        base = Path(config["base_model"])
        self.template = config.get("prompt_template") or "{question}"
        self.max_new_tokens = int(config.get("max_new_tokens", 64))
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        self.model = PeftModel.from_pretrained(model, context.artifacts["adapter"]).eval()

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        import torch

        prompts = [str(p) for p in model_input]
        texts = [self.template.format(question=p.strip()) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=(params or {}).get("max_new_tokens", self.max_new_tokens),
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        answers = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [a.split("\\n###")[0].strip() for a in answers]


mlflow.models.set_model(FlywheelAdapter())
'''


class RegistryRuleError(RuntimeError):
    """A registry rule said no (no approval, failed gate without override, nothing to roll back to...).
    The CLI exits with code 1."""


class RegistryInputError(ValueError):
    """Bad input to a registry call: not a version number, no such version, a blank reviewer or reason.
    The CLI exits with code 2."""


class RegistryBusyError(RuntimeError):
    """The registry lock could not be taken within registry.lock_timeout_s."""


class RegistryHttpError(RuntimeError):
    """The MLflow tracking server answered a REST call with an error (error_code as MLflow names it)."""

    def __init__(self, message: str, error_code: str = "") -> None:
        super().__init__(message)
        self.error_code = error_code


class RestRegistryClient:
    """The registry calls on the rollback path, as MLflow's REST API over plain urllib.

    Same method names, arguments and result attributes (`aliases` and `tags` as dicts, `version`) as
    MlflowClient's, so Registry uses either; errors carry MLflow's `error_code` like MlflowException.
    Honours MLflow's own environment variables for credentials (MLFLOW_TRACKING_TOKEN, or
    MLFLOW_TRACKING_USERNAME + MLFLOW_TRACKING_PASSWORD) and TLS (MLFLOW_TRACKING_SERVER_CERT_PATH,
    MLFLOW_TRACKING_INSECURE_TLS), so it reaches whatever server MlflowClient reaches.
    """

    def __init__(self, uri: str, timeout_s: float = 30.0) -> None:
        self.base = uri.rstrip("/") + "/api/2.0/mlflow"
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json"}
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            self.headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            user_pass = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
            self.headers["Authorization"] = "Basic " + b64encode(user_pass.encode()).decode()
        self.tls = None  # urllib's default: verify against the system's certificates
        if os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            self.tls = ssl.create_default_context(cafile=os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"])
        elif os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            self.tls = ssl.create_default_context()
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE

    def get_registered_model(self, name: str) -> SimpleNamespace:
        model = self._call("GET", "registered-models/get", {"name": name})["registered_model"]
        return SimpleNamespace(**{**model, "tags": _key_values(model.get("tags")),
                                  "aliases": {a["alias"]: a["version"] for a in model.get("aliases", [])}})

    def get_model_version(self, name: str, version: str) -> SimpleNamespace:
        mv = self._call("GET", "model-versions/get", {"name": name, "version": str(version)})["model_version"]
        return SimpleNamespace(**{**mv, "tags": _key_values(mv.get("tags")), "aliases": mv.get("aliases", [])})

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._call("POST", "registered-models/alias", {"name": name, "alias": alias, "version": str(version)})

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self._call("DELETE", "registered-models/alias", {"name": name, "alias": alias})

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._call("POST", "registered-models/set-tag", {"name": name, "key": key, "value": value})

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call("POST", "model-versions/set-tag", {"name": name, "version": str(version), "key": key, "value": value})

    def _call(self, method: str, endpoint: str, body: dict[str, str]) -> dict:
        url = f"{self.base}/{endpoint}"
        data = None
        if method == "GET":  # MLflow takes GET arguments as query parameters, the others as a JSON body
            url += "?" + urllib.parse.urlencode(body)
        else:
            data = json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self.tls) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                answer = json.loads(err.read())
            except ValueError:
                answer = {}
            raise RegistryHttpError(f"{method} {url}: HTTP {err.code}: {answer.get('message') or err.reason}",
                                    answer.get("error_code", "")) from None


class Registry:
    """The project's view of one MLflow registered model (registry.model_name)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.registry.model_name
        self.uri = tracking_uri(settings)
        self.lock_path = settings.paths.under("registry.lock").resolve()
        settings.workspace.mkdir(parents=True, exist_ok=True)
        require_reachable(self.uri)
        # What reads, alias moves and audit entries go through (see the module docstring).
        self.alias_client = RestRegistryClient(self.uri) if over_http(self.uri) else self.client
        if self.uri.startswith("sqlite:///") and not Path(self.uri.removeprefix("sqlite:///")).exists():
            with self._locked():  # the first touch creates the tables: never twice at once
                self.client.search_registered_models(max_results=1)

    @cached_property
    def client(self):
        """MlflowClient on the registry's URI. Made on first use: `import mlflow` takes seconds, and a
        rollback against a tracking server does without it."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # ------------------------------------------------------------------------------------- reads

    def model_uri(self, alias: str) -> str:
        return f"models:/{self.name}@{alias}"

    def status(self) -> dict:
        """{champion, canary, versions: [{version, aliases, cycle_id, gate, gate_override, review, reviews, ...}]}.
        `champion` is None while the base model is served; `review` is the latest of `reviews`."""
        model = self._model()
        if model is None:
            return {"model": self.name, "champion": None, "canary": None, "versions": [], "tracking_uri": self.uri}
        aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
        versions = []
        for mv in sorted(self.client.search_model_versions(f"name='{self.name}'"), key=lambda v: int(v.version)):
            tags = mv.tags or {}
            reviews = _reviews(tags)
            versions.append({
                "version": str(mv.version),
                "aliases": sorted(a for a, v in aliases.items() if v == str(mv.version)),
                "cycle_id": tags.get("cycle_id"),
                "gate": tags.get("gate"),
                "gate_override": _loads(tags.get("gate_override")),
                "review": reviews[-1] if reviews else None,
                "reviews": reviews,
                "previous_champion": tags.get("previous_champion"),
                "created": _iso(mv.creation_timestamp),
            })
        return {"model": self.name, "champion": aliases.get(CHAMPION), "canary": aliases.get(CANARY),
                "versions": versions, "tracking_uri": self.uri}

    def audit(self) -> list[dict]:
        model = self._model()
        return _audit_entries(model.tags if model else {})

    def adapter_path(self, version: str) -> Path:
        """Local folder with the adapter files of `version` (the artifact store's own folder when it is
        local, else a download cached under <workspace>/models/registry/v<version>)."""
        mv = self._version(str(version))
        model_id = getattr(mv, "model_id", None) or str(mv.source).removeprefix("models:/").split("/")[0]
        location = self.client.get_logged_model(model_id).artifact_location.rstrip("/") + "/artifacts/adapter"
        if location.startswith("file://") or "://" not in location:
            from urllib.parse import unquote, urlparse

            local = Path(unquote(urlparse(location).path)) if location.startswith("file://") else Path(location)
            if (local / "adapter_config.json").is_file():
                return local
        cache = self.settings.paths.under("models", "registry", f"v{version}")
        if not (cache / "adapter_config.json").is_file():
            from mlflow.artifacts import download_artifacts

            tmp = cache.with_name(cache.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            got = Path(download_artifacts(artifact_uri=location, dst_path=str(tmp)))
            shutil.rmtree(cache, ignore_errors=True)
            got.rename(cache) if got != tmp else tmp.rename(cache)
            shutil.rmtree(tmp, ignore_errors=True)
        return cache

    # ------------------------------------------------------------------------------------ writes

    def register_canary(
        self,
        adapter_dir: Path,
        *,
        cycle_id: str,
        base_path: Path,
        base_digest: str,
        dataset_sha256: str,
        eval_report: dict,
        run_id: str | None = None,
        actor: str | None = None,
    ) -> str:
        """Log the adapter as a pyfunc model, create a version with its lineage and gate result as tags,
        and point the `canary` alias at it. Returns the version number."""
        import mlflow.pyfunc
        from mlflow.entities import LoggedModelStatus

        from tasks.base_model import PROMPT_TEMPLATE, model_digest

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ValueError(f"{adapter_dir} holds no adapter_config.json: pass the LoRA adapter folder (05_adapter)")
        gate = eval_report.get("gate") or {}
        gate_state = "passed" if gate.get("passed") is True else "failed" if gate.get("passed") is False else "missing"
        experiment = self.client.get_run(run_id).info.experiment_id if run_id else self._experiment_id()
        adapter_digest = model_digest(adapter_dir)
        logged = self.client.create_logged_model(
            experiment, name="adapter", source_run_id=run_id, model_type="lora-adapter",
            tags={"cycle_id": cycle_id, "adapter_sha256": adapter_digest},
            params={"base_model": str(base_path), "base_digest": base_digest, "dataset_sha256": dataset_sha256},
        )
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per copied folder otherwise
        with tempfile.TemporaryDirectory(prefix="flywheel-adapter-") as tmp:
            code = Path(tmp) / "flywheel_adapter.py"
            code.write_text(_PYFUNC_CODE, encoding="utf-8")
            # MLflow stores an artifact folder under its own base name: stage it as "adapter" so every
            # version keeps its files at artifacts/adapter whatever the training output was called.
            staged = Path(tmp) / "adapter"
            shutil.copytree(adapter_dir, staged, ignore=shutil.ignore_patterns("checkpoint-*", ".*"))
            mlflow.pyfunc.save_model(
                path=str(Path(tmp) / "model"),
                python_model=str(code),
                artifacts={"adapter": str(staged)},
                model_config={"base_model": str(base_path), "base_digest": base_digest,
                              "prompt_template": PROMPT_TEMPLATE, "max_new_tokens": self.settings.model.max_new_tokens},
                # Explicit: MLflow's inferred default would demand packages the adapter never needs.
                pip_requirements=_pip_requirements(),
            )
            self.client.log_model_artifacts(logged.model_id, str(Path(tmp) / "model"))
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        tags = {
            "cycle_id": cycle_id,
            "base_model": str(base_path),
            "base_digest": base_digest,
            "dataset_sha256": dataset_sha256,
            "adapter_sha256": adapter_digest,
            "eval_summary": json.dumps(eval_summary(eval_report), separators=(",", ":")),
            "gate": gate_state,
            "gate_report": json.dumps({"passed": gate.get("passed"), "first_cycle": gate.get("first_cycle"),
                                       "failed": gate.get("failed", []), "checks": gate.get("checks", [])},
                                      separators=(",", ":"), default=str),
        }
        with self._locked():
            self._ensure_model()
            # MLflow's SQL registry resolves `models:/m-...` through the process-wide tracking URI.
            use_tracking(self.settings)
            mv = self.client.create_model_version(self.name, source=f"models:/{logged.model_id}", run_id=run_id,
                                                  tags=tags, model_id=logged.model_id,
                                                  description=f"LoRA adapter of cycle {cycle_id}")
            version = str(mv.version)
            previous = self._aliases().get(CANARY)
            self.client.set_registered_model_alias(self.name, CANARY, version)
            self._append_audit("register", version=version, alias=CANARY, frm=previous, to=version, actor=actor,
                               details={"cycle_id": cycle_id, "gate": gate_state, "run_id": run_id})
        return version

    def review(self, version: str, *, decision: Literal["approve", "reject"], reviewer: str, comment: str) -> dict:
        """Record a reviewer's decision on a version. Every review is kept; the latest one counts.

        Refused (RegistryRuleError): approving a rejected version (a rejection is final), approving a
        version whose failed gate the same person overrode (review.require_distinct_override), and
        rejecting the serving champion (roll it back first). Rejecting the canary removes the canary alias.
        """
        if decision not in ("approve", "reject"):
            raise RegistryInputError(f"decision must be 'approve' or 'reject', got {decision!r}")
        reviewer = _required(reviewer, "reviewer")
        record = {"decision": decision, "reviewer": reviewer, "time": _now(), "comment": (comment or "").strip()}
        with self._locked():
            mv = self._version(version)
            version, tags = str(mv.version), mv.tags or {}
            reviews = _reviews(tags)
            aliases = self._aliases()
            if decision == "approve":
                if rejection := _rejection(reviews):
                    raise RegistryRuleError(_rejected(version, rejection))
                self._four_eyes(version, [*reviews, record], _loads(tags.get("gate_override")),
                                fix="another reviewer approves it")
            elif aliases.get(CHAMPION) == version:
                raise RegistryRuleError(f"version {version} is the champion, being served: roll it back first "
                                        f"(`flywheel rollback`), then reject it")
            self.client.set_model_version_tag(self.name, version, _next_key(tags, REVIEW_PREFIX), json.dumps(record))
            canary_removed = decision == "reject" and aliases.get(CANARY) == version
            if canary_removed:
                self.client.delete_registered_model_alias(self.name, CANARY)
            self._append_audit(decision, version=version, actor=reviewer,
                               alias=CANARY if canary_removed else None, frm=version if canary_removed else None,
                               to=None, details={"comment": record["comment"]})
        return {"version": version, **record}

    def override_gate(self, version: str, *, reviewer: str, reason: str) -> dict:
        """Allow promoting a version whose gate failed; needs a reviewer and a reason, both recorded. With
        review.require_distinct_override the reviewer may not be one who approved the version."""
        reviewer = _required(reviewer, "reviewer")
        reason = _required(reason, "reason")
        with self._locked():
            mv = self._version(version)
            version, tags = str(mv.version), mv.tags or {}
            gate = tags.get("gate")
            if gate == "passed":
                raise RegistryRuleError(f"version {version} passed its gate; there is nothing to override")
            record = {"reviewer": reviewer, "reason": reason, "time": _now(), "gate": gate}
            self._four_eyes(version, _reviews(tags), record, fix="another reviewer overrides the gate")
            self.client.set_model_version_tag(self.name, version, "gate_override", json.dumps(record))
            self._append_audit("override_gate", version=version, actor=reviewer, details={"reason": reason, "gate": gate})
        return {"version": version, **record}

    def promote(self, version: str, *, actor: str | None = None) -> dict:
        """Move `champion` to `version` (normally the approved canary) and record the previous champion.

        Refused (RegistryRuleError) for a rejected version, without an approval, with a failed gate and no
        recorded override, or with an override by one who also approved it (review.require_distinct_override).
        Returns {from, to, seconds, changed} ("base" when no adapter was served); seconds runs from the
        call to the alias being set. The audit names `actor`, else the reviewer whose approval it follows.
        """
        start = time.perf_counter()
        with self._locked():
            waited = time.perf_counter() - start
            mv = self._version(version)
            version, tags = str(mv.version), mv.tags or {}
            reviews = _reviews(tags)
            if rejection := _rejection(reviews):
                raise RegistryRuleError(_rejected(version, rejection))
            if not reviews or reviews[-1].get("decision") != "approve":
                raise RegistryRuleError(f"version {version} cannot be promoted: it has no review; "
                                        f"run `flywheel approve {version} --reviewer NAME --comment TEXT` first")
            override = _loads(tags.get("gate_override"))
            if tags.get("gate") != "passed":
                if not override:
                    raise RegistryRuleError(
                        f"version {version} failed its evaluation gate ({tags.get('gate')}); promoting it needs a "
                        f"recorded override: `flywheel registry override {version} --reviewer NAME --reason TEXT`")
                self._four_eyes(version, reviews, override,
                                fix=f"another reviewer overrides the gate (`flywheel registry override {version} ...`)")
            aliases = self._reconciled_aliases()
            current = aliases.get(CHAMPION)
            if current == version:
                return {"from": version, "to": version, "seconds": round(time.perf_counter() - start, 4), "changed": False}
            self.client.set_registered_model_alias(self.name, CHAMPION, version)
            seconds = time.perf_counter() - start
            if current is not None:
                self.client.set_model_version_tag(self.name, version, "previous_champion", current)
            elif "previous_champion" in tags:
                self.client.delete_model_version_tag(self.name, version, "previous_champion")
            if aliases.get(CANARY) == version:
                self.client.delete_registered_model_alias(self.name, CANARY)
            self._append_audit("promote", version=version, alias=CHAMPION, frm=_served(current), to=version,
                               actor=(actor or "").strip() or reviews[-1].get("reviewer"), details={"review": reviews[-1], "gate": tags.get("gate"), "override": override})
        return {"from": _served(current), "to": version, "seconds": round(seconds, 4), "lock_wait_s": round(waited, 4),
                "changed": True}

    def rollback(self, to: str | None = None, *, reviewer: str | None = None, override_reason: str | None = None,
                 actor: str | None = None) -> dict:
        """Move `champion` back: to the version it replaced (tag previous_champion), to the base model when
        it replaced none (the champion alias is removed), or to `to`: "base" or a version that was champion
        before. A version rejected since it served goes back only with `override_reason` and `reviewer`,
        recorded as its latest review (decision "restore") and in the audit. Returns {from, to, seconds}."""
        if override_reason is not None:
            override_reason = _required(override_reason, "reason", "--override-reason")
            reviewer = _required(reviewer, "reviewer")
        start = time.perf_counter()
        with self._locked():
            waited = time.perf_counter() - start
            current = self._reconciled_aliases().get(CHAMPION)
            if to is None:
                if current is None:
                    raise RegistryRuleError("there is no champion to roll back from: the base model is served")
                target = (self._version(current).tags or {}).get("previous_champion") or BASE
            else:
                target = BASE if str(to).strip().lower() == BASE else str(self._version(to).version)
                if target == _served(current):
                    raise RegistryRuleError("the base model is already served: there is no champion" if target == BASE
                                            else f"version {target} is already the champion")
                earlier = {_served(e.get(k)) for e in self.audit() if e.get("alias") == CHAMPION for k in ("from", "to")}
                if target not in earlier:
                    raise RegistryRuleError(f"version {target} was never champion: roll back only to an earlier champion "
                                            "or the base; promote it instead (that needs an approval)")
            restore = None
            if target != BASE:
                tags = self._version(target).tags or {}
                rejection = _rejection(_reviews(tags))
                if rejection and override_reason is None:
                    raise RegistryRuleError(
                        f"{_rejected(target, rejection, final=False)}; it goes back into service only with a recorded "
                        f"override: `flywheel rollback --to {target} --reviewer NAME --override-reason TEXT`")
                if rejection:
                    restore = {"decision": "restore", "reviewer": reviewer, "time": _now(), "comment": override_reason}
                    self.alias_client.set_model_version_tag(self.name, target, _next_key(tags, REVIEW_PREFIX),
                                                            json.dumps(restore))
            if override_reason is not None and restore is None:
                what = "the base model" if target == BASE else f"version {target}"
                raise RegistryInputError(f"{what} has no rejection to override: drop --override-reason")
            if target == BASE:
                self.alias_client.delete_registered_model_alias(self.name, CHAMPION)
            else:
                self.alias_client.set_registered_model_alias(self.name, CHAMPION, target)
            seconds = time.perf_counter() - start
            self._append_audit("rollback", version=None if target == BASE else target, alias=CHAMPION,
                               frm=_served(current), to=target, actor=reviewer or actor,
                               details={"override": restore} if restore else None)
        return {"from": _served(current), "to": target, "seconds": round(seconds, 4), "lock_wait_s": round(waited, 4)}

    # ---------------------------------------------------------------------------------- internals

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive flock on <workspace>/registry.lock. Each call opens its own file description, so it
        excludes other threads of this process as well as other processes."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.settings.registry.lock_timeout_s
        with open(self.lock_path, "a+") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryBusyError(
                            f"{self.lock_path} is held by another registry writer for more than "
                            f"{self.settings.registry.lock_timeout_s}s (registry.lock_timeout_s); retry later") from None
                    time.sleep(0.002)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _model(self):
        # MlflowException and RegistryHttpError both carry MLflow's error_code; catching Exception here
        # avoids importing mlflow just for its exception class (anything else is raised again).
        try:
            return self.alias_client.get_registered_model(self.name)
        except Exception as err:
            if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _ensure_model(self) -> None:
        if self._model() is None:
            self.client.create_registered_model(
                self.name,
                description="LoRA adapters of llm-flywheel (adapter only; the base model is referenced by the "
                            "base_model/base_digest tags). Aliases: champion, canary. History: the `audit` tag "
                            "(one entry per line; `audit_head` is the latest in words).",
            )

    def _aliases(self) -> dict[str, str]:
        model = self._model()
        return {alias: str(v) for alias, v in ((model.aliases or {}) if model else {}).items()}

    def _reconciled_aliases(self) -> dict[str, str]:
        """Current aliases; if the champion alias was moved outside this API (or a writer died between
        switching it and writing the audit entry), record that first so the history stays a chain."""
        model = self._model()
        if model is None:
            raise RegistryRuleError(f"registered model {self.name!r} does not exist yet: register a canary first")
        aliases = {alias: str(v) for alias, v in (model.aliases or {}).items()}
        moves = [e for e in _audit_entries(model.tags or {}) if e.get("alias") == CHAMPION]
        last = _served(moves[-1]["to"]) if moves else BASE
        if last != _served(aliases.get(CHAMPION)):
            self._append_audit("reconcile", version=aliases.get(CHAMPION), alias=CHAMPION, frm=last,
                               to=_served(aliases.get(CHAMPION)),
                               details={"note": "champion alias differed from the audit history"}, tags=model.tags)
        return aliases

    def _four_eyes(self, version: str, reviews: list[dict], override: Any, *, fix: str) -> None:
        """review.require_distinct_override: the person who overrode a failed gate is not among those who
        approved the version."""
        if not self.settings.review.require_distinct_override or not isinstance(override, dict):
            return
        overrider = str(override.get("reviewer", ""))
        if any(r.get("decision") == "approve" and str(r.get("reviewer", "")).casefold() == overrider.casefold()
               for r in reviews):
            raise RegistryRuleError(f"{overrider} would both approve version {version} and override its failed gate; "
                                    f"review.require_distinct_override needs two people: {fix}")

    def _version(self, version: str):
        number = _version_number(version)
        try:
            return self.alias_client.get_model_version(self.name, number)
        except Exception as err:  # MlflowException or RegistryHttpError, as in _model
            if getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise RegistryInputError(f"{self.name} has no version {number}; `flywheel registry status` "
                                         "lists the versions") from None
            raise

    def _append_audit(
        self,
        action: str,
        *,
        version: str | None = None,
        alias: str | None = None,
        frm: str | None = None,
        to: str | None = None,
        actor: str | None = None,
        details: dict | None = None,
        tags: dict | None = None,
    ) -> dict:
        """Append one entry (caller holds the lock). Sequence numbers come from the tags read now."""
        if tags is None:
            model = self._model()
            tags = model.tags if model else {}
        tags = tags or {}
        entries = _audit_entries(tags)
        entry = {"seq": (entries[-1]["seq"] if entries else 0) + 1, "time": _now(), "action": action,
                 "actor": self._actor(actor), "version": version, "alias": alias, "from": frm, "to": to,
                 "details": details or {}}
        lines = [*tags.get(AUDIT_TAG, "").splitlines(), json.dumps(entry, default=str, separators=(",", ":"))]
        if sum(len(line) + 1 for line in lines) > AUDIT_TAG_CHARS and len(lines) > 1:  # archive all but the newest
            self.alias_client.set_registered_model_tag(self.name, _next_key(tags, AUDIT_ARCHIVE_PREFIX), "\n".join(lines[:-1]))
            lines = lines[-1:]
        self.alias_client.set_registered_model_tag(self.name, AUDIT_TAG, "\n".join(lines))
        self.alias_client.set_registered_model_tag(self.name, AUDIT_HEAD_TAG, audit_line(entry))
        return entry

    def _actor(self, named: str | None) -> str:
        """The person an entry names: `named`, else registry.actor, else $FLYWHEEL_ACTOR, else said to be unattributed."""
        for candidate in (named, self.settings.registry.actor, os.environ.get("FLYWHEEL_ACTOR")):
            if candidate and str(candidate).strip():
                return str(candidate).strip()
        try:
            user = getpass.getuser()
        except Exception:  # no user database entry (containers)
            user = "unknown"
        return f"unattributed (OS user {user})"

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        location = artifact_location(self.settings, EXPERIMENT)
        with self._locked():
            found = self.client.get_experiment_by_name(EXPERIMENT)
            return found.experiment_id if found else self.client.create_experiment(EXPERIMENT, artifact_location=location)


def eval_summary(report: dict) -> dict:
    """A compact {suite: {metric: [candidate, diff]}} for a model-version tag (an evaluation report's `suites`)."""
    return {
        suite: {metric: [entry["candidate"], entry.get("diff")] for metric, entry in metrics.items()}
        for suite, metrics in report.get("suites", {}).items()
    }


def _key_values(pairs: list[dict] | None) -> dict[str, str]:
    """MLflow's JSON tag list [{key, value}] as the dict MlflowClient gives."""
    return {pair["key"]: pair.get("value", "") for pair in pairs or []}


def _audit_entries(tags: dict[str, str]) -> list[dict]:
    """The chain, oldest first: per-entry tags of older histories, then the archives, then `audit`."""
    tags = tags or {}
    legacy = [json.loads(v) for k, v in tags.items() if k.startswith(LEGACY_AUDIT_PREFIX) and k[len(LEGACY_AUDIT_PREFIX):].isdigit()]
    texts = [tags[k] for k in sorted(k for k in tags if k.startswith(AUDIT_ARCHIVE_PREFIX))] + [tags.get(AUDIT_TAG, "")]
    entries = legacy + [json.loads(line) for text in texts for line in text.splitlines() if line.strip()]
    return sorted(entries, key=lambda e: e["seq"])


def audit_line(entry: dict) -> str:
    """An entry in words: "#4 2026-12-03 13:00:01 UTC promote: champion v1 -> v2 by alice"."""
    when = str(entry.get("time", ""))[:19].replace("T", " ")
    move = f"{entry.get('alias')} {_label(entry.get('from'))} -> {_label(entry.get('to'))}" if entry.get("alias") else \
        f"v{entry.get('version')}" if entry.get("version") else ""
    return f"#{entry['seq']} {when} UTC {entry['action']}: {move} by {entry.get('actor')}".replace(":  by", ": by")


def _label(version: str | None) -> str:
    return "none" if version in (None, "") else BASE if version == BASE else f"v{version}"


def _next_key(tags: dict[str, str], prefix: str) -> str:
    """The next numbered tag key after those present: review.000002, audit_archive.000003 (caller holds the lock)."""
    last = max((int(k[len(prefix):]) for k in tags if k.startswith(prefix) and k[len(prefix):].isdigit()), default=0)
    return f"{prefix}{last + 1:06d}"


def _reviews(tags: dict[str, str]) -> list[dict]:
    """Every review of a version, oldest first. A single `review` tag (written before every review was
    kept) counts as the first."""
    numbered = [json.loads(tags[k]) for k in sorted(tags) if k.startswith(REVIEW_PREFIX)]
    legacy = _loads(tags.get("review"))
    return ([legacy] if isinstance(legacy, dict) else []) + numbered


def _rejection(reviews: list[dict]) -> dict | None:
    return next((r for r in reviews if r.get("decision") == "reject"), None)


def _rejected(version: str, rejection: dict, final: bool = True) -> str:
    said = f"version {version} was rejected by {rejection.get('reviewer')} at {rejection.get('time')}"
    return said + ("; a rejection is final: register the adapter again to have a new version reviewed" if final else "")


def _served(version: str | None) -> str:
    """A champion alias value as champion moves name it: the version, or "base" for none."""
    return str(version) if version not in (None, "", BASE) else BASE


def _version_number(version: str) -> str:
    """'3', 'v3' or ' 3 ' -> '3'; anything else is bad input."""
    text = str(version).strip()
    number = text[1:] if text[:1] in ("v", "V") else text
    if not re.fullmatch(r"[0-9]{1,9}", number):
        raise RegistryInputError(f"{text[:40]!r} is not a model version: pass its number as `flywheel registry status` "
                                 "lists it (e.g. 3)")
    return str(int(number))


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "torch", "transformers", "peft"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _required(value: str | None, what: str, flag: str | None = None) -> str:
    if value is None or not str(value).strip():
        raise RegistryInputError(f"a {what} is required: pass {flag or '--' + what} with a non-blank value")
    return str(value).strip()


def _loads(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds") if ms else None
