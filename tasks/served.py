"""What production serves, as a Generator: the registry decides, this module loads it.

With `model.backend: local` that is the base model with the registry champion's LoRA adapter (the bare
base before the first promotion); with `openai` it is the endpoint, which serves production itself.
Monitoring (self-consistency sampling), evaluation (a candidate beside the champion on one loaded
base), the demo and the model server ask here instead of building generators of their own:

    served = served_generator(settings, extra_adapters={"candidate": adapter_dir})
    served.generator      # answers as production does (the champion's adapter active)
    served.champion()     # the served model alone, labelled as the registry names it ("v3" / "base@...")
    AdapterView(served.generator, "candidate", "cand")   # another loaded adapter as its own Generator

A long-running server (serving/) follows the registry instead of loading once: `served_versions` reads
what the `champion` and `canary` aliases name now (over MLflow's REST API against a tracking server,
without importing mlflow), and `served_adapter` finds a version's adapter files and the base it was
trained on. No champion alias means the bare base serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tasks.config import Settings
from tasks.generation import make_generator
from tasks.registry import CANARY, Registry

CHAMPION = "champion"  # the adapter name the registry's champion is loaded under
ALIASES = (CHAMPION, CANARY)  # the registry aliases production serves


class AdapterView:
    """One adapter of a multi-adapter generator (LocalGenerator.use) seen as its own Generator, so the
    candidate and the champion can share one loaded base model. `adapter=None` is the bare base."""

    def __init__(self, generator: Any, adapter: str | None, model_version: str | None = None) -> None:
        self._generator = generator
        self._adapter = adapter
        self.model_version = model_version or adapter or "base"

    def generate(self, prompts: Sequence[str], **kwargs: Any) -> list[list[str]]:
        self._generator.use(self._adapter)
        return self._generator.generate(prompts, **kwargs)


def base_view(generator: Any) -> AdapterView:
    """The bare base of `generator` as its own Generator, labelled `base@<digest[:12]>`."""
    return AdapterView(generator, None, base_label(getattr(generator, "base_digest", "")))


def base_label(digest: str) -> str:
    """How reports name the bare base model whose model_digest is `digest`."""
    return f"base@{digest[:12]}"


class Served(NamedTuple):
    """What `served_generator` returns."""

    generator: Any  # the loaded generator; with a local champion, its adapter (CHAMPION) is active
    description: str  # one line saying what serves, for logs and reports
    version: str | None  # the registry champion's version; None before the first promotion

    def champion(self) -> AdapterView:
        """The served model alone, labelled as the registry names it: `v<version>`, or `base@<digest>`
        while the bare base serves."""
        if self.version is None:
            return base_view(self.generator)
        return AdapterView(self.generator, CHAMPION, f"v{self.version}")


def served_generator(settings: Settings, extra_adapters: Mapping[str, Path] | None = None) -> Served:
    """The generator serving what the registry says, built as `model.backend` asks.

    local: the base model plus the champion's adapter, loaded as CHAMPION and active (the bare base when
    no champion is registered). openai: the endpoint's served model (the server holds the champion).
    `extra_adapters` ({name: folder}, e.g. a candidate) are loaded beside it, inactive: view one with
    AdapterView(served.generator, name). A base or adapter that cannot be loaded raises ModelError.
    """
    extra = dict(extra_adapters or {})
    if CHAMPION in extra:
        raise ValueError(f"the adapter name {CHAMPION!r} is the served champion's; name the extra adapter otherwise")
    registry = Registry(settings)
    version = registry.status().get("champion")
    local = settings.model.backend == "local"
    adapters = {**extra, CHAMPION: registry.adapter_path(version)} if local and version else extra
    generator = make_generator(settings, adapters)
    if local and version:
        generator.use(CHAMPION)
    description = f"{settings.model.backend} model" + (" + champion adapter" if local and version else "")
    return Served(generator, description, version)


class ServedAdapter(NamedTuple):
    """One registry version's adapter, as a server loads it."""

    version: str
    name: str  # the adapter's name in a server: "v<version>"
    path: Path  # a local folder with adapter_config.json + adapter_model.safetensors
    base_digest: str | None  # the base model it was trained on (registry tag), if recorded


def adapter_name(version: str) -> str:
    """The name a server gives a registry version's adapter: "v3" (also the logs' model_version)."""
    return f"v{str(version).lstrip('v')}"


def served_versions(registry: Registry) -> dict[str, str | None]:
    """The versions the registry's aliases name now: {"champion": "3", "canary": None}. Both None
    before anything was registered; a champion of None means the bare base serves."""
    try:
        model = registry.alias_client.get_registered_model(registry.name)
    except Exception as err:  # MlflowException or RegistryHttpError; anything but "no such model" is raised
        if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return dict.fromkeys(ALIASES)
        raise
    aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
    return {alias: aliases.get(alias) for alias in ALIASES}


def served_adapter(registry: Registry, version: str) -> ServedAdapter:
    """Where `version`'s adapter files are (downloaded once into the workspace when the artifact store is
    remote) and which base it was trained on."""
    version = str(version).lstrip("v")
    tags = registry.alias_client.get_model_version(registry.name, version).tags or {}
    return ServedAdapter(version, adapter_name(version), registry.adapter_path(version), tags.get("base_digest"))
