"""The base model: the one prompt template, the embedded base built from the knowledge base, and where
the configured base lives (DESIGN.md section 7).

* `format_prompt` / `encode_example` are the one prompt template used for pre-training, LoRA training
  and generation (tasks/generation.py formats with it; the registry records it with every adapter).
* `bootstrap_base_model` builds the embedded default base: a byte-level BPE tokenizer trained with
  `tokenizers` on the simulator's knowledge base and a tiny Qwen2-architecture causal LM pre-trained on
  knowledge base v1 question/answer paraphrases plus honest refusals for products it does not know and
  for off-domain questions.
  It is a normal `save_pretrained` directory, so any other local model directory works in its place.
  The build is content-addressed (cached) and locked against a second builder.
* `resolve_base_model` / `base_model_for` say which base the settings name; `model_digest` names a
  model directory by its content.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tasks.config import Settings
from tasks.knowledge import KnowledgeBase, Topic, load_knowledge_base

PROMPT_TEMPLATE = "### Question:\n{question}\n### Answer:\n"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MANIFEST = "flywheel_base.json"  # written beside the weights of a bootstrapped base
# The bootstrapped base's own training pairs (TrainingExample rows): replay data for the first cycle.
PRETRAINING_FILE = "pretraining.jsonl"

# Bump when the bootstrap recipe changes in a way the cache key cannot see.
BOOTSTRAP_VERSION = "3"

# The two embedded sizes. "default" is what `flywheel model bootstrap` builds (2-4 minutes on 2 CPU
# cores); "test" is the even smaller one the test-suite builds once per session (seconds).
BOOTSTRAP_SIZES: dict[str, dict[str, Any]] = {
    "default": {
        "vocab_size": 1024,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
        "epochs": 15,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "prompt_loss_weight": 0.1,
        "synthetic_unknown": 30,
        "refusal_templates": 2,
        "cross_products": 5,
        "question_dropout": 0.1,
        "off_domain_refusals": True,
        "threads": 1,
    },
    "test": {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "epochs": 4,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "prompt_loss_weight": 0.1,
        "synthetic_unknown": 10,
        "refusal_templates": 1,
        "cross_products": 2,
        "question_dropout": 0.1,
        "off_domain_refusals": True,
        "threads": 1,
    },
}
HOLDOUT_SHARE = 0.2  # of each topic's questions, never seen in pre-training

# Questions a shop assistant should decline, pre-trained with an honest refusal so the base declines
# off-domain prompts (the OOD suite's behaviour) rather than reciting a product page. None of them is in
# the OOD suite or the simulator's off-topic bank (tests/test_models.py checks): held-out behaviour.
OFF_DOMAIN_QUESTIONS = (
    "What will the weather be like on Friday?", "Is it going to snow in Chicago tonight?",
    "How cold does it get in Oslo in winter?", "How do I roast a whole chicken?",
    "What can I cook with rice and beans?", "How many minutes do I steam broccoli?",
    "What is 128 divided by 4?", "Is 221 a prime number?", "What is the square root of 144?",
    "Write a limerick about a cat.", "Tell me a funny story about a pirate.", "Write a song about summer rain.",
    "Who painted the Mona Lisa?", "When did the Second World War end?", "What is the tallest mountain in the world?",
    "Who wrote Hamlet?", "What is the largest ocean on Earth?", "How many planets are in the solar system?",
    "Which football club has won the most titles?", "Who is the best tennis player of all time?",
    "What are good places to visit in Lisbon?", "Find me a cheap hotel in Berlin.",
    "How do I renew my passport?", "What should I take for a sore throat?", "Is it safe to run every day?",
    "How much water should I drink a day?", "Should I buy gold or silver?", "How do I open a savings account?",
    "Which stocks will go up next month?", "How do I write a loop in JavaScript?",
    "What does an API gateway do?", "Explain quantum entanglement simply.", "Translate thank you into Spanish.",
    "What is the meaning of life?", "Can you help me with my homework?", "How do I train my dog to sit?",
    "What film should I watch tonight?", "Recommend a good board game.", "How do I get rid of weeds in my garden?",
    "What is the best way to learn French?", "Can you write my cover letter?", "Who will win the next election?",
)


class ModelError(RuntimeError):
    """A model or endpoint that cannot be used; the message names the path or URL and the fix."""


# --------------------------------------------------------------------------------------------------
# Prompt template


def format_prompt(prompt: str) -> str:
    """The single prompt template used for pre-training, LoRA training and local generation."""
    return PROMPT_TEMPLATE.format(question=prompt.strip())


def encode_example(tokenizer, question: str, answer: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + answer + eos, and where the answer starts. The prompt is tokenised on its
    own exactly as at generation time, so training and generation see the same prompt tokens."""
    prompt_ids = tokenizer(format_prompt(question), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + answer_ids)[:max_length]
    return ids, min(len(prompt_ids), len(ids))


