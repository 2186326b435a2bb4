"""The LiGO growth operator: target weights = width expansion of a depth blend of donor weights.

For each canonical module type k (q, k, v, o, norms, MLP matrices) and target layer i:
    blended = sum_j w_k[i, j] * donor_layer_j.k                  depth: w_k in R^{L2 x L1}
    target  = Rows(i) @ blended @ Cols(i)^T                       width, by the module's role
Width expansions (adapters.LAYER_ROLES):
  residual   one global expansion (D1 -> D2) shared by embeddings, every residual reader and writer,
             the norms and the LM head: the paper's key tying.
  q_heads, k_heads, v_heads, ffn   per target layer; heads grow in whole heads (head_dim fixed), so
             the expansion is H (x) I_head_dim with H over head indices.
An expansion holds P (N2 x N1) and a consumer scale b (N2): producers (rows) use P, consumers
(columns) use diag(b) P (K and V heads have no consumer weight, so no b). The paper ties consumers to
the same matrix (A_o = B_v, A_fc2 = B_fc1, A_qkv = B_emb); the per-unit scale lets the same tying
express function-preserving growth: a copy expansion with b = 1/copies (Net2Net / HyperCloning) or
unequal shares of a copied unit (LEMON) gives C^T P = I. The residual stream may also have its own
writer matrix for its producers (lossless growth writes its new units as zero or as the mean while its
readers' new columns are non-zero; init.py), and a gate on the norms' new bias entries.
Norm gains are expanded by P and multiplied by the factor by which the expansion changes the RMS
(RMSNorm) or the standard deviation (LayerNorm) of the residual stream: 1 for equal-count copies,
sqrt(D1/D2) for zero or mean new units.

Order of operations: depth blend in the donor's width, then expansion per target layer, as in the
official code: the target is generated one layer at a time at the cost of L2 (not L1*L2) expansions.
The operator is never a dense (L2*D2^2) x (L1*D1^2) matrix.

Everything here is plain torch (no DeepSpeed): generator modules own their parameters, and
`shared_parameters()` tells a ZeRO-3 wrapper which parameters each generator reads from elsewhere. The
donor is frozen and held in buffers (replicated, never gathered).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.growth.adapters import LAYER_ROLES, NORMS, QK_NORMS, Adapter
from pipeline.growth.init import (
    ExpansionInit,
    copy_sources,
    depth_init,
    depth_sources,
    equal_copies,
    head_sources,
    new_layers,
    next_layer,
    original_units,
    width_init,
)
from pipeline.models.families import family
from pipeline.models.hf import resized_config
from pipeline.models.sizes import ModelShape


@dataclass(frozen=True)
class GrowthPlan:
    donor: ModelShape
    target: ModelShape
    depth_init: str = "identity"
    width_init: str = "lossless"
    seed: int = 0
    depth_coefficients: str = "per_module"  # or "shared": one depth matrix for every module type
    new_layers: str = "interleave"  # where depth_init=identity puts the new layers


SHARED = "shared"  # the key of the one depth matrix under depth_coefficients=shared


def depth_coefficients_of(depth: nn.ParameterDict, module: str) -> nn.Parameter:
    """The depth blend a module uses: its own row (per_module) or the shared one."""
    return depth[module if module in depth else SHARED]


def check_plan(plan: GrowthPlan, adapter: Adapter | None = None) -> None:
    """Refuse growth that the operator cannot express (or, with the adapter, that its family cannot
    grow as asked), before any compute."""
    d, t = plan.donor, plan.target
    if d.family != t.family:
        raise ConfigError(f"donor is {d.family}, target is {t.family}: growth keeps the architecture")
    if d.head_dim != t.head_dim:
        raise ConfigError(f"head_dim differs (donor {d.head_dim}, target {t.head_dim}): attention grows in whole "
                          f"heads, so choose target heads = target hidden / {d.head_dim}")
    smaller = [f"{n} {getattr(d, n)} -> {getattr(t, n)}" for n in ("hidden", "ffn", "heads", "kv_heads")
               if getattr(t, n) < getattr(d, n)]
    if smaller:
        raise ConfigError(f"target is narrower than the donor ({', '.join(smaller)}): width can only grow "
                          f"(depth may shrink)")
    if not family(t.family).rotary and t.max_positions > d.max_positions:
        raise ConfigError(f"{t.family} target max_positions {t.max_positions} > donor's {d.max_positions}: the learned "
                          f"position embeddings of the extra positions would have no source")
    head_sources(d.heads, d.kv_heads, t.heads, t.kv_heads)  # raises if KV groups cannot map
    if plan.depth_init == "identity" and plan.depth_coefficients == SHARED:
        raise ConfigError("depth_init=identity needs per_module depth coefficients: a new layer's residual "
                          "writers start at zero while its readers copy a donor layer")
    problem = adapter.plan_problem(plan) if adapter is not None else None
    if problem:
        raise ConfigError(problem)


def lossy_choices(plan: GrowthPlan) -> list[str]:
    """Warnings for starts that silently lose the donor's function where a user may expect otherwise,
    each naming the lossless alternative (deliberately lossy heuristics such as aki are not flagged)."""
    d, t = plan.donor, plan.target
    notes = []
    if plan.depth_init in ("stack", "noisy_stack") and t.layers > d.layers and t.layers % d.layers:
        notes.append(f"depth_init={plan.depth_init} with {d.layers} -> {t.layers} layers (not a multiple) puts copies "
                     f"of the donor's bottom layers on top of its last one; depth_init=identity is lossless")
    if plan.width_init == "copy" and not equal_copies(copy_sources(d.hidden, t.hidden), d.hidden):
        notes.append(f"width_init=copy with a non-integer residual ratio (hidden {d.hidden} -> {t.hidden}) changes "
                     f"every norm's statistics; width_init=lossless is exact at any ratio")
    return notes


def norm_eps_scale(plan: GrowthPlan) -> float:
    """The factor for the target's norm eps: lossless width pads the residual stream with units whose
    mean square (RMSNorm) or variance (LayerNorm) is zero, so the statistic shrinks by D1/D2 and the
    eps must shrink with it for the norm to be exact."""
    return plan.donor.hidden / plan.target.hidden if plan.width_init == "lossless" else 1.0


def qk_factor(plan: GrowthPlan, adapter: Adapter) -> float:
    """What the q and k projections are multiplied by in a family with q/k norms (Qwen3, Gemma 3, OLMo2).
    Those norms read the model's one rms_norm_eps, which lossless width shrinks by D1/D2 for the residual
    norms; a norm is scale-invariant but for its eps, so q, k scaled by sqrt(D1/D2) meet the shrunk eps
    exactly as the donor's q, k met the donor's: rsqrt(s² ms + s² eps) · s q = rsqrt(ms + eps) · q."""
    return norm_eps_scale(plan) ** 0.5 if set(QK_NORMS) & set(adapter.layer_modules) else 1.0


def grown_config(donor_config, plan: GrowthPlan, adapter: Adapter):
    """The grown model's HF config: the donor's hyperparameters (RoPE base, activation, tying, ...) with
    the target's shape, each layer's attention type (sliding or full) from the donor layer its start
    copies, and the norm eps lossless growth needs."""
    sources = depth_sources(plan.depth_init, plan.donor.layers, plan.target.layers, plan.new_layers)
    config = resized_config(donor_config, plan.target, sources)
    setattr(config, adapter.norm_eps_key, getattr(config, adapter.norm_eps_key) * norm_eps_scale(plan))
    return config


class Expansion(nn.Module):
    """N1 -> N2 in blocks of `block` (1, or head_dim for heads): producers use the writer matrix (P unless
    the residual has its own), consumers diag(scale) P, norm vectors P (gains) and gate * writer rows
    (LayerNorm biases)."""

    def __init__(self, init: ExpansionInit, block: int = 1, layer_norm: bool = False):
        super().__init__()
        self.weight = nn.Parameter(init.weight.clone())
        # K and V heads have no consumer weight (attention reads them), so no scale
        self.scale = None if init.scale is None else nn.Parameter(init.scale.clone())
        self.writer = None if init.writer is None else nn.Parameter(init.writer.clone())
        self.norm_bias_gate = None if init.norm_bias_gate is None else nn.Parameter(init.norm_bias_gate.clone())
        self.block = block
        self.layer_norm = layer_norm  # the residual stream's norm centres it: ratio of standard deviations
        # which target units are the donor's own (first copies): AKI takes the others from the next layer
        self.register_buffer("original", original_units(init.weight).repeat_interleave(block), persistent=False)

    def matrix(self, consumer: bool) -> torch.Tensor:
        if consumer:
            return self.weight * self.scale[:, None]
        return self.weight if self.writer is None else self.writer

    def rows(self, w: torch.Tensor, consumer: bool = False, matrix: torch.Tensor | None = None) -> torch.Tensor:
        """Expand dim 0 of a matrix or vector (by `matrix` if given)."""
        m = self.matrix(consumer) if matrix is None else matrix
        blocks = w.reshape(m.shape[1], self.block, -1)
        return torch.einsum("pn,nbi->pbi", m, blocks).reshape(m.shape[0] * self.block, *w.shape[1:])

    def cols(self, w: torch.Tensor, consumer: bool = True) -> torch.Tensor:
        """Expand dim 1 of a matrix (the input side)."""
        m = self.matrix(consumer)
        blocks = w.reshape(w.shape[0], m.shape[1], self.block)
        return torch.einsum("pn,onb->opb", m, blocks).reshape(w.shape[0], m.shape[0] * self.block)

    def norm_vector(self, v: torch.Tensor, kind: str, consumer: bool = False) -> torch.Tensor:
        """A norm's gain ("weight") or bias expanded to the residual's units. Gains take P (new units get
        non-zero gains, so gradient reaches them) and the stream's scale change; biases are written into
        the normed stream like the residual's writers do, gated (lossless LayerNorm: 0 at new units)."""
        if kind == "weight":
            return self.rows(v, matrix=self.matrix(consumer=True) if consumer else self.weight) * self.stream_ratio()
        value = self.rows(v, consumer)
        return value if self.norm_bias_gate is None else value * self.norm_bias_gate

    def stream_ratio(self) -> torch.Tensor:
        """RMS (std for LayerNorm) of the written stream over the donor's, for an isotropic donor stream:
        ||W||_F / sqrt(N2), or with both sides centred, ||C2 W C1||_F / sqrt(N2 (N1 - 1) / N1)."""
        w = self.matrix(consumer=False)
        n2, n1 = w.shape
        if not self.layer_norm:
            return w.norm() / n2 ** 0.5
        centred = w - w.mean(dim=0, keepdim=True) - w.mean(dim=1, keepdim=True) + w.mean()
        return centred.norm() / (n2 * (n1 - 1) / n1) ** 0.5


