"""The training-throughput benchmark's arithmetic: its MFU figure is only as good as its FLOP count."""

from __future__ import annotations

import sys

import pytest

from tasks.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import train_throughput as bench  # noqa: E402


def test_the_qwen2_shape_has_the_published_parameter_count() -> None:
    # Qwen2-0.5B: 494,032,768 parameters with the embedding tied to the LM head
    n = bench.non_embedding_params(bench.QWEN2_0_5B)
    embedding = bench.QWEN2_0_5B["vocab_size"] * bench.QWEN2_0_5B["hidden_size"]
    assert n + embedding == 494_032_768


def test_flops_per_token_follow_6n_and_lora_skips_weight_gradients() -> None:
    shape, seq = bench.QWEN2_0_5B, 1024
    n = bench.non_embedding_params(shape)
    full, lora = bench.flops_per_token(shape, seq, n)
    head = 2 * shape["hidden_size"] * shape["vocab_size"]
    attention = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * seq
    assert full == 6 * (n + head / 2) + attention
    # LoRA needs no gradient for the frozen weights: one third less of the weight matmuls
    assert full - lora == 2 * n + head
    assert 3.2e9 < full < 3.3e9  # ~3.2 GFLOP per token for a 0.5B model at 1k context


def test_peak_lookup_tells_pcie_from_sxm() -> None:
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert bench.peak_tflops("Some Future GPU", None) is None
    assert bench.peak_tflops("Some Future GPU", 500.0) == 500.0


def test_a_cpu_measurement_reports_tokens_per_second_and_no_mfu() -> None:
    result = bench.measure("tiny", bench.tiny_shape(), device="cpu", bf16=False, batch=2, seq=16, steps=2, warmup=1,
                           r=4, grad_ckpt=False, peak=None)
    assert result["tokens_per_s"] > 0 and result["model_tflops_per_s"] > 0
    assert result["dtype"] == "float32" and 0 < result["trainable_params"] < result["params"]
    assert "mfu" not in result


@pytest.mark.parametrize("grad_ckpt", [False, True])
def test_bf16_and_gradient_checkpointing_run_on_cpu(grad_ckpt: bool) -> None:
    result = bench.measure("tiny", bench.tiny_shape(), device="cpu", bf16=True, batch=2, seq=16, steps=1, warmup=0,
                           r=4, grad_ckpt=grad_ckpt, peak=None)
    assert result["dtype"] == "bfloat16" and result["gradient_checkpointing"] is grad_ckpt
