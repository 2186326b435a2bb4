"""Lottery benchmark: do iterative-magnitude-pruning tickets match the dense model and beat the controls?

    python -m pipeline.bench lottery --config tiny --seeds 3 model.size=llama-nano    # ~30 min on 2 CPU cores

Runs the prune stage (pipeline/prune.py: dense, then per round the ticket and the random_prune and
random_reinit controls and, once, dense_rewound, all with the same steps) once per seed s, with
train.seed and data.order_seed of the recipe + s, each seed its own job. Reports per round and arm the
final validation loss as mean and sd over the seeds, and whether the ticket matches each dense
reference (dense; dense_rewound, the one trained with the rounds' protocol): its mean at most the
reference's mean plus its sd (the seed spread). Outputs in --out: seed<s>/ (prune run dirs) and seed<s>.log,
results.json, results.md, loss_vs_sparsity.png. Re-running the same command reuses finished rounds.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path

from pipeline.bench.jobs import run_stage_job, seeded_bench_arguments
from pipeline.config import ConfigError, load_config
from pipeline.lottery.report import add_deltas, plot_loss_vs_sparsity


def aggregate(per_seed: list[list[dict]]) -> list[dict]:
    """Rows (one per round and arm, in the prune summary's order) with the mean and sd over seeds and the
    tickets' verdicts."""
    rows = []
    for entries in zip(*per_seed):
        losses = [e["val_loss_final"] for e in entries]
        rows.append({"round": entries[0]["round"], "arm": entries[0]["arm"],
                     "sparsity": statistics.mean(e["sparsity"] for e in entries),
                     "val_loss_final": statistics.mean(losses),
                     "val_loss_sd": statistics.stdev(losses) if len(losses) > 1 else 0.0, "per_seed": losses,
                     "nonzero_parameters": entries[0]["nonzero_parameters"],
                     "parameters_dense_kernels": entries[0]["parameters_dense_kernels"]})
    add_deltas(rows)
    references = [r for r in rows if r["round"] == 0]  # dense, and dense_rewound when trained
    for row in rows:
        if row["arm"] == "ticket":
            for reference in references:  # within the reference's seed spread, or below
                row[f"matches_{reference['arm']}"] = (row["val_loss_final"]
                                                      <= reference["val_loss_final"] + reference["val_loss_sd"])
            controls = [r for r in rows if r["round"] == row["round"] and r["arm"] != "ticket"]
            row["below_every_control"] = all(row["val_loss_final"] < r["val_loss_final"] for r in controls)
    return rows


def markdown(rows: list[dict], seeds: int, command: str) -> str:
    references = [r["arm"] for r in rows if r["round"] == 0]
    lines = [f"Final validation loss, mean ± sd over {seeds} seed(s). Command: `{command}`", "",
             "| round | arm | sparsity | val loss | " + " | ".join(f"vs {a}" for a in references)
             + " | ticket matches " + " / ".join(references) + " | ticket below every control | nonzero params |",
             "|---|---|---|---|" + "---|" * len(references) + "---|---|---|"]
    for r in rows:
        verdicts = (" / ".join("yes" if r[f"matches_{a}"] else "no" for a in references)
                    + f" | {'yes' if r['below_every_control'] else 'no'}") if r["arm"] == "ticket" else " | "
        lines.append(f"| {r['round']} | {r['arm']} | {r['sparsity']:.3f} | {r['val_loss_final']:.4f} ± "
                     f"{r['val_loss_sd']:.4f} | " + " | ".join(f"{r[f'delta_vs_{a}']:+.4f}" for a in references)
                     + f" | {verdicts} | {r['nonzero_parameters']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args, overrides = seeded_bench_arguments("lottery", __doc__, "tiny", 3, argv)
    try:
        config = load_config(args.config, overrides)  # fail fast on a bad recipe
    except ConfigError as err:
        sys.exit(f"bench error: {err}")
    out = Path(args.out)
    per_seed = []
    for seed in range(args.seeds):
        run_dir = out / f"seed{seed}"
        print(f"[bench] seed {seed}: prune -> {run_dir} (log: {out}/seed{seed}.log)", flush=True)
        run_stage_job("prune", ["--config", args.config, "--resume", "auto", *overrides, f"run.dir={run_dir}",
                                f"train.seed={config.train.seed + seed}",
                                f"data.order_seed={config.data.order_seed + seed}"], args.ranks, out / f"seed{seed}.log")
        per_seed.append(json.loads((run_dir / "summary.json").read_text()))
    rows = aggregate(per_seed)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows, args.seeds, "python -m pipeline.bench lottery " + shlex.join(sys.argv[1:]))
    (out / "results.md").write_text(table)
    plot_loss_vs_sparsity(rows, out / "loss_vs_sparsity.png")
    print(table, flush=True)


if __name__ == "__main__":
    main()
