"""Model registry (DESIGN.md sections 6 and 9): adapters as MLflow model versions, aliases, reviews,
gate overrides, promotion and rollback, with an audit history on the registered model.

* A version is the LoRA adapter only, logged as a pyfunc model with the adapter folder as artifact;
  the base model is referenced by path + digest (tags), never copied.
* Aliases, not stages: `champion` (what production serves) and `canary` (the candidate under review).
  Promotion records the previous champion on the new one (tag `previous_champion`) so rollback knows
  where to go.
* Rules: no promotion without an `approve` review; no promotion of a failed gate without a recorded
  override (reviewer + reason); rollback only to a version that was champion before.
* Writers are serialised by an exclusive `fcntl.flock` on `<workspace>/registry.lock` and re-read the
  registry inside it, so two concurrent promote/rollback calls never leave the aliases and the audit
  history disagreeing. The lock covers one machine (processes and threads). Writers on several machines
  sharing an MLflow server must instead run these calls under a Prefect global concurrency limit named
  "model-registry" (`with prefect.concurrency.sync.concurrency("model-registry", occupy=1): ...`, the
  limit created with `prefect gcl create model-registry --limit 1`).
* Every change is appended to the audit history: one registered-model tag per entry,
  `audit.000001`, `audit.000002`, ... (JSON: seq, time, action, actor, version, alias, from, to, details).
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
AUDIT_PREFIX = "audit."
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

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._call("POST", "registered-models/set-tag", {"name": name, "key": key, "value": value})

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
        """{champion, canary, versions: [{version, aliases, cycle_id, gate, gate_override, review, created, ...}]}"""
        model = self._model()
        if model is None:
            return {"model": self.name, "champion": None, "canary": None, "versions": [], "tracking_uri": self.uri}
        aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
        versions = []
        for mv in sorted(self.client.search_model_versions(f"name='{self.name}'"), key=lambda v: int(v.version)):
            tags = mv.tags or {}
            versions.append({
                "version": str(mv.version),
                "aliases": sorted(a for a, v in aliases.items() if v == str(mv.version)),
                "cycle_id": tags.get("cycle_id"),
                "gate": tags.get("gate"),
                "gate_override": _loads(tags.get("gate_override")),
                "review": _loads(tags.get("review")),
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
            self._append_audit("register", version=version, alias=CANARY, frm=previous, to=version,
                               details={"cycle_id": cycle_id, "gate": gate_state, "run_id": run_id})
        return version

    def review(self, version: str, *, decision: Literal["approve", "reject"], reviewer: str, comment: str) -> dict:
        """Record a reviewer's decision on a version (the latest decision counts). Rejecting the canary
        also removes the canary alias."""
        if decision not in ("approve", "reject"):
            raise ValueError(f"decision must be 'approve' or 'reject', got {decision!r}")
        reviewer = _required(reviewer, "reviewer")
        record = {"decision": decision, "reviewer": reviewer, "time": _now(), "comment": comment or ""}
        with self._locked():
            version = self._version(str(version)).version
            version = str(version)
            self.client.set_model_version_tag(self.name, version, "review", json.dumps(record))
            canary_removed = False
            if decision == "reject" and self._aliases().get(CANARY) == version:
                self.client.delete_registered_model_alias(self.name, CANARY)
                canary_removed = True
            self._append_audit(decision, version=version, actor=reviewer,
                               alias=CANARY if canary_removed else None, frm=version if canary_removed else None,
                               to=None, details={"comment": record["comment"]})
        return {"version": version, **record}

    def override_gate(self, version: str, *, reviewer: str, reason: str) -> dict:
        """Allow promoting a version whose gate failed; needs a reviewer and a reason, both recorded."""
        reviewer = _required(reviewer, "reviewer")
        reason = _required(reason, "reason")
        with self._locked():
            mv = self._version(str(version))
            version = str(mv.version)
            gate = (mv.tags or {}).get("gate")
            if gate == "passed":
                raise RegistryRuleError(f"version {version} passed its gate; there is nothing to override")
            record = {"reviewer": reviewer, "reason": reason, "time": _now(), "gate": gate}
            self.client.set_model_version_tag(self.name, version, "gate_override", json.dumps(record))
            self._append_audit("override_gate", version=version, actor=reviewer, details={"reason": reason, "gate": gate})
        return {"version": version, **record}

    def promote(self, version: str) -> dict:
        """Move `champion` to `version` (normally the approved canary) and record the previous champion.

        Refused (RegistryRuleError) without an approval, or with a failed gate and no recorded override.
        Returns {from, to, seconds, changed}; seconds runs from the call to the alias being set.
        """
        start = time.perf_counter()
        with self._locked():
            waited = time.perf_counter() - start
            mv = self._version(str(version))
            version = str(mv.version)
            tags = mv.tags or {}
            review = _loads(tags.get("review"))
            if not review or review.get("decision") != "approve":
                state = f"its latest review is {review['decision']!r} by {review['reviewer']}" if review else "it has no review"
                raise RegistryRuleError(f"version {version} cannot be promoted: {state}; "
                                        f"run `flywheel approve {version} --reviewer NAME --comment TEXT` first")
            if tags.get("gate") != "passed" and not _loads(tags.get("gate_override")):
                raise RegistryRuleError(f"version {version} failed its evaluation gate ({tags.get('gate')}); promoting it needs "
                                        "a recorded override with a reviewer and a reason (Registry.override_gate)")
            aliases = self._reconciled_aliases()
            current = aliases.get(CHAMPION)
            if current == version:
                return {"from": current, "to": version, "seconds": round(time.perf_counter() - start, 4), "changed": False}
            self.client.set_registered_model_alias(self.name, CHAMPION, version)
            seconds = time.perf_counter() - start
            if current is not None:
                self.client.set_model_version_tag(self.name, version, "previous_champion", current)
            elif "previous_champion" in tags:
                self.client.delete_model_version_tag(self.name, version, "previous_champion")
            if aliases.get(CANARY) == version:
                self.client.delete_registered_model_alias(self.name, CANARY)
            self._append_audit("promote", version=version, alias=CHAMPION, frm=current, to=version,
                               details={"review": review, "gate": tags.get("gate"),
                                        "override": _loads(tags.get("gate_override"))})
        return {"from": current, "to": version, "seconds": round(seconds, 4), "lock_wait_s": round(waited, 4),
                "changed": True}

    def rollback(self, to: str | None = None) -> dict:
        """Move `champion` back: to the version it replaced (tag previous_champion) or to `to`, which must
        have been champion before. Returns {from, to, seconds}."""
        start = time.perf_counter()
        with self._locked():
            waited = time.perf_counter() - start
            aliases = self._reconciled_aliases()
            current = aliases.get(CHAMPION)
            if to is None:
                if current is None:
                    raise RegistryRuleError("there is no champion to roll back from")
                target = (self._version(current).tags or {}).get("previous_champion")
                if not target:
                    raise RegistryRuleError(f"champion v{current} has no previous champion recorded; pass --to VERSION")
            else:
                target = str(self._version(str(to)).version)
                if target == current:
                    raise RegistryRuleError(f"version {target} is already the champion")
                earlier = {str(e.get(k)) for e in self.audit() if e.get("alias") == CHAMPION for k in ("from", "to")}
                if target not in earlier:
                    raise RegistryRuleError(f"version {target} was never champion: roll back only to an earlier champion; "
                                            "promote it instead (that needs an approval)")
            self.alias_client.set_registered_model_alias(self.name, CHAMPION, target)
            seconds = time.perf_counter() - start
            self._append_audit("rollback", version=target, alias=CHAMPION, frm=current, to=target)
        return {"from": current, "to": target, "seconds": round(seconds, 4), "lock_wait_s": round(waited, 4)}

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
                            "base_model/base_digest tags). Aliases: champion, canary. History: audit.* tags.",
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
        last = moves[-1]["to"] if moves else None
        if last != aliases.get(CHAMPION):
            self._append_audit("reconcile", version=aliases.get(CHAMPION), alias=CHAMPION, frm=last,
                               to=aliases.get(CHAMPION), details={"note": "champion alias differed from the audit history"},
                               tags=model.tags)
        return aliases

    def _version(self, version: str):
        version = str(version).lstrip("v")
        try:
            return self.alias_client.get_model_version(self.name, version)
        except Exception as err:  # MlflowException or RegistryHttpError, as in _model
            if getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise RegistryRuleError(f"{self.name} has no version {version!r}; see `flywheel registry status`") from None
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
        seq = max((int(k[len(AUDIT_PREFIX):]) for k in tags if k.startswith(AUDIT_PREFIX)), default=0) + 1
        entry = {"seq": seq, "time": _now(), "action": action, "actor": actor or _actor(), "version": version,
                 "alias": alias, "from": frm, "to": to, "details": details or {}}
        self.alias_client.set_registered_model_tag(self.name, f"{AUDIT_PREFIX}{seq:06d}", json.dumps(entry, default=str))
        return entry

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
    entries = [json.loads(v) for k, v in (tags or {}).items() if k.startswith(AUDIT_PREFIX)]
    return sorted(entries, key=lambda e: e["seq"])


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "torch", "transformers", "peft"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _required(value: str | None, what: str) -> str:
    if value is None or not str(value).strip():
        raise RegistryRuleError(f"a {what} is required (pass --{what} ...)")
    return str(value).strip()


def _loads(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _actor() -> str:
    try:
        return os.environ.get("FLYWHEEL_ACTOR") or getpass.getuser()
    except Exception:  # no user database entry (containers)
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds") if ms else None