def _cheaper_order(rows: tuple[int, int, int], cols: tuple[int, int, int]) -> tuple[bool, int]:
    """For P_rows @ w @ C_cols^T with expansions given as (units out, units in, block): whether
    expanding rows first is cheaper, and the multiply-adds of the cheaper order. Expanding dim 0
    mixes whole blocks: units out x units in x block x columns."""
    (rows_out, rows_in, rows_block), (cols_out, cols_in, cols_block) = rows, cols

    def rows_cost(n_cols):
        return rows_out * rows_in * rows_block * n_cols

    def cols_cost(n_rows):
        return n_rows * cols_out * cols_in * cols_block

    rows_first = rows_cost(cols_in * cols_block) + cols_cost(rows_out * rows_block)
    cols_first = cols_cost(rows_in * rows_block) + rows_cost(cols_out * cols_block)
    return rows_first <= cols_first, min(rows_first, cols_first)


def _expand_both(w: torch.Tensor, rows: Expansion, cols: Expansion) -> torch.Tensor:
    """rows.P @ w @ cols.C^T, multiplying in the cheaper order (e.g. columns first for the MLP's down
    projection, whose input side grows more than its output side): same result, fewer FLOPs."""
    rows_first, _ = _cheaper_order((*rows.weight.shape, rows.block), (*cols.weight.shape, cols.block))
    return cols.cols(rows.rows(w)) if rows_first else rows.rows(cols.cols(w))


