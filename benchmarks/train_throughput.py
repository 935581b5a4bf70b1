"""LoRA training throughput: tokens/s and, on CUDA, model FLOPs utilisation (MFU).

Models are built from a config with random weights (nothing is downloaded):
* on CUDA: a Qwen2-0.5B-shaped model (24 layers, hidden 896, vocab 151936) in bf16, plus the tiny one;
* on CPU: the tiny embedded-base shape only (fp32; `--precision bf16` to compare).
LoRA (r=16 on q/k/v/o/gate/up/down by default) is trained with AdamW on random token batches, the
same forward/backward/optimizer step `flywheel train` runs, without data loading.

MFU = achieved model FLOPs / peak bf16 FLOPs of the GPU. Model FLOPs per token follow the usual
convention 6N + 12*L*d*T (N = base parameters without embeddings) for comparability; LoRA really needs
about 4N (no weight gradients for frozen weights), reported as `mfu_lora`.

    python benchmarks/train_throughput.py [--steps 10] [--batch 8] [--seq 1024] [--precision auto|bf16|fp32]
                                          [--gradient-checkpointing] [--peak-tflops X]

Prints a table to stderr and one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QWEN2_0_5B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1_000_000.0, tie_word_embeddings=True)
# Peak dense bf16 tensor-core FLOP/s by device name fragment (vendor datasheets).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
                    "L4": 121.0, "RTX 4090": 165.0}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_shape() -> dict:
    from tasks.base_model import BOOTSTRAP_SIZES

    r = BOOTSTRAP_SIZES["default"]
    return dict(vocab_size=r["vocab_size"], hidden_size=r["hidden_size"], intermediate_size=r["intermediate_size"],
                num_hidden_layers=r["num_hidden_layers"], num_attention_heads=r["num_attention_heads"],
                num_key_value_heads=r["num_key_value_heads"], max_position_embeddings=r["max_position_embeddings"],
                tie_word_embeddings=True)


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for fragment, value in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return value
    return None


def non_embedding_params(shape: dict) -> int:
    """Parameters of the model `shape` describes, less the (tied) embedding, counted without allocating it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def flops_per_token(shape: dict, seq: int, n: int) -> tuple[int, int]:
    """Model FLOPs per trained token: (full fine-tuning convention 6N + ..., what LoRA really needs).

    `n` is the non-embedding parameter count; the tied LM head is counted as its matmul, attention
    scores and values as 12 * layers * hidden * seq (forward + backward, causal mask not discounted).
    """
    layers, hidden = shape["num_hidden_layers"], shape["hidden_size"]
    head_matmul = 2 * hidden * shape["vocab_size"]  # forward FLOPs per token of the LM head
    attention = 12 * layers * hidden * seq
    full = 6 * n + 3 * head_matmul + attention
    lora = 4 * n + 2 * head_matmul + attention  # no weight gradients for the frozen weights
    return full, lora


def measure(name: str, shape: dict, *, device: str, bf16: bool, batch: int, seq: int, steps: int, warmup: int,
            r: int, grad_ckpt: bool, peak: float | None) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if bf16 else torch.float32
    config = Qwen2Config(**shape, attn_implementation="sdpa", use_cache=False)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    n_total = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (batch, seq), generator=generator).to(device)
    model.train()

    def step() -> float:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # .item() synchronises, so wall time is honest

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = batch * seq * steps
    tokens_per_s = tokens / seconds
    flops_6n, flops_lora = flops_per_token(shape, seq, n_total - n_embed)
    result = {
        "model": name,
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "params": n_total,
        "trainable_params": trainable,
        "batch": batch,
        "seq": seq,
        "steps": steps,
        "gradient_checkpointing": grad_ckpt,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "model_tflops_per_s": float(f"{tokens_per_s * flops_6n / 1e12:.4g}"),  # tiny CPU shapes: far below 0.001
    }
    if device == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if peak:
            result["peak_tflops"] = peak
            result["mfu"] = round(tokens_per_s * flops_6n / (peak * 1e12), 4)
            result["mfu_lora"] = round(tokens_per_s * flops_lora / (peak * 1e12), 4)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CUDA (0.5B), 16 on CPU")
    parser.add_argument("--seq", type=int, default=None, help="default: 1024 on CUDA (0.5B), 128 for the tiny model")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="auto: bf16 on CUDA, fp32 on CPU (as `flywheel train`)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s of the GPU, if not known")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device == "cuda")
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    peak = peak_tflops(gpu, args.peak_tflops) if gpu else None
    runs = []
    if device == "cuda":
        runs.append(measure("qwen2-0.5b-shape (random)", QWEN2_0_5B, device=device, bf16=bf16, batch=args.batch or 8,
                            seq=args.seq or 1024, steps=args.steps, warmup=args.warmup, r=args.r,
                            grad_ckpt=args.gradient_checkpointing, peak=peak))
        torch.cuda.empty_cache()  # the 0.5B model's memory, freed with measure()'s frame
    runs.append(measure("tiny embedded base shape", tiny_shape(), device=device, bf16=bf16, batch=args.batch or 16,
                        seq=min(args.seq or 128, 256), steps=args.steps, warmup=args.warmup, r=args.r,
                        grad_ckpt=args.gradient_checkpointing, peak=peak))
    summary = {"device": device, "gpu": gpu, "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
               "runs": runs}
    print(f"{'model':28} {'dev':5} {'dtype':9} {'batch x seq':>12} {'tokens/s':>12} {'TFLOP/s':>9} {'MFU':>7}",
          file=sys.stderr)
    for r in runs:
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        print(f"{r['model']:28} {r['device']:5} {r['dtype']:9} {r['batch']:>5} x {r['seq']:<5} {r['tokens_per_s']:>12,.0f} "
              f"{r['model_tflops_per_s']:>9.4g} {mfu:>7}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
