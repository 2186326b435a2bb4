"""Names of the prune stage's options, in plain Python so the config can validate them without
importing torch. What each one does: pipeline/lottery/masks.py and pipeline/prune.py."""

MODES = ("iterative", "one_shot")
STRATEGIES = ("global", "layerwise")
CONTROLS = ("dense_rewound", "random_prune", "random_reinit")
# the attention and MLP matrices of every block, GPT-2 and LLaMA names: q/k/v/o_proj, gate/up/down_proj,
# c_attn, c_proj, c_fc. Embeddings, the (tied) head, norms and biases never match.
DEFAULT_INCLUDE = r"\.(self_attn|attn|mlp)\.[^.]+\.weight$"
