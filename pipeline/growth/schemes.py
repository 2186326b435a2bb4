"""Names of the growth operator's options, in plain Python so the config can validate them without
importing torch. What each one does: pipeline/growth/init.py (starts) and pipeline/growth/model.py
(recompute)."""

DEPTH_SCHEMES = ("identity", "stack", "interpolate", "midas", "noisy_stack")
NEW_LAYER_PLACEMENTS = ("interleave", "top", "middle")
WIDTH_SCHEMES = ("lossless", "copy", "aki", "random")
DEPTH_COEFFICIENTS = ("per_module", "shared")
RECOMPUTE_MODES = ("weights", "activations", "none")
