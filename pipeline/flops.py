"""Analytic model FLOPs, the numerator of MFU and of the growth benchmark's compute accounting.

Per trained token (PaLM, appendix B): 6·N + 12·L·H·Q·T, where N counts the weights of every matrix
multiply (attention and MLP projections and the LM head; not the embedding lookup, which is a
gather) and 12·L·H·Q·T is attention's QK^T and AV products over a context of T (H query heads of
size Q, L layers), forward plus twice for backward. Norms, activations and softmax are ignored (under
0.3% on the CPU test sizes, checked against DeepSpeed's flops profiler). Activation-checkpoint
recompute is not model FLOPs: it belongs in hardware FLOPs (HFU), not MFU.
N is computed from the shape, not from `numel()`, which reads 0 under ZeRO-3.
"""

from __future__ import annotations

from pipeline.models.sizes import ModelShape


def matmul_parameters(shape: ModelShape, vocab_size: int) -> int:
    d, q = shape.hidden, shape.head_dim
    attention = 2 * d * shape.heads * q + 2 * d * shape.kv_heads * q  # q and o; k and v (GQA)
    mlp = (3 if shape.family == "llama" else 2) * d * shape.ffn  # SwiGLU has gate, up, down
    return shape.layers * (attention + mlp) + vocab_size * d


def training_flops_per_token(shape: ModelShape, vocab_size: int, seq_len: int) -> int:
    return 6 * matmul_parameters(shape, vocab_size) + 12 * shape.layers * shape.heads * shape.head_dim * seq_len
