"""Accounting and report of the growth benchmark (pipeline/bench/growth.py): pure functions from the
stages' metrics to curves, crossings, savings, a Markdown table and PNG plots.

An arm's curve is its validation loss against cumulative model FLOPs and training wall time, from the
stages' own counters (`progress/model_flops`: 6N + 12LHQT per token, plus weight generation in the
grow stage, pipeline/grow.py; `perf/train_seconds`: time in training steps, not in validation or
saving). A grown arm's curve runs through operator training (x from 0) and then the target's
training, shifted by what the operator cost. The donor's cost is kept apart:

    saving excluding the donor (LiGO's accounting)   1 - cost_to_target / scratch_cost_to_target
    saving including the donor (G_stack's)           1 - (cost_to_target + donor_cost) / scratch_cost_to_target

where cost_to_target is where the curve first reaches the scratch arm's final validation loss (same
seed), interpolated linearly between the two evaluations around the crossing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

CLIMB_STEPS = 100  # the climb: the highest validation loss over the target's first steps above its step-0 loss


@dataclass
class Curve:
    """Validation points of one arm and seed, in order; flops and seconds are cumulative."""
    flops: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    operator_flops: float = 0.0  # spent training a growth operator before the target's training
    steps: list[int] = field(default_factory=list)  # the stage's step of each point
    target_from: int = 0  # index of the target's step-0 point (after any operator points)
    final_tasks: dict = field(default_factory=dict)  # downstream scores at the end ("<task>/<metric>"), if evaluated

    @classmethod
    def from_records(cls, records: list[dict], flops_offset: float = 0.0, seconds_offset: float = 0.0) -> "Curve":
        points = [r for r in records if "val/loss" in r]
        evaluated = [r for r in records if any(k.startswith("eval/") for k in r)]
        final_tasks = {k[len("eval/"):]: v for k, v in (evaluated[-1] if evaluated else {}).items()
                       if k.startswith("eval/") and "/donor_" not in k}
        return cls([flops_offset + r["progress/model_flops"] for r in points],
                   [seconds_offset + r["perf/train_seconds"] for r in points], [r["val/loss"] for r in points],
                   steps=[r["step"] for r in points], final_tasks=final_tasks)

    def then(self, other: "Curve") -> "Curve":
        """This curve (operator training) followed by `other` (the target's training)."""
        return Curve(self.flops + other.flops, self.seconds + other.seconds, self.loss + other.loss, self.flops[-1],
                     self.steps + other.steps, len(self.loss), other.final_tasks)

    def climb(self) -> float:
        """How far the target's validation loss rises above its step-0 value in its first CLIMB_STEPS
        steps (0 if it never does): what re-warming a trained start costs."""
        window = [loss for loss, step in zip(self.loss[self.target_from:], self.steps[self.target_from:])
                  if step <= CLIMB_STEPS]
        return max(window) - window[0]


def crossing(xs: list[float], losses: list[float], target: float) -> float | None:
    """The x at which the curve first reaches `target` (linear between evaluations), None if never."""
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0:
                return xs[0]
            x0, x1, y0 = xs[i - 1], xs[i], losses[i - 1]
            return x0 + (x1 - x0) * (y0 - target) / (y0 - loss)
    return None


def seed_result(curves: dict[str, Curve], donor_cost: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per arm: step-0 and final loss, FLOPs and seconds to the scratch arm's final loss, and the savings
    excluding and including the arm's donor cost ({"flops": F, "seconds": S}, zero for scratch). Also the
    FLOPs saving if operator training were free: what the learned start alone is worth, apart from its price."""
    scratch = curves["scratch"]
    target = scratch.loss[-1]
    reference = {"flops": crossing(scratch.flops, scratch.loss, target),
                 "seconds": crossing(scratch.seconds, scratch.loss, target)}
    out = {}
    for arm, curve in curves.items():
        row = {"step0_loss": curve.loss[0], "climb": curve.climb(), "final_loss": curve.loss[-1], "target_loss": target,
               **{f"final {name}": value for name, value in curve.final_tasks.items()}}
        for axis in ("flops", "seconds"):
            reached = crossing(getattr(curve, axis), curve.loss, target)
            donor = donor_cost[arm][axis]
            row[f"{axis}_to_target"] = reached
            row[f"{axis}_saving_excl_donor"] = None if reached is None else 1 - reached / reference[axis]
            row[f"{axis}_saving_incl_donor"] = None if reached is None else 1 - (reached + donor) / reference[axis]
        reached = row["flops_to_target"]  # a start already below the target reaches it during the operator's steps
        row["flops_saving_free_operator"] = (None if reached is None
                                             else 1 - max(reached - curve.operator_flops, 0.0) / reference["flops"])
        out[arm] = row
    return out


def spread(values: list[float | None]) -> dict:
    """Mean, sample standard deviation, min and max over seeds; None where any seed is None (not reached)."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "min": None, "max": None, "values": values}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def summarize(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    """Seed statistics of every number `seed_result` gives, for the arms every seed ran."""
    arms = [arm for arm in per_seed[0] if all(arm in seed for seed in per_seed)]
    return {arm: {key: spread([seed[arm][key] for seed in per_seed]) for key in per_seed[0][arm]
                  if all(key in seed[arm] for seed in per_seed)} for arm in arms}


def _fmt(stat: dict, scale: float = 1.0, percent: bool = False, digits: int = 3) -> str:
    if stat["mean"] is None:
        reached = sum(v is not None for v in stat["values"])
        return f"not reached ({reached}/{len(stat['values'])} seeds)" if reached else "not reached"
    factor = 100.0 if percent else 1.0 / scale
    text = f"{stat['mean'] * factor:.1f}%" if percent else f"{stat['mean'] * factor:.{digits}g}"
    if len(stat["values"]) > 1:
        text += f" ± {stat['std'] * factor:.1f}" if percent else f" ± {stat['std'] * factor:.2g}"
    return text


def markdown_table(summary: dict[str, dict], descriptions: dict[str, str]) -> str:
    """One row per arm; mean ± sample std over seeds. Downstream scores (with eval.tasks and eval.interval)
    get a column each: the target's at the end of its training."""
    tasks = sorted({key for row in summary.values() for key in row if key.startswith("final ")})
    lines = ["| arm | what | step-0 val loss | climb | final val loss | PFLOPs to target | saving excl. donor | "
             "saving incl. donor | saving if the operator were free | train s to target | time saving excl. donor | "
             "time saving incl. donor |" + "".join(f" {key} |" for key in tasks),
             "|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(tasks)]
    for arm, row in summary.items():
        lines.append(" | ".join([
            f"| `{arm}`", descriptions.get(arm, ""), _fmt(row["step0_loss"], digits=4), _fmt(row["climb"], digits=2),
            _fmt(row["final_loss"], digits=4),
            _fmt(row["flops_to_target"], scale=1e15), _fmt(row["flops_saving_excl_donor"], percent=True),
            _fmt(row["flops_saving_incl_donor"], percent=True), _fmt(row["flops_saving_free_operator"], percent=True),
            _fmt(row["seconds_to_target"], digits=4),
            _fmt(row["seconds_saving_excl_donor"], percent=True),
            _fmt(row["seconds_saving_incl_donor"], percent=True),
            *(_fmt(row[key]) if key in row else "-" for key in tasks)]) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[Curve]], target_loss: float, axis: str, path) -> None:
    """Validation loss against `axis` ("flops" or "seconds"), one line per arm (mean over seeds at each
    evaluation) with a band from the lowest to the highest seed; the dashed line is the target."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for arm, seeds in curves.items():
        points = min(len(c.loss) for c in seeds)
        scale = 1e15 if axis == "flops" else 1.0
        xs = [statistics.fmean(getattr(c, axis)[i] for c in seeds) / scale for i in range(points)]
        per_point = [[c.loss[i] for c in seeds] for i in range(points)]
        line, = ax.plot(xs, [statistics.fmean(p) for p in per_point], label=arm, linewidth=1.5)
        if len(seeds) > 1:
            ax.fill_between(xs, [min(p) for p in per_point], [max(p) for p in per_point], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    ax.axhline(target_loss, color="black", linestyle="--", linewidth=1, label="target (scratch final)")
    ax.set_xlabel("model PFLOPs (operator training included, donor excluded)" if axis == "flops"
                  else "training wall time, s (operator training included, donor excluded)")
    ax.set_ylabel("validation loss")
    losses = [loss for seeds in curves.values() for c in seeds for loss in c.loss]
    ax.set_ylim(min(losses) - 0.05, min(max(losses), target_loss + 2.0) + 0.05)  # keep the crossing region readable
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