# --------------------------------------------------------------------------------------------------
# Pre-training pairs from the knowledge base (shared by the bootstrap and the learning-quality benchmark)


def split_questions(topic: Topic, *, seed: int = 0, holdout: float = HOLDOUT_SHARE) -> tuple[list[str], list[str]]:
    """(train, held_out) paraphrases of one topic; deterministic per (topic id, seed)."""
    questions = list(topic.questions)
    rng = random.Random(f"{seed}:{topic.id}")
    order = questions[:]
    rng.shuffle(order)
    n_out = max(1, round(holdout * len(order))) if len(order) > 2 else 0
    held = set(order[:n_out])
    return [q for q in questions if q not in held], [q for q in questions if q in held]


def _short_name(topic: Topic) -> str | None:
    """The product name as users write it: the longest leading run of the topic name's words found in
    most of its questions ("Aurora X2 headphones" -> "Aurora X2")."""
    words = topic.name.split()
    for end in range(len(words), 0, -1):
        candidate = " ".join(words[:end])
        hits = sum(candidate.lower() in q.lower() for q in topic.questions)
        if hits >= 0.6 * len(topic.questions):
            return candidate
    return None


_SYLLABLES = [
    "ka", "zo", "ri", "mex", "tar", "vin", "lo", "qua", "dre", "syl", "bo", "nix", "fen", "gor", "pel",
    "tru", "va", "cor", "dex", "ly", "mo", "ran", "sa", "tek", "ul", "vo", "wyn", "xi", "yar", "zen",
]
_CATEGORIES = [
    "speaker", "camera", "laptop", "phone", "router", "watch", "tablet", "monitor", "keyboard", "blender",
    "headset", "charger", "printer", "drone", "projector", "earbuds", "console", "lamp", "scanner", "hub",
]


def _synthetic_products(count: int, seed: int, avoid: set[str]) -> list[str]:
    rng = random.Random(f"synthetic:{seed}")
    names: list[str] = []
    while len(names) < count:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        code = rng.choice(["", f" {rng.choice('ABCDEFGHJKLMNPRSTVXZ')}{rng.randint(1, 99)}", f" {rng.randint(2, 12)}",
                           " Pro", " Max", " Lite", " Air"])
        name = f"{word}{code} {rng.choice(_CATEGORIES)}"
        if name.lower() not in avoid and name not in names:
            names.append(name)
    return names


