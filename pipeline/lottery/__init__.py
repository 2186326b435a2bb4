"""Names of the prune stage's options, in plain Python so the config can validate them without
importing torch. What each one does: pipeline/lottery/masks.py and pipeline/prune.py."""

MODES = ("iterative", "one_shot")
STRATEGIES = ("global", "layerwise")
CONTROLS = ("dense_rewound", "random_prune", "random_reinit")
# the attention and MLP matrices of every block, in every family's names: q/k/v/o_proj, gate/up/down_proj,
# qkv_proj, gate_up_proj, c_attn, c_proj, c_fc. Embeddings, the (tied) head, norms (also Qwen3's
# self_attn.q_norm / k_norm) and biases never match.
DEFAULT_INCLUDE = r"\.(self_attn|attn|mlp)\.(?![^.]*norm)[^.]+\.weight$"