def generation_flops(plan: GrowthPlan, adapter: Adapter, vocab_size: int) -> int:
    """Matrix-multiply FLOPs of generating the whole target once (depth blends and expansions; the
    elementwise scalings are ignored, as in pipeline/flops.py). Backward costs twice this."""
    d, t = plan.donor, plan.target
    dims = {"residual": (t.hidden, d.hidden, 1), "q_heads": (t.heads, d.heads, d.head_dim),
            "k_heads": (t.kv_heads, d.kv_heads, d.head_dim), "v_heads": (t.kv_heads, d.kv_heads, d.head_dim),
            "ffn": (t.ffn, d.ffn, 1)}
    per_layer = 0
    for key in adapter.layer_keys():
        module, kind = key.split(".")
        row_role, col_role = LAYER_ROLES[module]
        if row_role == "head":  # head norms are blended over depth, never expanded
            per_layer += 2 * d.layers * d.head_dim
            continue
        rows_out, rows_in, block = dims[row_role]
        if kind == "weight" and col_role is not None:
            cols_in, cols_block = dims[col_role][1:]
            donor_numel = rows_in * block * cols_in * cols_block
            expand = _cheaper_order(dims[row_role], dims[col_role])[1]
        else:
            donor_numel = rows_in * block
            expand = rows_out * rows_in * block
        per_layer += 2 * (d.layers * donor_numel + expand)  # depth blend, then width
    if plan.width_init == "aki":
        per_layer *= 2  # new units blend the next donor layers: a second generation
    # embeddings and head expand their columns; the final norm's weight (and bias) are expanded vectors
    global_rows = (vocab_size * (1 if adapter.tied_head else 2) + (t.max_positions if "pos" in adapter.global_names else 0)
                   + (2 if "final_norm.bias" in adapter.global_names else 1))
    return t.layers * per_layer + 2 * global_rows * d.hidden * t.hidden


