"""AdamW's state through growth: the donor's moments mapped into the grown model, with the
per-coordinate LR scales that make the grown model's first AdamW step the donor's own step.

Where this is exact: the lossless start as is (grow.steps=0, depth_init=identity with at least the
donor's depth, width_init=lossless), for RMSNorm families at any width and for LayerNorm families
(GPT-2) when the residual width is kept. Every target coordinate e is then either *inherited*,
    W_t[e] = a_e * W_d[s(e)]          (a donor coordinate s(e) times a factor a_e),
with the target's loss a function of the donor's weights that equals the donor's loss, or *new* (new
residual units, new layers: nothing in the donor). Derivation, for a matrix whose rows are units of a
width expansion R and whose columns are units of C (pipeline/growth/operator.py), each target unit i
copying donor unit s(i):
  - A unit's value is its producer factor p times the donor unit's (p = 1 for copies and old residual
    units, 0 for lossless RMSNorm's new residual units); its readers read it with a consumer factor c
    (the share of a split column: c sums to 1 over a unit's copies; 1 for old residual units).
  - So W_t[i, j] = p_R(i) c_C(j) W_d[s(i), s(j)]: a = p_R c_C.
  - Its gradient is (gradient at output unit i) x (input unit j) = c_R(i) g_out,d[s(i)] * p_C(j) x_d[s(j)]:
    g_t[e] = k_e g_d[s(e)] with k = c_R p_C. (The residual stream's old units get the donor's gradient:
    the RMS over the padded stream is sqrt(D1/D2) times the donor's, which the norm gains and eps absorb.)
  - AdamW's update m/sqrt(v) is invariant to the gradient's scale: with m_t = k m_d and v_t = k^2 v_d
    the target's Adam direction at e equals the donor's at s(e) now and at every later step (its
    gradients keep the factor k). The donor's weight moves by lr * u, the target's must move by
    a * lr * u to stay a * W_d: the LR scale at e is a. Decoupled weight decay needs no scale (it
    shrinks both by the same factor), so pipeline.engine.AdamW scales only the Adam term.
  Examples: a split reader column (o, down) has k = 1 and LR scale = its share; a copied writer row
  (q, up, gate) has k = its reader's share and LR scale 1; a norm gain, scaled by r = sqrt(D1/D2) at
  growth, has k = 1/r and LR scale r. K/V heads are read by several query heads: a KV group's gradient
  is the sum over its query heads, a multiple of the donor group's only if every donor query head of
  that group has the same total share inside it (true for this pipeline's head layout unless KV groups
  are copied with unequal query shares; otherwise the map is refused as inexact).
New coordinates get zero moments and LR scale 1 (marked in the file; train.continued.new_units_lr_scale
sets their factor, which the train stage fades in over train.continued.new_units_warmup_steps). The step
count is the donor's.

Exact, and yet the copies diverge: with new units held still, the exact LR scales keep the copies of
a unit in lockstep forever (their rows' gradients keep a fixed ratio, which Adam's update ignores, and
their split reader columns keep their shares' ratio), so the grown model would never use its extra
width. Trained (faded in by default, then at the peak LR), the new residual units break that: their writer rows of
the copies' reader columns (down, o) start at zero and take equal absolute steps, not steps in the
shares' ratio, so the copies' gradients part after the first step (tests/test_grown_optimizer.py
measures it). Without new residual units (the residual width kept) the copies part only without the LR
scales (train.init_optimizer=moments: the donor's moments, plain LR).

LiGO's trained operator (grow.steps > 0) blends donor coordinates; the map is then not exact and no
moments are written (the train stage warms the moments up instead, train.continued.moment_warmup_steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.growth.adapters import LAYER_ROLES, NORMS, QK_NORMS, Adapter
from pipeline.growth.init import ExpansionInit, identity_layout
from pipeline.growth.operator import GrowthPlan, OperatorInit


@dataclass
class Units:
    """A width expansion, per target element (heads expanded to head_dim elements)."""
    source: torch.Tensor  # donor element each target element copies
    value: torch.Tensor  # producer factor p: the element's value is p times the donor's
    reads: torch.Tensor  # consumer factor c: how its readers scale it
    grad: torch.Tensor  # gradient factor: its gradient is this times the donor's
    inherited: torch.Tensor  # bool: has a donor counterpart


def _elements(t: torch.Tensor, block: int) -> torch.Tensor:
    return t.repeat_interleave(block)


def _units(init: ExpansionInit, block: int, grad: torch.Tensor | None = None) -> Units:
    p = init.weight
    source_unit = p.argmax(dim=1)
    source = (source_unit[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
    if init.writer is not None:  # the residual stream: old units are the donor's, new ones are not
        rows = init.writer
        inherited = ((rows == 0) | (rows == 1)).all(dim=1) & (rows.sum(dim=1) == 1)  # one-hot rows
        value = inherited.float()
    else:
        inherited, value = torch.ones(len(p), dtype=torch.bool), torch.ones(len(p))
    reads = torch.ones(len(p)) if init.scale is None else init.scale
    grad = reads if grad is None else grad
    return Units(source, _elements(value, block), _elements(reads, block), _elements(grad, block),
                 _elements(inherited, block))


def kv_gradient_factors(q: ExpansionInit, kv: ExpansionInit, q_per_kv: int, donor_q_per_kv: int) -> torch.Tensor | None:
    """Per target KV group: its gradient over the donor group's, if it is a multiple (None if not).
    Group g's gradient sums its query heads' contributions, each scaled by that head's share."""
    q_source, kv_source = q.weight.argmax(dim=1), kv.weight.argmax(dim=1)
    factors = []
    for g, donor_group in enumerate(kv_source.tolist()):
        heads = range(g * q_per_kv, (g + 1) * q_per_kv)
        totals = {h: 0.0 for h in range(donor_group * donor_q_per_kv, (donor_group + 1) * donor_q_per_kv)}
        for u in heads:
            totals[int(q_source[u])] += float(q.scale[u])
        if max(totals.values()) - min(totals.values()) > 1e-6:
            return None
        factors.append(next(iter(totals.values())))
    return torch.tensor(factors)


