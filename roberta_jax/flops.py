"""Counting work: training FLOPs per token and the peak to divide by for MFU."""

from __future__ import annotations

import time

# Dense bf16 peak FLOP/s per chip, by jax device_kind.
PEAK_FLOPS = {
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12,
}


def train_flops_per_token(layers: int, hidden: int, ffn: int, seq_len: int, vocab: int,
                          head_fraction: float = 1.0) -> float:
    """6 L (4 d^2 + 2 d f) + 12 L d s + 6 (d^2 + d V) h, h = share of positions reaching the MLM
    head (1 with logits everywhere, slots / seq_len when only masked positions are gathered)."""
    d, f, s, v = hidden, ffn, seq_len, vocab
    return (6 * layers * (4 * d * d + 2 * d * f) + 12 * layers * d * s
            + 6 * (d * d + d * v) * head_fraction)


def peak_flops_per_device(device) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak, f"{name} dense bf16 peak"
    return measured_matmul_flops(), "measured fp32 matmul ceiling"


def measured_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n^3 fp32 matmul on the default device: the practical ceiling on a CPU."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best