class FrozenDonor(nn.Module):
    """Donor tensors the operator reads but never trains, frozen. Buffers, not parameters: every rank
    keeps the whole (small) donor, so ZeRO-3 neither partitions it nor gathers it for each generated
    layer, and checkpoints do not store it (it is read from grow.donor). Kept in fp32 so that an
    export in fp32 is exact; a cast to the operator's dtype (the engine casts parameters, e.g. to
    bf16, not buffers) is made once and kept, not made again in each of a step's generations."""

    def __init__(self, tensors: dict[str, torch.Tensor], copy: bool = True):
        """copy=False takes fp32 `tensors` as they are: only for tensors nothing else holds. A donor
        checkpoint's tensors may be views of one storage holding the whole file, which a view kept
        here would keep alive (seen: +0.43 GB per rank in training)."""
        super().__init__()
        for key, value in tensors.items():
            value = value.float()
            self.register_buffer(_attr(key), value.clone() if copy else value, persistent=False)
        self._casts: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def __contains__(self, key: str) -> bool:
        return hasattr(self, _attr(key))

    def get(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        fp32 = getattr(self, _attr(key))
        if dtype == fp32.dtype:
            return fp32
        cast = self._casts.get((key, dtype))
        if cast is None or cast.device != fp32.device:  # buffers may have moved since
            cast = self._casts[(key, dtype)] = fp32.to(dtype)
        return cast


def donor_layer_stacks(layers: list[dict[str, torch.Tensor]]) -> FrozenDonor:
    """The donor's layer weights stacked over layers per canonical key (taken out of `layers`)."""
    return FrozenDonor({key: torch.stack([layer.pop(key) for layer in layers]) for key in list(layers[0])},
                       copy=False)  # the stacks are new tensors


def _attr(key: str) -> str:
    return key.replace(".", "__")


class LayerGenerator(nn.Module):
    """Generates one target layer: its depth coefficients and per-layer expansions are its own
    parameters; it reads the global residual expansion and the donor stacks (shared)."""

    def __init__(self, depth: dict[str, torch.Tensor], expansions: dict[str, Expansion],
                 residual: Expansion, donor: FrozenDonor, adapter: Adapter,
                 depth_new: dict[str, torch.Tensor] | None = None, module_factors: dict[str, float] | None = None):
        super().__init__()
        self.module_factors = module_factors or {}  # constant factors on whole modules (qk_factor)
        self.depth = nn.ParameterDict({k: nn.Parameter(v.clone()) for k, v in depth.items()})
        # bert2BERT-AKI: weights touching *new* units blend their own donor layers (the next ones)
        self.depth_new = None if depth_new is None else \
            nn.ParameterDict({k: nn.Parameter(v.clone()) for k, v in depth_new.items()})
        self.expansions = nn.ModuleDict(expansions)
        self._shared = (residual, donor)  # a tuple: not registered as submodules here
        self.adapter = adapter

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self._shared[0].parameters())

    def _expansion(self, role: str) -> Expansion:
        return self._shared[0] if role == "residual" else self.expansions[role]

    def _generate(self, key: str, depth: nn.ParameterDict) -> torch.Tensor:
        residual, donor = self._shared
        module, kind = key.split(".")
        coefficients = depth_coefficients_of(depth, module)
        blended = torch.einsum("j,j...->...", coefficients, donor.get(key, coefficients.dtype))
        if module in NORMS:
            return residual.norm_vector(blended, kind)
        row_role, col_role = LAYER_ROLES[module]
        if row_role == "head":
            return blended
        rows = self._expansion(row_role)
        if kind == "weight" and col_role is not None:
            return _expand_both(blended, rows, self._expansion(col_role))
        return rows.rows(blended)  # biases, and norm gains over all heads (copied with their heads)

    def _old_units(self, key: str, shape: torch.Size) -> torch.Tensor:
        """Mask of the entries that involve only the donor's own units (first copies)."""
        module, kind = key.split(".")
        row_role, col_role = LAYER_ROLES[module]
        if row_role == "head":  # a head norm's gains serve old and new heads alike
            return torch.ones(shape, dtype=torch.bool, device=self._shared[0].original.device)
        mask = self._expansion(row_role).original
        if len(shape) == 2:
            mask = mask[:, None] & self._expansion(col_role).original[None, :]
        return mask

    def forward(self) -> dict[str, torch.Tensor]:
        out = {}
        for key in self.adapter.layer_keys():
            value = self._generate(key, self.depth)
            if self.depth_new is not None:
                mask = self._old_units(key, value.shape)
                value = torch.where(mask, value, self._generate(key, self.depth_new))
            factor = self.module_factors.get(key.split(".")[0])
            out[key] = value if factor is None else value * factor
        return out