def exactness_problem(plan: GrowthPlan, adapter: Adapter, init: OperatorInit, operator_steps: int) -> str | None:
    """Why the donor's moments cannot be mapped exactly into this start (None: they can)."""
    d, t = plan.donor, plan.target
    if operator_steps:
        return f"grow.steps={operator_steps}: the trained operator blends donor weights"
    if plan.depth_init != "identity" or t.layers < d.layers:
        return f"depth_init={plan.depth_init} with {d.layers} -> {t.layers} layers changes the donor's function"
    if plan.width_init != "lossless":
        return f"width_init={plan.width_init} is not the lossless start"
    if adapter.layer_norm and t.hidden != d.hidden:
        return ("LayerNorm re-centres the residual stream over its new units, so the old units' gradients "
                "differ from the donor's (only a LayerNorm family's MLP and depth grow exactly)")
    if adapter.embedding_factor(d.hidden, t.hidden) != 1.0:
        return ("the embedding lookups are scaled by sqrt(width) (Gemma), so the grown embedding's gradient "
                "and step differ from the donor's by that factor")
    if set(QK_NORMS) & set(adapter.layer_modules) and t.hidden != d.hidden:
        return ("the q and k projections are scaled to meet the q/k norms' rescaled eps (operator.qk_factor), "
                "which the moment map does not model (Qwen3, Gemma 3, OLMo2)")
    for layer in init.layer_expansions:
        if kv_gradient_factors(layer["q_heads"], layer["k_heads"], t.heads // t.kv_heads, d.heads // d.kv_heads) is None:
            return "KV groups are copied with unequal query-head shares"
    return None


class MomentMap:
    """Maps canonical donor tensors (moments) to canonical target tensors, with LR scales and new masks."""

    def __init__(self, plan: GrowthPlan, adapter: Adapter, init: OperatorInit):
        d, t = plan.donor, plan.target
        self.adapter = adapter
        self.residual = _units(init.residual, 1)
        writer = init.residual.writer if init.residual.writer is not None else init.residual.weight
        self.stream_ratio = float(writer.norm() / t.hidden ** 0.5)  # sqrt(D1/D2) for lossless RMSNorm
        self.layers = []
        for layer in init.layer_expansions:
            kv_grad = kv_gradient_factors(layer["q_heads"], layer["k_heads"], t.heads // t.kv_heads,
                                          d.heads // d.kv_heads)
            self.layers.append({
                "residual": self.residual,
                "q_heads": _units(layer["q_heads"], d.head_dim),
                "k_heads": _units(layer["k_heads"], d.head_dim, kv_grad),
                "v_heads": _units(layer["v_heads"], d.head_dim, kv_grad),
                "ffn": _units(layer["ffn"], 1)})
        self.sources, self.new_layer = identity_layout(d.layers, t.layers, plan.new_layers)

    def _entry(self, key: str, roles: dict[str, Units], tied: bool = False):
        """(source index, a, k, inherited) of one canonical tensor: the index picks donor elements."""
        module, kind = key.split(".") if "." in key else (key, "weight")
        r = self.stream_ratio
        res = self.residual
        if key in ("embed", "pos"):  # (rows, D): the residual's producers, column-wise
            return (slice(None), res.source), res.value, res.grad, res.inherited
        if key == "head":  # untied head reads the final normed stream
            return (slice(None), res.source), res.reads, res.value, res.inherited
        if module in NORMS or module == "final_norm":
            reads = res.value if (module == "final_norm" and tied) else res.reads
            if kind == "weight":  # gains carry the stream ratio r (and the consumer scale under a tied head)
                a = r * (res.reads if (module == "final_norm" and tied) else torch.ones_like(res.reads))
                return (res.source,), a, reads / r, res.inherited
            return (res.source,), res.value, reads, res.inherited
        rows, cols = (roles[role] for role in LAYER_ROLES[module])
        if kind == "bias":
            return (rows.source,), rows.value, rows.grad, rows.inherited
        return ((rows.source[:, None], cols.source[None, :]), rows.value[:, None] * cols.reads[None, :],
                rows.grad[:, None] * cols.value[None, :], rows.inherited[:, None] & cols.inherited[None, :])

    def _map(self, index, a, k, inherited, exp_avg, exp_avg_sq) -> dict[str, torch.Tensor]:
        if len(index) == 2 and isinstance(index[0], slice):  # (rows, D): rows kept, columns picked
            pick = lambda x: x[:, index[1]]  # noqa: E731
            a, k, inherited = (v[None, :].expand(exp_avg.shape[0], -1) for v in (a, k, inherited))
        else:
            pick = lambda x: x[index]  # noqa: E731
        zero = torch.zeros(())
        return {"exp_avg": torch.where(inherited, k * pick(exp_avg), zero),
                "exp_avg_sq": torch.where(inherited, k * k * pick(exp_avg_sq), zero),
                "lr_scale": torch.where(inherited, a, torch.ones(())).expand_as(pick(exp_avg)).contiguous(),
                "new": (~inherited).expand_as(pick(exp_avg)).contiguous()}

    def global_tensors(self, key: str, donor: dict[str, dict[str, torch.Tensor]], positions: int) -> dict[str, torch.Tensor]:
        """donor: "exp_avg"/"exp_avg_sq" -> canonical globals. `positions`: the target's (learned
        position embeddings keep the donor's first rows)."""
        entry = self._entry(key, {}, tied=self.adapter.tied_head)
        m, v = donor["exp_avg"][key], donor["exp_avg_sq"][key]
        if key == "pos":
            m, v = m[:positions], v[:positions]
        return self._map(*entry, m, v)

    def layer_tensors(self, i: int, donor_layers: dict[str, list[dict]]) -> dict[str, dict[str, torch.Tensor]]:
        """Target layer i's canonical tensors: key -> {exp_avg, exp_avg_sq, lr_scale, new}."""
        source = donor_layers["exp_avg"][self.sources[i]]
        out = {}
        for key in source:
            index, a, k, inherited = self._entry(key, self.layers[i])
            if self.new_layer[i]:
                inherited = torch.zeros_like(inherited)
            out[key] = self._map(index, a, k, inherited, source[key], donor_layers["exp_avg_sq"][self.sources[i]][key])
        return out
