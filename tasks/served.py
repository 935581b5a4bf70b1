"""What production serves, as a Generator: the registry decides, this module loads it.

With `model.backend: local` that is the base model with the registry champion's LoRA adapter (the bare
base before the first promotion); with `openai` it is the endpoint, which serves production itself.
Monitoring (self-consistency sampling), evaluation (a candidate beside the champion on one loaded
base), the demo and the model server ask here instead of building generators of their own:

    served = served_generator(settings, extra_adapters={"candidate": adapter_dir})
    served.generator      # answers as production does (the champion's adapter active)
    served.champion()     # the served model alone, labelled as the registry names it ("v3" / "base@...")
    AdapterView(served.generator, "candidate", "cand")   # another loaded adapter as its own Generator
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tasks.config import Settings
from tasks.generation import make_generator
from tasks.registry import Registry

CHAMPION = "champion"  # the adapter name the registry's champion is loaded under


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
    return AdapterView(generator, None, f"base@{getattr(generator, 'base_digest', '')[:12]}")


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