class GlobalGenerator(nn.Module):
    """Embeddings, final norm and LM head: donor tensors (frozen) expanded by the residual expansion."""

    def __init__(self, donor_globals: dict[str, torch.Tensor], residual: Expansion, adapter: Adapter,
                 positions: int, embedding_factor: float = 1.0):
        super().__init__()
        self.positions = positions
        self.embedding_factor = embedding_factor
        self.donor = FrozenDonor(donor_globals)
        self._shared = (residual,)
        self.adapter = adapter

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self._shared[0].parameters())

    def forward(self, key: str) -> torch.Tensor:
        """The target's global tensor `key`, as its HF model holds it."""
        residual = self._shared[0]
        donor = self.donor.get(key, residual.weight.dtype)
        if key == "pos":  # a residual writer: columns are the residual stream
            return residual.cols(donor[:self.positions], consumer=False)
        if key == "embed":  # Gemma scales lookups by sqrt(width): the matrix undoes the change
            return residual.cols(donor, consumer=False) * self.embedding_factor
        if key == "head":  # reads the final normed stream
            return residual.cols(donor, consumer=True)
        # final norm: with a tied head the head (= expanded embedding) cannot carry the consumer
        # scale (nor undo the embedding factor), so the final norm's output takes it instead.
        gain = residual.norm_vector(donor, key.split(".")[1], consumer=self.adapter.tied_head)
        if self.adapter.tied_head and key == "final_norm.weight":
            gain = gain / self.embedding_factor
        return self.adapter.export_global(key, gain)


@dataclass
class OperatorInit:
    """The operator's initial trainable values (fp32), from the plan alone (init.py)."""
    residual: ExpansionInit
    layer_expansions: list[dict[str, ExpansionInit]]  # per target layer: q_heads, k_heads, v_heads, ffn
    depth: dict[str, torch.Tensor]  # module type (or SHARED) -> L2 x L1
    depth_new: dict[str, torch.Tensor] | None = None  # AKI: the new units' depth blend

    def named_values(self):
        """(name, value) pairs named as GrowthOperator.named_parameters() names its trainable ones."""
        def expansion(prefix, init: ExpansionInit):
            for name in ("weight", "scale", "writer", "norm_bias_gate"):
                if getattr(init, name) is not None:
                    yield f"{prefix}.{name}", getattr(init, name)
        yield from expansion("residual", self.residual)
        for i, expansions in enumerate(self.layer_expansions):
            for k, w in self.depth.items():
                yield f"layers.{i}.depth.{k}", w[i]
            for k, w in (self.depth_new or {}).items():
                yield f"layers.{i}.depth_new.{k}", w[i]
            for role, init in expansions.items():
                yield from expansion(f"layers.{i}.expansions.{role}", init)


