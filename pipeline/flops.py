"""Analytic model FLOPs, the numerator of MFU and of the growth benchmark's compute accounting.

Per trained token (PaLM, appendix B): 6·N + 12·L·H·Q·T, where N counts the weights of every matrix
multiply (attention and MLP projections and the LM head; not the embedding lookup, which is a
gather) and 12·L·H·Q·T is attention's QK^T and AV products over a context of T (H query heads of
size Q, L layers), forward plus twice for backward. Norms, activations and softmax are ignored (under
0.3% on the CPU test sizes, checked against DeepSpeed's flops profiler). Activation-checkpoint
recompute is not model FLOPs: it belongs in hardware FLOPs (HFU, `recompute_flops_per_token`), not MFU.
N is computed from the shape, not from `numel()`, which reads 0 under ZeRO-3.
"""

from __future__ import annotations

from pipeline.models.families import family
from pipeline.models.sizes import ModelShape


def layer_matmul_parameters(shape: ModelShape) -> int:
    d, q = shape.hidden, shape.head_dim
    attention = 2 * d * shape.heads * q + 2 * d * shape.kv_heads * q  # q and o; k and v (GQA)
    mlp = family(shape.family).mlp_matrices() * d * shape.ffn  # gated MLPs have gate, up, down
    return shape.layers * (attention + mlp)


def matmul_parameters(shape: ModelShape, vocab_size: int) -> int:
    return layer_matmul_parameters(shape) + vocab_size * shape.hidden


def _attention_flops_per_token(shape: ModelShape, seq_len: int) -> int:
    """Forward QK^T and AV per token."""
    return 4 * shape.layers * shape.heads * shape.head_dim * seq_len


def training_flops_per_token(shape: ModelShape, vocab_size: int, seq_len: int) -> int:
    return 6 * matmul_parameters(shape, vocab_size) + 3 * _attention_flops_per_token(shape, seq_len)


def recompute_flops_per_token(shape: ModelShape, seq_len: int) -> int:
    """Extra forward FLOPs of activation checkpointing. torch's non-reentrant checkpoint stops
    recomputing once every tensor backward needs is back, so each block's last matmul (the MLP's
    output projection, whose output backward does not need) is not re-run; attention is."""
    mlp_output = shape.layers * shape.hidden * shape.ffn
    return 2 * (layer_matmul_parameters(shape) - mlp_output) + _attention_flops_per_token(shape, seq_len)