def pretraining_examples(kb: KnowledgeBase, *, seed: int = 0, synthetic_unknown: int = 30,
                         refusal_templates: int = 2, cross_products: int = 5,
                         off_domain_refusals: bool = False) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """(question, answer) pairs the base is pre-trained on, and the held-out questions per topic.

    Answers: the train split of every topic's paraphrases, plus (`cross_products` per product) other
    products' train phrasings with this product's name put in. Refusals: the knowledge base's templated
    questions about `unknown_products` plus made-up names, *and* the known products' own phrasings with
    the name swapped for an unknown one. Both swaps teach the same thing: the product name, not the
    phrasing, decides which answer (or a refusal) follows. With `off_domain_refusals`, the questions of
    OFF_DOMAIN_QUESTIONS are declined too ("I'm sorry, I cannot answer questions about that item." and
    the like, alternating): a shop assistant answers from its pages or says it cannot.
    """
    refusal = kb.refusals["en"][0]
    rng = random.Random(f"pretrain:{seed}")
    pairs: list[tuple[str, str]] = []
    held_out: dict[str, list[str]] = {}
    product_questions: list[tuple[str, str]] = []  # (question, short name) of known products
    for topic in kb.topics:
        train_q, test_q = split_questions(topic, seed=seed)
        held_out[topic.id] = test_q
        pairs.extend((q, topic.answer) for q in train_q)
        short = _short_name(topic) if topic.kind == "product" else None
        if short:
            product_questions.extend((q, short) for q in train_q if short.lower() in q.lower())
    products = [(t, _short_name(t)) for t in kb.topics if t.kind == "product" and _short_name(t)]
    crossed: list[tuple[str, str]] = []
    for topic, short in products:
        others = [(q, s) for q, s in product_questions if s != short]
        for question, other in rng.sample(others, k=min(cross_products, len(others))):
            crossed.append((re.sub(re.escape(other), short, question, flags=re.IGNORECASE), topic.answer))
    seen_q = {q for q, _ in pairs}
    pairs.extend(p for p in dict.fromkeys(crossed) if p[0] not in seen_q)
    known = {t.name.lower() for t in kb.topics} | {(_short_name(t) or "").lower() for t in kb.topics}
    unknown = list(kb.unknown_products) + _synthetic_products(synthetic_unknown, seed, known)
    templates = list(kb.unknown_questions)
    refusals: list[tuple[str, str]] = []
    for product in unknown:
        for template in rng.sample(templates, k=min(refusal_templates, len(templates))):
            refusals.append((template.format(product=product), refusal))
        for question, short in rng.sample(product_questions, k=min(refusal_templates, len(product_questions))):
            swapped = re.sub(re.escape(short), _drop_category(product), question, flags=re.IGNORECASE)
            refusals.append((swapped, refusal))
    if off_domain_refusals:
        declines = [r for r in kb.refusals.get("en", ()) if "can" in r.lower() or "know" in r.lower()] or [refusal]
        refusals.extend((q, declines[i % len(declines)]) for i, q in enumerate(OFF_DOMAIN_QUESTIONS))
    pairs.extend(dict.fromkeys(refusals))
    return pairs, held_out


def _drop_category(product: str) -> str:
    words = product.split()
    return " ".join(words[:-1]) if len(words) > 1 else product


# --------------------------------------------------------------------------------------------------
# Bootstrap


