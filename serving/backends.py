"""Where answers come from: the base model and its adapters in this process, or a vLLM server.

Both backends take the same calls from the app and the follower:
    await backend.complete(prompt, adapter, params)   -> Completion (text, token counts, finish reason)
    backend.stream(prompt, adapter, params)            -> text pieces, then the Completion
    backend.load(name, path) / backend.unload(name)    -> adapters by name (the follower names them "v3")

* `LocalBackend`: tasks/generation.py's LocalGenerator (transformers + peft) behind the batcher's worker
  thread (serving/batching.py). A stream is the finished answer sent in pieces: batching generates whole
  answers, so the first piece comes when the answer is done. A new adapter is loaded in the follower's
  thread beside the batches in progress (see `LocalBackend.load`), so a swap does not wait for them.
* `UpstreamBackend` (serving.backend: vllm): a gateway. Generation goes to the vLLM OpenAI server at
  serving.upstream (`/v1/completions` in the prompt template the adapters were trained on, `model` = the
  adapter's name, or the base model's), streams are relayed piece by piece as vLLM sends them, and
  adapters are loaded and unloaded through vLLM's runtime LoRA endpoints (`/v1/load_lora_adapter`,
  `/v1/unload_lora_adapter`; vLLM started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
  The adapter path is read by the vLLM server: it must see the same files (same machine or shared storage).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tasks.base_model import EOS_TOKEN, ModelError, format_prompt, resolve_base_model
from tasks.config import Settings
from tasks.generation import TURN_MARKER, LocalGenerator, clean_completion

from serving.batching import Batcher, Completion, GenerationError, Params
from serving.metrics import Metrics

log = logging.getLogger("flywheel.serving")
_PIECES = re.compile(r"\s*\S+\s*|\s+")


class LocalBackend:
    """The base model and its LoRA adapters in this process."""

    kind = "local"

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        serving = settings.serving
        self.generator = LocalGenerator(resolve_base_model(settings), device=settings.train.device,
                                        batch_size=max(settings.model.batch_size, serving.max_batch_size),
                                        max_new_tokens=settings.model.max_new_tokens, threads=settings.model.cpu_threads)
        self.base_digest: str | None = self.generator.base_digest
        self.base_version = f"base@{self.base_digest[:12]}"
        self.batcher = Batcher(self.generator, metrics, max_batch=serving.max_batch_size,
                               max_wait_s=serving.max_wait_ms / 1000)

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    async def complete(self, prompt: str, adapter: str | None, params: Params) -> Completion:
        return await self.batcher.complete(prompt, adapter, params)

    async def stream(self, prompt: str, adapter: str | None, params: Params) -> AsyncIterator[str | Completion]:
        completion = await self.complete(prompt, adapter, params)
        for piece in _PIECES.findall(completion.text):
            yield piece
        yield completion

    def load(self, name: str, path: Path) -> None:
        """Load beside the others; ModelError if it cannot be. Runs in the caller's thread (the follower's)
        while batches go on: the files are read and checked, then peft adds the adapter to the LoRA layers
        the model already has (LocalGenerator.load_beside_generation); the generation thread waits at most
        for that last step, when it switches adapters between two groups. Only a load that changes the
        model's layers (the first adapter on the bare base, or one adapting other modules) waits for the
        batch in progress and runs on the generation thread."""
        path = Path(path)
        self.generator.check_adapter(name, path)
        if not self.generator.load_beside_generation(name, path):
            self.batcher.run(lambda generator: generator.load_adapter(name, path, checked=True)).result()

    def unload(self, name: str) -> None:
        """Unload after the batch in progress; returns at once."""
        self.batcher.run(lambda generator: generator.unload_adapter(name))


class UpstreamBackend:
    """A gateway to a vLLM OpenAI-compatible server (serving.upstream)."""

    kind = "vllm"
    base_digest: str | None = None  # the upstream's base cannot be checked from here

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        serving = settings.serving
        self.url = str(serving.upstream).rstrip("/").removesuffix("/v1")
        token = os.environ.get(serving.upstream_api_key_env)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(base_url=self.url, timeout=serving.upstream_timeout_s, headers=headers,
                                        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self.admin = httpx.Client(base_url=self.url, timeout=serving.upstream_timeout_s, headers=headers)
        self.base_model = serving.upstream_model
        self.base_version = f"base@{self.base_model}" if self.base_model else "base"
        # Loads and unloads reach vLLM one at a time and in order (an unload never overtakes a load).
        self._adapter_calls = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora")

    def start(self) -> None:
        if self.base_model:
            return
        try:
            listing = self.admin.get("/v1/models")
            listing.raise_for_status()
            self.base_model = listing.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
            raise ModelError(f"the upstream {self.url} (serving.upstream) did not list its models at /v1/models "
                             f"({type(err).__name__}: {err}); start it, or set serving.upstream_model") from None
        self.base_version = f"base@{self.base_model}"

    def stop(self) -> None:
        self._adapter_calls.shutdown(wait=True)
        self.admin.close()

    async def close(self) -> None:
        await self.client.aclose()

    async def complete(self, prompt: str, adapter: str | None, params: Params) -> Completion:
        body = self._body(prompt, adapter, params)
        try:
            answer = await self.client.post("/v1/completions", json=body)
        except httpx.HTTPError as err:
            raise GenerationError(f"the upstream {self.url} did not answer ({type(err).__name__}: {err})") from None
        if answer.status_code >= 400:
            raise GenerationError(f"the upstream {self.url} answered {answer.status_code}: {answer.text[:300]}")
        data = answer.json()
        choice = (data.get("choices") or [{}])[0]
        usage = data.get("usage") or {}
        return Completion(clean_completion(choice.get("text") or ""), usage.get("prompt_tokens"),
                          usage.get("completion_tokens"), choice.get("finish_reason") or "stop")

    async def stream(self, prompt: str, adapter: str | None, params: Params) -> AsyncIterator[str | Completion]:
        body = {**self._body(prompt, adapter, params), "stream": True, "stream_options": {"include_usage": True}}
        pieces: list[str] = []
        usage: dict = {}
        finish = "stop"
        try:
            async with self.client.stream("POST", "/v1/completions", json=body) as answer:
                if answer.status_code >= 400:
                    detail = (await answer.aread()).decode(errors="replace")[:300]
                    raise GenerationError(f"the upstream {self.url} answered {answer.status_code}: {detail}")
                async for line in answer.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if chunk.get("error"):
                        raise GenerationError(f"the upstream {self.url} failed mid-stream: {str(chunk['error'])[:300]}")
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        finish = choice.get("finish_reason") or finish
                        text = (choice.get("text") or "").replace(EOS_TOKEN, "")
                        if text:
                            pieces.append(text)
                            yield text
        except httpx.HTTPError as err:
            raise GenerationError(f"the upstream {self.url} did not answer ({type(err).__name__}: {err})") from None
        yield Completion(clean_completion("".join(pieces)), usage.get("prompt_tokens"), usage.get("completion_tokens"),
                         finish)

    def load(self, name: str, path: Path) -> None:
        self._adapter_calls.submit(self._load, name, path).result()

    def unload(self, name: str) -> None:
        self._adapter_calls.submit(self._unload, name)

    def _load(self, name: str, path: Path) -> None:
        try:
            answer = self.admin.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        except httpx.HTTPError as err:
            raise ModelError(f"the upstream {self.url} did not answer the adapter load ({type(err).__name__}: {err})") from None
        if answer.status_code >= 400 and "already" not in answer.text:  # vLLM: 400 "... has already been loaded"
            raise ModelError(f"the upstream {self.url} refused to load adapter {name!r} from {path}: "
                             f"HTTP {answer.status_code}: {answer.text[:300]}")

    def _unload(self, name: str) -> None:
        try:
            answer = self.admin.post("/v1/unload_lora_adapter", json={"lora_name": name})
            if answer.status_code >= 400:
                log.warning("the upstream %s did not unload adapter %s: HTTP %d: %s", self.url, name,
                            answer.status_code, answer.text[:200])
        except httpx.HTTPError as err:
            log.warning("the upstream %s did not answer the unload of %s: %s", self.url, name, err)

    def _body(self, prompt: str, adapter: str | None, params: Params) -> dict:
        body = {"model": adapter or self.base_model, "prompt": format_prompt(prompt) if params.template else prompt,
                "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
                "stop": [TURN_MARKER, *params.stops]}
        if params.seed is not None:
            body["seed"] = params.seed
        return body


def make_backend(settings: Settings, metrics: Metrics) -> LocalBackend | UpstreamBackend:
    """The backend serving.backend asks for."""
    if settings.serving.backend == "vllm":
        return UpstreamBackend(settings, metrics)
    return LocalBackend(settings, metrics)
