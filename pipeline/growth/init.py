"""Starting points for the growth operator: lossless growth and the known heuristics, written as
operator values. No value depends on the donor's weights, only on the shapes and the seed.

Depth (a matrix w in R^{L2 x L1} per module type; target layer i = sum_j w[i, j] * donor layer j):
  identity      lossless at any L1 -> L2: the donor's layers in order, and L2 - L1 new layers that start
                as exact identities. A pre-norm block adds attn(norm(x)) and mlp(norm(x)) to the residual
                stream, so a block whose residual writers (attention output and MLP down projections,
                with their biases) are zero adds nothing (Net2Net's identity layers; MSG and LEMON for
                transformers). Its readers (norms, q/k/v, up/gate) copy the donor layer it follows, so the
                writers get a useful gradient from the first step. Placement (`new_layers`): interleave
                (new layer k of n after donor layer floor((k + 1/2) (L1 - 1) / n): evenly in the gaps
                between donor layers), top, or middle.
  stack         G_stack / StackBERT: target layer i copies donor layer i mod L1.
  interpolate   each donor layer repeated in place: target layer i copies donor layer floor(i*L1/L2).
  midas         MIDAS-style: copies of the middle block are inserted after it (repeatedly if needed).
  noisy_stack   the official LiGO code's default: one-hot stack + U(0, 0.03) noise, rows renormalized.
For a shallower target (L2 < L1) every scheme but noisy_stack picks L2 evenly spaced donor layers.

Width: an expansion N1 -> N2 (operator.py) has a matrix P in R^{N2 x N1} (which donor units each target
unit is made of), a consumer scale b in R^{N2} (readers of the expanded space use diag(b) P) and, for
the residual stream only, an optional writer matrix (what the residual's producers use instead of P).
  lossless      the donor's function at any ratio (LEMON, Wang et al., ICLR 2024, arXiv 2310.07999):
                - attention heads and MLP units: each new unit copies a donor unit (Net2Net), and the
                  readers' columns of a unit's copies split the donor column in *unequal* shares that
                  sum to 1 (exact for any copy count; unequal, so copies diverge in training);
                - residual stream: new units are written as zero under RMSNorm (writer rows 0; RMS over
                  D2 of a zero-padded stream is sqrt(D1/D2) times the donor's, absorbed by the gains and
                  by scaling the norm eps by D1/D2), or as the mean of the old units under LayerNorm
                  (LEMON's average expansion: the mean is unchanged and the new units add no variance;
                  the norms' new bias entries are 0 so they emit zeros). Readers' new columns copy a
                  donor unit's columns times a random factor in [0.5, 1.5]: they read zeros at first, and
                  give the new units gradients that differ in scale. Adam ignores the scale, so two new
                  units of one donor unit part only as fast as their factors differ (slowly when close).
  copy          Net2Net / HyperCloning: unit i < N1 keeps itself, unit i >= N1 copies unit (i - N1) mod N1;
                readers divide by the copy count. Lossless only when every unit has the same number of
                copies (integer ratios): unequal counts change the norms' statistics.
  aki           bert2BERT-AKI: copy, but every weight that touches a new unit comes from the next donor
                layer (the top layer uses itself): breaks the symmetry of plain copies, not function-preserving.
  random        the official LiGO code's default: new units are random convex combinations of all old
                units, old units are kept, b = 1 (no normalization).
Attention grows in whole heads (head_dim fixed), so head expansions act on head indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.errors import ConfigError
from pipeline.growth.schemes import DEPTH_SCHEMES, NEW_LAYER_PLACEMENTS, WIDTH_SCHEMES


def _evenly_spaced(l1: int, l2: int) -> list[int]:
    return [i * l1 // l2 for i in range(l2)]


def _midas_sources(l1: int, l2: int) -> list[int]:
    sources = list(range(l1))
    while len(sources) < l2:
        block = min(l2 - len(sources), len(sources))
        start = (len(sources) - block) // 2
        sources = sources[:start + block] + sources[start:start + block] + sources[start + block:]
    return sources


def identity_layout(l1: int, l2: int, placement: str) -> tuple[list[int], list[bool]]:
    """For depth_init=identity: the donor layer each target layer copies (a new layer: the one it follows,
    whose readers it copies) and which target layers are new."""
    new = l2 - l1
    if placement == "interleave":  # into the L1 - 1 gaps between donor layers, evenly
        after = [(2 * k + 1) * (l1 - 1) // (2 * new) for k in range(new)]
    elif placement == "top":
        after = [l1 - 1] * new
    elif placement == "middle":
        after = [(l1 - 1) // 2] * new
    else:
        raise ConfigError(f"unknown new-layer placement {placement!r}; choose one of {NEW_LAYER_PLACEMENTS}")
    sources, is_new = [], []
    for j in range(l1):
        count = 1 + after.count(j)
        sources += [j] * count
        is_new += [False] + [True] * (count - 1)
    return sources, is_new


def depth_sources(scheme: str, l1: int, l2: int, placement: str = "interleave") -> list[int]:
    """The donor layer each target layer copies (for the one-hot schemes)."""
    if scheme not in DEPTH_SCHEMES:
        raise ConfigError(f"unknown depth init {scheme!r}; choose one of {DEPTH_SCHEMES}")
    if l2 <= l1 and scheme != "noisy_stack":
        return _evenly_spaced(l1, l2)
    if scheme == "identity":
        return identity_layout(l1, l2, placement)[0]
    if scheme in ("stack", "noisy_stack"):
        return [i % l1 for i in range(l2)]
    if scheme == "interpolate":
        return _evenly_spaced(l1, l2)
    return _midas_sources(l1, l2)


def new_layers(scheme: str, l1: int, l2: int, placement: str = "interleave") -> list[bool]:
    """Which target layers start as identities (their residual writers' depth rows are zero)."""
    if scheme != "identity" or l2 <= l1:
        return [False] * l2
    return identity_layout(l1, l2, placement)[1]


def depth_init(scheme: str, l1: int, l2: int, generator: torch.Generator,
               placement: str = "interleave") -> torch.Tensor:
    w = torch.zeros(l2, l1)
    w[torch.arange(l2), torch.tensor(depth_sources(scheme, l1, l2, placement))] = 1.0
    if scheme == "noisy_stack":
        w = w + torch.rand(l2, l1, generator=generator) * 0.03
        w = w / w.sum(dim=1, keepdim=True)
    return w


def next_layer(w: torch.Tensor) -> torch.Tensor:
    """Depth coefficients moved one donor layer up (donor layer j -> min(j + 1, L1 - 1))."""
    l1 = w.shape[1]
    shift = torch.zeros(l1, l1)
    shift[torch.arange(l1), torch.clamp(torch.arange(l1) + 1, max=l1 - 1)] = 1.0
    return w @ shift


@dataclass
class ExpansionInit:
    """Initial values of one expansion (see operator.Expansion)."""
    weight: torch.Tensor  # P, N2 x N1
    scale: torch.Tensor | None  # consumer scale b, N2 (None: nothing reads this space, e.g. K/V heads)
    writer: torch.Tensor | None = None  # residual only: the producers' matrix, if not P
    norm_bias_gate: torch.Tensor | None = None  # residual with LayerNorm: new units' norm biases start at 0


def selection(sources: list[int], n1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot expansion from a source list and each donor unit's copy count. Every unit must be copied."""
    p = torch.zeros(len(sources), n1)
    p[torch.arange(len(sources)), torch.tensor(sources)] = 1.0
    copies = p.sum(dim=0)
    if (copies == 0).any():
        raise ConfigError(f"width expansion {n1} -> {len(sources)} leaves units {torch.nonzero(copies == 0).flatten().tolist()} "
                          f"uncopied")
    return p, copies


def copy_sources(n1: int, n2: int) -> list[int]:
    return [i if i < n1 else (i - n1) % n1 for i in range(n2)]


def unequal_split(sources: list[int], n1: int) -> torch.Tensor:
    """Per target unit, its share of its donor unit's reader column. The c copies of a unit (in order,
    the donor's own first) take shares in proportion 2c-1, 2c-2, ..., c: they sum to 1 and differ by at
    least 1/(2c-1) of the column, so the copies get clearly different gradients (random shares can come
    out nearly equal and leave a pair almost symmetric)."""
    copies = torch.bincount(torch.tensor(sources), minlength=n1).tolist()
    seen = [0] * n1
    shares = []
    for s in sources:
        c = copies[s]
        shares.append((2 * c - 1 - seen[s]) / (c * (3 * c - 1) / 2))
        seen[s] += 1
    return torch.tensor(shares)


def width_init(scheme: str, n1: int, n2: int, generator: torch.Generator, sources: list[int] | None = None,
               residual_norm: str | None = None) -> ExpansionInit:
    """`sources`: the donor unit each target unit copies (default copy_sources). `residual_norm`: "rms"
    or "layer" for the residual stream's expansion (lossless treats the residual differently)."""
    sources = sources if sources is not None else copy_sources(n1, n2)
    if scheme in ("copy", "aki"):
        p, copies = selection(sources, n1)
        return ExpansionInit(p, 1.0 / copies[torch.tensor(sources)])
    if scheme == "random":
        new = torch.rand(n2 - n1, n1, generator=generator)
        return ExpansionInit(torch.cat([torch.eye(n1), new / new.sum(dim=1, keepdim=True)]), torch.ones(n2))
    if scheme != "lossless":
        raise ConfigError(f"unknown width init {scheme!r}; choose one of {WIDTH_SCHEMES}")
    p, _ = selection(sources, n1)
    if residual_norm is None:
        return ExpansionInit(p, unequal_split(sources, n1))
    is_new = torch.arange(n2) >= n1
    readers = torch.where(is_new, 0.5 + torch.rand(n2, generator=generator), torch.ones(n2))
    writer = torch.cat([torch.eye(n1), torch.full((n2 - n1, n1), 1.0 / n1 if residual_norm == "layer" else 0.0)])
    gate = (~is_new).float() if residual_norm == "layer" else None
    return ExpansionInit(p, readers, writer, gate)


def head_sources(q1: int, kv1: int, q2: int, kv2: int) -> tuple[list[int], list[int]]:
    """Copy sources for KV groups and query heads such that every target query head reads the copy of
    its donor head's KV group (so attention stays exact), and every donor head is copied at least once.

    Target KV group g copies donor group g mod kv1 (old groups keep their place). The query heads of
    target group g take, in turn, the query heads of the donor group it copies."""
    per_group1, per_group2 = q1 // kv1, q2 // kv2
    kv_sources = copy_sources(kv1, kv2)
    q_sources = []
    for g, source_group in enumerate(kv_sources):
        occurrence = g // kv1  # how many earlier target groups copied the same donor group
        for j in range(per_group2):
            q_sources.append(source_group * per_group1 + (occurrence * per_group2 + j) % per_group1)
    missing = sorted(set(range(q1)) - set(q_sources))
    if missing:
        raise ConfigError(f"cannot map attention heads {q1} query / {kv1} KV -> {q2} query / {kv2} KV: donor query "
                          f"heads {missing} would be dropped; give the target at least "
                          f"ceil({per_group1}/{per_group2}) x {kv1} KV heads or more query heads per KV head")
    return q_sources, kv_sources


def original_units(p: torch.Tensor) -> torch.Tensor:
    """For each target unit: is it the first copy of a donor unit? (one-hot rows; for blended rows,
    the first N1 units, which the random expansion keeps as the identity)."""
    n2, n1 = p.shape
    # device given: inside DeepSpeed's zero.Init torch.arange/full default to the accelerator, p stays on the CPU
    units = torch.arange(n2, device=p.device)
    if not ((p == 0) | (p == 1)).all() or not (p.sum(dim=1) == 1).all():
        return units < n1
    sources = p.argmax(dim=1)
    first = torch.full((n1,), n2, device=p.device).scatter_reduce(0, sources, units, reduce="amin")
    return units == first[sources]


def equal_copies(sources: list[int], n1: int) -> bool:
    return len(set(torch.bincount(torch.tensor(sources), minlength=n1).tolist())) == 1
