"""Generation backends: prompts in, answers out, from a local model directory or an OpenAI-compatible
endpoint, through the one `tasks.contracts.Generator` interface (DESIGN.md section 7).

* `LocalGenerator` (transformers + peft: batched, several adapters loaded at once, switchable without
  reloading the base) and `OpenAICompatibleGenerator` (vLLM / TGI / llama.cpp over HTTP): same calls,
  same outputs. `make_generator` builds the one `model.backend` asks for.
* Greedy answers are deterministic, so a repeated prompt is answered once: inside one call always, and
  across calls for as long as the model does not change when wrapped in `GreedyAnswerCache`.
* `pick_device` / `bf16_by_default` decide where and in which precision torch runs (training uses them too).

Which adapters production serves is tasks/served.py's question; this module only runs what it is given.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

from tasks.base_model import EOS_TOKEN, ModelError, format_prompt, model_digest, resolve_base_model, torch_threads
from tasks.config import Settings

# Text a completion never legitimately contains: where a model runs past its answer into a new turn.
TURN_MARKER = "\n###"


def clean_completion(text: str) -> str:
    """A model's raw continuation cut to its answer: up to the next turn, without EOS, stripped."""
    cut = text.find(TURN_MARKER)
    if cut >= 0:
        text = text[:cut]
    return text.replace(EOS_TOKEN, "").strip()


def _answer_each_once(
    generate: Callable[..., list[list[str]]],
    prompts: Sequence[str],
    *,
    n: int,
    max_new_tokens: int | None,
    seed: int | None,
    memo: dict[tuple, str],
    key: tuple = (),
) -> list[list[str]]:
    """Greedy answers to `prompts`, asking `generate` once per distinct prompt not already in `memo`
    (under `key` + prompt). At temperature 0 a repeated prompt cannot get another answer."""
    missing = [p for p in dict.fromkeys(prompts) if (*key, p) not in memo]
    if missing:
        answers = generate(missing, n=1, max_new_tokens=max_new_tokens, seed=seed)
        memo.update(((*key, p), got[0]) for p, got in zip(missing, answers))
    return [[memo[(*key, p)]] * n for p in prompts]


# --------------------------------------------------------------------------------------------------
# Device


