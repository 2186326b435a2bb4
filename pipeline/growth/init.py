"""Starting points for the growth operator: the known growth heuristics, written as operator values.

Depth (a matrix w in R^{L2 x L1}; target layer i = sum_j w[i, j] * donor layer j):
  stack         G_stack / StackBERT: target layer i copies donor layer i mod L1.
  interpolate   each donor layer repeated in place: target layer i copies donor layer floor(i*L1/L2).
  midas         MIDAS-style: copies of the middle block are inserted after it (repeatedly if needed).
  noisy_stack   the official LiGO code's default: one-hot stack + U(0, 0.03) noise, rows renormalized.
For a shallower target (L2 < L1) every scheme but noisy_stack picks L2 evenly spaced donor layers.

Width (an expansion N1 -> N2 = a matrix P in R^{N2 x N1} plus a consumer scale s in R^{N1}; producers
use P, consumers P diag(s), see operator.py):
  copy          Net2Net / HyperCloning: unit i < N1 keeps itself, unit i >= N1 copies unit (i - N1) mod N1;
                s = 1/copies (fan-in normalization), so the grown model computes the donor's function
                exactly when every unit has the same number of copies (integer width ratios).
  aki           bert2BERT-AKI: copy, but every weight that touches a new unit comes from the next donor
                layer (the top layer uses itself): breaks the symmetry of plain copies, not function-preserving.
  random        the official LiGO code's default: new units are random convex combinations of all old
                units, old units are kept, s = 1 (no normalization).
Attention grows in whole heads (head_dim fixed), so head expansions act on head indices.
"""

from __future__ import annotations

import torch

from pipeline.config import ConfigError

DEPTH_SCHEMES = ("stack", "interpolate", "midas", "noisy_stack")
WIDTH_SCHEMES = ("copy", "aki", "random")


def _evenly_spaced(l1: int, l2: int) -> list[int]:
    return [i * l1 // l2 for i in range(l2)]


def _midas_sources(l1: int, l2: int) -> list[int]:
    sources = list(range(l1))
    while len(sources) < l2:
        block = min(l2 - len(sources), len(sources))
        start = (len(sources) - block) // 2
        sources = sources[:start + block] + sources[start:start + block] + sources[start + block:]
    return sources


def depth_sources(scheme: str, l1: int, l2: int) -> list[int]:
    """The donor layer each target layer copies (for the one-hot schemes)."""
    if l2 <= l1 and scheme != "noisy_stack":
        return _evenly_spaced(l1, l2)
    if scheme in ("stack", "noisy_stack"):
        return [i % l1 for i in range(l2)]
    if scheme == "interpolate":
        return _evenly_spaced(l1, l2)
    if scheme == "midas":
        return _midas_sources(l1, l2)
    raise ConfigError(f"unknown depth init {scheme!r}; choose one of {DEPTH_SCHEMES}")


def depth_init(scheme: str, l1: int, l2: int, generator: torch.Generator) -> torch.Tensor:
    w = torch.zeros(l2, l1)
    w[torch.arange(l2), torch.tensor(depth_sources(scheme, l1, l2))] = 1.0
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


def selection(sources: list[int], n1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot expansion from a source list, with s = 1/copies. Every old unit must be copied."""
    p = torch.zeros(len(sources), n1)
    p[torch.arange(len(sources)), torch.tensor(sources)] = 1.0
    copies = p.sum(dim=0)
    if (copies == 0).any():
        raise ConfigError(f"width expansion {n1} -> {len(sources)} leaves units {torch.nonzero(copies == 0).flatten().tolist()} "
                          f"uncopied")
    return p, 1.0 / copies


def copy_sources(n1: int, n2: int) -> list[int]:
    return [i if i < n1 else (i - n1) % n1 for i in range(n2)]


def random_expansion(n1: int, n2: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    new = torch.rand(n2 - n1, n1, generator=generator)
    return torch.cat([torch.eye(n1), new / new.sum(dim=1, keepdim=True)]), torch.ones(n1)


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
    if not ((p == 0) | (p == 1)).all() or not (p.sum(dim=1) == 1).all():
        return torch.arange(n2) < n1
    sources = p.argmax(dim=1)
    first = torch.full((n1,), n2).scatter_reduce(0, sources, torch.arange(n2), reduce="amin")
    return torch.arange(n2) == first[sources]


def width_init(scheme: str, n1: int, n2: int, generator: torch.Generator,
               sources: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if scheme in ("copy", "aki"):
        return selection(sources if sources is not None else copy_sources(n1, n2), n1)
    if scheme == "random":
        return random_expansion(n1, n2, generator)
    raise ConfigError(f"unknown width init {scheme!r}; choose one of {WIDTH_SCHEMES}")