@contextmanager
def torch_threads(count: int):
    """Run a block with `count` torch CPU threads (0: leave as is), restoring the previous count.

    Pre-training uses a fixed count: float reductions depend on the thread split, so a fixed count keeps
    "same seed, same weights" true on any machine; and on a busy or oversubscribed CPU one thread is often
    several times faster than two spinning OpenMP threads."""
    import torch

    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cache_key(kb_bytes: bytes, size: str, seed: int) -> str:
    blob = json.dumps(
        {"kb": hashlib.sha256(kb_bytes).hexdigest(), "size": BOOTSTRAP_SIZES[size], "seed": seed,
         "version": BOOTSTRAP_VERSION, "template": PROMPT_TEMPLATE},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """Byte-level BPE trained on `texts`, wrapped as a transformers fast tokenizer (left padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, padding_side="left",
        model_max_length=BOOTSTRAP_SIZES["default"]["max_position_embeddings"],
    )


def bootstrap_base_model(
    out_dir: Path,
    *,
    data_dir: Path,
    seed: int = 0,
    size: Literal["default", "test"] = "default",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Build (or reuse) the embedded base model in `out_dir`.

    Content-addressed: the cache key is the knowledge base v1 bytes + the size recipe + seed + recipe
    version; an `out_dir` already holding that key is reused as is. Returns
    {path, params, seconds, digest, cached, cache_key}.
    """
    if size not in BOOTSTRAP_SIZES:
        raise ModelError(f"unknown bootstrap size {size!r}: use one of {sorted(BOOTSTRAP_SIZES)}")
    out_dir = Path(out_dir)
    say = progress or (lambda _msg: None)
    # Two processes bootstrapping into one folder (a worker and a CLI call, two test sessions) would
    # both train for minutes and race on the final rename: the second waits and then finds the cache.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another process is building the base model in {out_dir}: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _bootstrap_locked(out_dir, data_dir=Path(data_dir), seed=seed, size=size, say=say)


def _bootstrap_locked(out_dir: Path, *, data_dir: Path, seed: int, size: str, say: Callable[[str], None]) -> dict:
    start = time.perf_counter()
    kb_path = Path(data_dir) / "knowledge_base" / "v1.json"
    if not kb_path.is_file():
        raise ModelError(f"knowledge base {kb_path} not found: the base model is pre-trained on it; "
                         "point paths.data_dir at the shipped data/ folder")
    kb_bytes = kb_path.read_bytes()
    key = _cache_key(kb_bytes, size, seed)
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("cache_key") == key and (out_dir / "config.json").is_file():
            say(f"base model in {out_dir} is up to date (cache key {key[:12]})")
            return {"path": str(out_dir), "params": manifest["params"], "seconds": round(time.perf_counter() - start, 3),
                    "digest": model_digest(out_dir), "cached": True, "cache_key": key}
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        # Never replace a directory we did not build (someone's own model, a typo'd --out).
        raise ModelError(f"{out_dir} exists and is not a bootstrapped base (no {MANIFEST}): "
                         "choose another --out, or empty that directory first")

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    recipe = BOOTSTRAP_SIZES[size]
    kb = load_knowledge_base(data_dir, "v1")
    pairs, held_out = pretraining_examples(kb, seed=seed, synthetic_unknown=recipe["synthetic_unknown"],
                                           refusal_templates=recipe["refusal_templates"],
                                           cross_products=recipe["cross_products"],
                                           off_domain_refusals=recipe.get("off_domain_refusals", False))
    # The tokenizer sees exactly what the model is trained on: a token the model never saw would keep a
    # random embedding that a later LoRA adapter (which does not train embeddings) could not use.
    say(f"training tokenizer on {len(pairs)} question/answer pairs")
    texts = [format_prompt(q) + a for q, a in pairs] + list(kb.refusals.get("en", ()))
    tokenizer = train_tokenizer(texts, recipe["vocab_size"])

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"],
        num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"],
        num_key_value_heads=recipe["num_key_value_heads"],
        max_position_embeddings=recipe["max_position_embeddings"],
        tie_word_embeddings=True,
        rope_theta=10_000.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    say(f"pre-training a {params / 1e6:.2f}M-parameter Qwen2 model on {len(pairs)} examples")
    with torch_threads(recipe["threads"]):
        losses = _pretrain(model, tokenizer, pairs, recipe, seed, say)

    # Write next to the target, then swap, so a crash never leaves a half-written base behind.
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    seconds = time.perf_counter() - start
    manifest = {
        "cache_key": key,
        "size": size,
        "seed": seed,
        "params": params,
        "recipe": recipe,
        "knowledge_base": {"path": str(kb_path), "sha256": hashlib.sha256(kb_bytes).hexdigest()},
        "examples": len(pairs),
        "held_out": held_out,
        "final_loss": losses[-1] if losses else None,
        "seconds": round(seconds, 2),
        "prompt_template": PROMPT_TEMPLATE,
    }
    with open(tmp_dir / PRETRAINING_FILE, "w", encoding="utf-8", newline="\n") as handle:
        for question, answer in pairs:
            row = {"prompt": question, "response": answer, "source": "bootstrap", "cycle_id": "bootstrap"}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir.rename(out_dir)
    say(f"base model written to {out_dir} in {seconds:.0f}s")
    return {"path": str(out_dir), "params": params, "seconds": round(seconds, 2), "digest": model_digest(out_dir),
            "cached": False, "cache_key": key}


def _pretrain(model, tokenizer, pairs, recipe, seed, say, on_epoch=None) -> list[float]:
    """Plain AdamW loop (cosine schedule with warm-up), length-bucketed batches; loss on the answer with a
    small weight on the question too (it is a language model: it should know the words it is asked in).
    Question dropout removes a share of the question's tokens afresh each epoch, so the answer has to hang
    on several cues (the name, the keywords) and held-out paraphrases still find it."""
    import torch
    import torch.nn.functional as F

    max_len = recipe["max_position_embeddings"]
    prefix = tokenizer(PROMPT_TEMPLATE.split("{question}")[0], add_special_tokens=False)["input_ids"]
    suffix = tokenizer(PROMPT_TEMPLATE.split("{question}")[1], add_special_tokens=False)["input_ids"]
    encoded = []
    for q, a in pairs:
        ids, answer_start = encode_example(tokenizer, q, a, max_len)
        q_start, q_end = len(prefix), answer_start - len(suffix)
        framed = ids[:q_start] == prefix and ids[q_end:answer_start] == suffix and q_end - q_start > 1
        encoded.append((ids, answer_start, (q_start, q_end) if framed else None))
    batch_size = recipe["batch_size"]
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    total = steps_per_epoch * recipe["epochs"]
    warmup = max(1, total // 20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))),
    )
    generator = torch.Generator().manual_seed(seed)
    drop_rng = random.Random(f"dropout:{seed}")
    pad = tokenizer.pad_token_id
    w_prompt = recipe["prompt_loss_weight"]
    p_drop = recipe.get("question_dropout", 0.0)
    model.train()
    losses: list[float] = []
    step = 0
    started = time.perf_counter()
    for epoch in range(recipe["epochs"]):
        examples = []
        for ids, answer_start, span in encoded:
            if span and p_drop > 0:
                q_start, q_end = span
                kept = [t for t in ids[q_start:q_end] if drop_rng.random() >= p_drop] or ids[q_start:q_start + 1]
                cut = (q_end - q_start) - len(kept)
                ids = ids[:q_start] + kept + ids[q_end:]
                answer_start -= cut
            examples.append((ids, answer_start))
        # Similar lengths share a batch (less padding); batch order is shuffled again.
        order = torch.randperm(len(examples), generator=generator).tolist()
        window = batch_size * 8
        batches = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w:w + window], key=lambda i: len(examples[i][0]))
            batches.extend(chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        epoch_losses = []
        for batch_ids in batches:
            batch = [examples[i] for i in batch_ids]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            weights = torch.zeros((len(batch), width))
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, answer_start) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
                weights[row, 1:answer_start] = w_prompt
                weights[row, answer_start: len(ids)] = 1.0
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
            target_w = weights[:, 1:]
            token_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), input_ids[:, 1:].reshape(-1), reduction="none")
            loss = (token_loss * target_w.reshape(-1)).sum() / target_w.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            epoch_losses.append(losses[-1])
            step += 1
        say(f"epoch {epoch + 1}/{recipe['epochs']}  step {step}/{total}  loss {sum(epoch_losses) / len(epoch_losses):.4f}  "
            f"{time.perf_counter() - started:.0f}s")
        if on_epoch is not None:
            on_epoch(epoch + 1, model, tokenizer)
    model.eval()
    return losses