def operator_init(plan: GrowthPlan, adapter: Adapter) -> OperatorInit:
    d, t = plan.donor, plan.target
    gen = torch.Generator().manual_seed(plan.seed)
    residual = width_init(plan.width_init, d.hidden, t.hidden, gen,
                          residual_norm="layer" if adapter.layer_norm else "rms")
    q_src, kv_src = head_sources(d.heads, d.kv_heads, t.heads, t.kv_heads)
    layers = []
    for _ in range(t.layers):
        kv = [width_init(plan.width_init, d.kv_heads, t.kv_heads, gen, kv_src) for _ in range(2)]
        layers.append({
            "q_heads": width_init(plan.width_init, d.heads, t.heads, gen, q_src),
            "k_heads": ExpansionInit(kv[0].weight, None), "v_heads": ExpansionInit(kv[1].weight, None),
            "ffn": width_init(plan.width_init, d.ffn, t.ffn, gen),
        })
    keys = adapter.layer_modules if plan.depth_coefficients == "per_module" else (SHARED,)
    depth = {k: depth_init(plan.depth_init, d.layers, t.layers, gen, plan.new_layers) for k in keys}
    new = torch.tensor(new_layers(plan.depth_init, d.layers, t.layers, plan.new_layers))
    for k in adapter.identity_modules:  # identity layers add nothing to the residual
        if k in depth:
            depth[k][new] = 0.0
    depth_new = {k: next_layer(w) for k, w in depth.items()} if plan.width_init == "aki" else None
    return OperatorInit(residual, layers, depth, depth_new)


class GrowthOperator(nn.Module):
    """`init`: the initial values (default operator_init(plan, adapter)); pass them computed outside
    DeepSpeed's zero.Init, which would create torch.zeros/eye/tensor in the training dtype on the
    accelerator (rounding 1/3 through bf16) but leave torch.rand on the CPU."""

    def __init__(self, plan: GrowthPlan, adapter: Adapter, donor_globals: dict, donor_layers: list[dict],
                 init: OperatorInit | None = None):
        super().__init__()
        check_plan(plan, adapter)
        d, t = plan.donor, plan.target
        self.plan, self.adapter = plan, adapter
        init = operator_init(plan, adapter) if init is None else init
        self.residual = Expansion(init.residual, layer_norm=adapter.layer_norm)
        self.donor = donor_layer_stacks(donor_layers)
        self.globals = GlobalGenerator(donor_globals, self.residual, adapter, t.max_positions,
                                       adapter.embedding_factor(d.hidden, t.hidden))
        blocks = {"q_heads": d.head_dim, "k_heads": d.head_dim, "v_heads": d.head_dim, "ffn": 1}
        factor = qk_factor(plan, adapter)
        module_factors = {"q": factor, "k": factor} if factor != 1.0 else None
        # each generator owns its target layer's row of the depth matrices
        self.layers = nn.ModuleList(
            LayerGenerator({k: w[i] for k, w in init.depth.items()},
                           {role: Expansion(e, blocks[role]) for role, e in expansions.items()},
                           self.residual, self.donor, adapter,
                           None if init.depth_new is None else {k: w[i] for k, w in init.depth_new.items()},
                           module_factors)
            for i, expansions in enumerate(init.layer_expansions))

    def fan_in(self, name: str) -> int:
        """How many donor units (or layers) one coefficient of parameter `name` blends: Adam moves every
        coefficient by about the LR, so a generated weight made of k blended inputs moves by about k
        times the LR; the grow stage divides each parameter's LR by its fan-in to make the step size
        independent of the shapes (the rule muP uses for Adam on hidden weights)."""
        parts = name.split(".")
        if parts[-1] in ("scale", "norm_bias_gate"):  # one multiplier per target unit
            return 1
        if parts[0] == "layers" and parts[2] in ("depth", "depth_new"):
            return self.plan.donor.layers
        d = self.plan.donor
        role = "residual" if parts[0] == "residual" else parts[3]  # layers.<i>.expansions.<role>.weight
        return {"residual": d.hidden, "q_heads": d.heads, "k_heads": d.kv_heads, "v_heads": d.kv_heads,
                "ffn": d.ffn}[role]

    def depth_matrix(self, module: str) -> torch.Tensor:
        return torch.stack([depth_coefficients_of(layer.depth, module) for layer in self.layers])

    def global_keys(self) -> list[str]:
        return [k for k in ("embed", "pos", "final_norm.weight", "final_norm.bias", "head")
                if k in self.globals.donor]

    @torch.no_grad()
    def materialize(self):
        """Yield (hf_name, tensor) for the whole target, one layer at a time."""
        for key in self.global_keys():
            yield self.adapter.global_name(key), self.globals(key)
        for i, layer in enumerate(self.layers):
            prefix = self.adapter.layer_prefix(i)
            for name, value in self.adapter.export_layer(layer()).items():
                yield prefix + name, value