def pick_device(device: str) -> str:
    """`auto`: CUDA when torch sees a GPU, else the CPU; an explicit `cuda` without one is a ModelError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but torch sees no CUDA device: use device 'auto' or 'cpu'")
    return device


def bf16_by_default(device: str) -> bool:
    """bf16 where the hardware computes it (CUDA, Ampere or newer); fp32 on CPU and older GPUs."""
    import torch

    return device == "cuda" and torch.cuda.is_bf16_supported()


# --------------------------------------------------------------------------------------------------
# Backends


class LocalGenerator:
    """transformers + peft generation: batched, left-padded, greedy at temperature 0, sampling otherwise.

    Any number of LoRA adapters can be loaded on the one base; `use(name)` switches between them (or
    back to the bare base with `use(None)`) without reloading anything.

    Threads: `generate`, `use` and `unload_adapter` belong to one thread (a server's generation thread).
    `load_beside_generation` may run in another thread while that one generates: it loads only when peft
    then just adds the new adapter's entries to LoRA layers the model already has, which a forward pass
    on another adapter never reads. Everything that changes which adapters the model holds
    or which one is active holds `_lock`, so a load never sees (or re-applies) a half-switched adapter.
    """

    def __init__(
        self,
        base_path: Path,
        adapters: Mapping[str, Path] | None = None,
        *,
        device: str = "auto",
        batch_size: int = 32,
        max_new_tokens: int = 64,
        threads: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.base_path = Path(base_path)
        if not (self.base_path / "config.json").is_file():
            raise ModelError(f"{self.base_path} is not a model directory (no config.json): run `flywheel model bootstrap`")
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.threads = threads if self.device == "cpu" else 0  # torch CPU threads while generating; 0: as is
        dtype = torch.bfloat16 if bf16_by_default(self.device) else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=dtype)
        self._base = model.to(self.device).eval()
        self._model = self._base  # becomes the PeftModel once an adapter is loaded
        self.base_digest = model_digest(self.base_path)
        self.adapters: dict[str, Path] = {}
        self.active: str | None = None
        self._lock = threading.RLock()  # which adapters are held and which one is active (see the class doc)
        for name, path in (adapters or {}).items():
            self.load_adapter(name, path)
        self.use(None)

    @property
    def model_version(self) -> str:
        return self.active if self.active else f"base@{self.base_digest[:12]}"

    def load_adapter(self, name: str, path: Path, *, checked: bool = False) -> None:
        """Load the LoRA adapter in `path` beside the others as `name`. The files are checked before peft
        touches the model (`check_adapter`; `checked=True`: the caller just did), and a load that fails
        anyway is undone: a bad adapter raises ModelError and leaves the loaded ones as they were. Call it
        from the generating thread; `load_beside_generation` is the one that may run beside it."""
        from peft import PeftModel

        path = Path(path)
        if not checked:
            self.check_adapter(name, path)
        with self._lock:
            if name in self.adapters:
                raise ModelError(f"an adapter named {name!r} is already loaded; pick another name")
            first = self._model is self._base
            try:
                if first:
                    self._model = PeftModel.from_pretrained(self._base, str(path), adapter_name=name)
                else:
                    self._model.load_adapter(str(path), adapter_name=name)
            except Exception as err:
                self._undo_load(name, first)
                raise ModelError(f"adapter {name!r} from {path} could not be loaded: {type(err).__name__}: {err}") from None
            self._model.eval()
            self.adapters[name] = path
            self.use(self.active)

    def load_beside_generation(self, name: str, path: Path) -> bool:
        """Load the checked adapter in `path` as `name` now, while another thread may be generating, when
        that only adds its weights to LoRA layers the model already has: another adapter is loaded and
        adapts the same modules, and this one brings no extra trainable modules. Returns False and loads
        nothing otherwise (the first adapter, which makes peft wrap the base's layers, or one adapting
        other modules): load that one with `load_adapter` between `generate` calls. The check and the
        load happen under one hold of the lock, so an unload in between cannot change the answer."""
        from peft.tuners.lora import LoraLayer
        from safetensors import safe_open

        path = Path(path)
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("peft_type") != "LORA" or config.get("modules_to_save") or config.get("trainable_token_indices"):
            return False
        with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as weights:
            modules = {key.removeprefix("base_model.model.").split(".lora_")[0] for key in weights.keys()}
        with self._lock:
            if self._model is self._base:
                return False
            for module_path in modules:
                try:
                    if not isinstance(self._base.get_submodule(module_path), LoraLayer):
                        return False
                except AttributeError:
                    return False
            self.load_adapter(name, path, checked=True)
            return True

    def unload_adapter(self, name: str) -> None:
        """Remove a loaded adapter and free its weights; the bare base serves if it was the active one."""
        with self._lock:
            if name not in self.adapters:
                raise ModelError(f"no adapter named {name!r} loaded (loaded: {sorted(self.adapters)})")
            del self.adapters[name]
            if self.active == name:
                self.active = None
            if self.adapters:
                self._model.delete_adapter(name)
                self._model.set_adapter(self.active or next(iter(self.adapters)))
            else:  # peft cannot hold zero adapters: take its layers out of the base again
                self._model.unload()
                self._model = self._base

    def check_adapter(self, name: str, path: Path) -> None:
        """ModelError unless `path` holds a LoRA adapter this base can load: both files there and readable,
        finite weights, every adapted module present with the shapes the weights need. Reads the files
        and the base's module shapes only, so it may run beside generation in another thread."""
        import torch
        from safetensors.torch import load_file

        weights_file = path / "adapter_model.safetensors"
        if not (path / "adapter_config.json").is_file() or not weights_file.is_file():
            raise ModelError(f"adapter {name!r}: {path} holds no adapter_config.json + adapter_model.safetensors "
                             "(expected a LoRA adapter directory)")
        try:
            json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
            weights = load_file(str(weights_file))
        except Exception as err:
            raise ModelError(f"adapter {name!r}: {path} is unreadable ({type(err).__name__}: {err})") from None
        for key, tensor in weights.items():
            if not torch.isfinite(tensor).all():
                raise ModelError(f"adapter {name!r}: {key} in {weights_file} holds NaN or infinite values")
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_path = key.removeprefix("base_model.model.").split(".lora_")[0]
            try:
                module = self._base.get_submodule(module_path)
            except AttributeError:
                raise ModelError(f"adapter {name!r} was made for another base model: this one has no {module_path}") from None
            want = getattr(module, "in_features", None) if ".lora_A." in key else getattr(module, "out_features", None)
            got = tensor.shape[1] if ".lora_A." in key else tensor.shape[0]
            if want is not None and got != want:
                raise ModelError(f"adapter {name!r} was made for another base model: {module_path} takes {want} "
                                 f"features here, the adapter {got}")

    def _undo_load(self, name: str, first: bool) -> None:
        """Take a half-loaded adapter out again (peft may have added its layers before failing)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if not first:
            if name in getattr(self._model, "peft_config", {}):
                self._model.delete_adapter(name)
            return
        for module_name, module in list(self._base.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent_name, _, child = module_name.rpartition(".")
                setattr(self._base.get_submodule(parent_name) if parent_name else self._base, child, module.get_base_layer())
        self._model = self._base

    def use(self, name: str | None) -> None:
        with self._lock:
            if name is not None and name not in self.adapters:
                raise ModelError(f"no adapter named {name!r} loaded (loaded: {sorted(self.adapters)}); call load_adapter first")
            if name is not None:
                self._model.set_adapter(name)
            self.active = name

    @contextmanager
    def _adapters_off(self):
        """peft's disable_adapter() (the bare base answers), switched on and off under `_lock`."""
        with self._lock:
            switch = self._model.disable_adapter()
            switch.__enter__()
        try:
            yield
        finally:
            with self._lock:
                switch.__exit__(None, None, None)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        top_p: float = 1.0,
        template: bool = True,
    ) -> list[list[str]]:
        """`n` answers per prompt. `template=False` continues each prompt as given (an OpenAI-style
        completion of text already in the prompt template) instead of wrapping it in the template."""
        import torch

        if n < 1:
            raise ValueError("n must be at least 1")
        prompts = list(prompts)
        if not prompts:
            return []
        max_new = max_new_tokens or self.max_new_tokens
        sample = temperature > 0
        if not sample and len(set(prompts)) < len(prompts):  # greedy: a repeated prompt is answered once
            return _answer_each_once(functools.partial(self.generate, template=template), prompts, n=n,
                                     max_new_tokens=max_new, seed=seed, memo={})
        texts = [format_prompt(p) for p in prompts] if template else prompts
        # Similar lengths batch together (less padding); results go back in the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[list[str]] = [[] for _ in texts]
        adapter_off = self._adapters_off() if (self.active is None and self._model is not self._base) else nullcontext()
        rng_devices = [torch.cuda.current_device()] if self.device == "cuda" else []
        with torch.inference_mode(), adapter_off, torch_threads(self.threads), \
                torch.random.fork_rng(devices=rng_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.device)
                kwargs: dict[str, Any] = {
                    "max_new_tokens": max_new,
                    "pad_token_id": self.tokenizer.pad_token_id,
                    "eos_token_id": self.tokenizer.eos_token_id,
                    "do_sample": sample,
                }
                if sample:
                    kwargs.update(temperature=temperature, top_p=top_p, top_k=0, num_return_sequences=n)
                out = self._model.generate(**enc, **kwargs)
                new_tokens = out[:, enc["input_ids"].shape[1]:]
                decoded = [clean_completion(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
                per = n if sample else 1
                for j, i in enumerate(chunk):
                    got = decoded[j * per:(j + 1) * per]
                    results[i] = got if sample else got * n
        return results


class GreedyAnswerCache:
    """Wraps a Generator and remembers its greedy answers per (model version, prompt, length limit).

    At temperature 0 an answer cannot change while the model does not, and simulated traffic asks
    the same questions week after week (about half of a quarter's prompts are repeats): the demo
    answers each of them once per champion. Sampling (temperature > 0) always goes to the model.
    """

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self._answers: dict[tuple[str, int | None, str], str] = {}

    @property
    def model_version(self) -> str:
        return self.generator.model_version

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> list[list[str]]:
        if temperature > 0:
            return self.generator.generate(prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        return _answer_each_once(self.generator.generate, prompts, n=n, max_new_tokens=max_new_tokens, seed=seed,
                                 memo=self._answers, key=(self.generator.model_version, max_new_tokens))


class OpenAICompatibleGenerator:
    """Generation through an OpenAI-compatible HTTP server (vLLM, TGI, llama.cpp `server`).

    `api="completions"` sends `format_prompt(prompt)` to /completions (the server runs our model and
    template); `api="chat"` sends the raw prompt as a user message to /chat/completions (the server
    applies its own chat template). Connection errors, timeouts and 5xx/429 answers are retried with
    exponential backoff; any other 4xx fails at once with the server's message.
    """

    def __init__(
        self,
        endpoint: str,
        model: str | None = None,
        *,
        api: Literal["completions", "chat"] = "completions",
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_new_tokens: int = 64,
        concurrency: int = 8,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.api = api
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_new_tokens = max_new_tokens
        self.concurrency = max(1, concurrency)
        self._base_model = model
        self.active: str | None = None
        self.adapters: dict[str, Path] = {}

    @property
    def model_version(self) -> str:
        return self.active or self.served_model

    @property
    def served_model(self) -> str:
        if self._base_model is None:
            listing = self._request("GET", "/models")
            models = [m.get("id") for m in listing.get("data", []) if m.get("id")]
            if not models:
                raise ModelError(f"{self.endpoint}/models lists no model: set model.served_name")
            self._base_model = models[0]
        return self._base_model

    def load_adapter(self, name: str, path: Path) -> None:
        """vLLM's runtime LoRA loading (server started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""
        self._request("POST", "/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}, expect_json=False)
        self.adapters[name] = Path(path)

    def use(self, name: str | None) -> None:
        # On an OpenAI-compatible server an adapter is just another served model name.
        self.active = name

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        top_p: float = 1.0,
    ) -> list[list[str]]:
        if n < 1:
            raise ValueError("n must be at least 1")
        model = self.model_version
        max_new = max_new_tokens or self.max_new_tokens

        def one(index_prompt: tuple[int, str]) -> list[str]:
            index, prompt = index_prompt
            body: dict[str, Any] = {"model": model, "max_tokens": max_new, "temperature": temperature, "n": n}
            if temperature > 0:
                body["top_p"] = top_p
            if seed is not None:
                body["seed"] = seed + index  # distinct but reproducible streams per prompt
            if self.api == "chat":
                body["messages"] = [{"role": "user", "content": prompt}]
                path = "/chat/completions"
            else:
                body["prompt"] = format_prompt(prompt)
                body["stop"] = [TURN_MARKER]
                path = "/completions"
            answer = self._request("POST", path, body)
            choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
            texts = [
                clean_completion(c["message"]["content"] if self.api == "chat" else c.get("text", ""))
                for c in choices
            ]
            if not texts:
                raise ModelError(f"{self.endpoint}{path} answered without choices: {str(answer)[:200]}")
            # Some servers ignore n > 1: repeat greedy answers, ask again for samples.
            while len(texts) < n:
                if temperature == 0:
                    texts.append(texts[0])
                    continue
                body["n"] = n - len(texts)
                if seed is not None:
                    body["seed"] = seed + index + 7919 * len(texts)
                more = self._request("POST", path, body).get("choices", [])
                texts.extend(clean_completion(c["message"]["content"] if self.api == "chat" else c.get("text", "")) for c in more)
            return texts[:n]

        items = list(enumerate(prompts))
        if len(items) <= 1 or self.concurrency == 1:
            return [one(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(one, items))

    def _request(self, method: str, path: str, body: dict | None = None, *, expect_json: bool = True) -> dict:
        url = self.endpoint + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = response.read()
                if not expect_json:
                    return {}
                return json.loads(payload or b"{}")
            except urllib.error.HTTPError as err:
                detail = err.read()[:500].decode(errors="replace")
                if err.code >= 500 or err.code == 429:
                    last_error = f"HTTP {err.code}: {detail}"
                    continue
                raise ModelError(f"{method} {url} was refused with HTTP {err.code}: {detail} "
                                 "(check model.endpoint, model.served_name and the API key)") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                last_error = f"{type(reason).__name__}: {reason}"
                continue
        raise ModelError(f"{method} {url} failed after {self.retries + 1} attempts ({last_error}); "
                         f"is the server up? (timeout {self.timeout_s}s per attempt)")


def make_generator(settings: Settings, adapters: Mapping[str, Path] | None = None):
    """The generator `model.backend` asks for, with the settings' batch size, timeouts and retries."""
    if settings.model.backend == "openai":
        generator = OpenAICompatibleGenerator(
            settings.model.endpoint,
            settings.model.served_name,
            api=settings.model.api,
            api_key=os.environ.get(settings.model.api_key_env),
            timeout_s=settings.model.timeout_s,
            retries=settings.model.retries,
            max_new_tokens=settings.model.max_new_tokens,
        )
        for name, path in (adapters or {}).items():
            generator.adapters[name] = Path(path)  # served by name; loading is the server's job
        return generator
    return LocalGenerator(
        resolve_base_model(settings),
        adapters,
        device=settings.train.device,
        batch_size=settings.model.batch_size,
        max_new_tokens=settings.model.max_new_tokens,
        threads=settings.model.cpu_threads,
    )