def model_digest(path: Path) -> str:
    """sha256 over the files that define a model directory (weights, config, tokenizer), by name."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel in (MANIFEST, PRETRAINING_FILE) or rel.startswith(".") or "/." in rel or rel.endswith(".md"):
            continue
        digest.update(rel.encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def bootstrap_for(settings: Settings, out_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """`bootstrap_base_model` with the settings' data, seed and size, into `<workspace>/models/base`
    unless `out_dir` says otherwise."""
    return bootstrap_base_model(out_dir or settings.paths.under("models", "base"), data_dir=settings.paths.data_dir,
                                seed=settings.model.bootstrap_seed, size=settings.model.bootstrap_size, progress=progress)


def base_model_for(settings: Settings, progress: Callable[[str], None] | None = None) -> Path:
    """The base model to train and serve: `model.base` when set, else the embedded one (built on
    first use, then reused from its content-addressed cache)."""
    if settings.model.base:
        return resolve_base_model(settings)
    return Path(bootstrap_for(settings, progress=progress)["path"])


def resolve_base_model(settings: Settings) -> Path:
    """`model.base` when set (a local model directory), else the bootstrapped `<workspace>/models/base`."""
    if settings.model.base:
        path = Path(settings.model.base).expanduser()
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model.base={settings.model.base!r} is not a local model directory (no config.json there); nothing "
                "is downloaded from a hub: save the model with save_pretrained / huggingface-cli download and point "
                "model.base at that directory, or leave model.base empty to use the embedded base"
            )
        return path
    path = settings.paths.under("models", "base")
    if not (path / "config.json").is_file():
        raise ModelError(
            f"no base model in {path}: run `flywheel model bootstrap` to build the embedded one, "
            "or set model.base to a local model directory"
        )
    return path
