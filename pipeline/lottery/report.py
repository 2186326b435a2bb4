"""The prune run's summary: validation loss against sparsity for the tickets, the controls and the dense
model (summary.json, summary.md, loss_vs_sparsity.png), with each ticket's honest cost: unstructured
sparsity saves nothing on dense kernels, so the parameters and FLOPs the hardware runs stay the dense
ones; the nonzero counts are what a sparse kernel could exploit."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.config import Config
from pipeline.flops import training_flops_per_token
from pipeline.metrics import read_metrics
from pipeline.models.hf import HFWeights
from pipeline.models.sizes import resolve_shape


def summary_rows(run_dir: Path, rounds: list[dict], config: Config) -> list[dict]:
    dense = HFWeights(run_dir / "dense" / "hf")
    parameters = sum(math.prod(shape) for shape in dense.shapes.values())
    vocab = json.loads((dense.dir / "config.json").read_text())["vocab_size"]
    dense_flops = training_flops_per_token(resolve_shape(config.model), vocab, config.data.seq_len)
    rows = []
    for entry in rounds:
        losses = [r["val/loss"] for r in read_metrics(entry["dir"]) if "val/loss" in r]
        if entry["round"] == 0:  # dense, dense_rewound
            pruned, sparsity = 0, 0.0
        else:
            manifest = json.loads((run_dir / "masks" / f"{entry['name']}.json").read_text())
            pruned, sparsity = manifest["prunable"] - manifest["kept"], 1 - manifest["density"]
        rows.append({**entry, "sparsity": sparsity, "val_loss_final": losses[-1], "val_loss_best": min(losses),
                     "parameters_dense_kernels": parameters, "nonzero_parameters": parameters - pruned,
                     # a weight costs 6 FLOPs per token in forward + backward; pruned ones only on dense kernels
                     "train_flops_per_token_dense_kernels": dense_flops,
                     "train_flops_per_token_nonzero": dense_flops - 6 * pruned})
    add_deltas(rows)
    return rows


def add_deltas(rows: list[dict]) -> None:
    """delta_vs_<arm> for each dense reference (round 0: dense, dense_rewound if trained)."""
    for reference in [r for r in rows if r["round"] == 0]:
        for row in rows:
            row[f"delta_vs_{reference['arm']}"] = row["val_loss_final"] - reference["val_loss_final"]


def write_summary(run_dir: Path, rounds: list[dict], config: Config) -> list[dict]:
    rows = summary_rows(run_dir, rounds, config)
    (run_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    rewound = "delta_vs_dense_rewound" in rows[0]
    lines = ["| round | arm | sparsity | val loss (final) | best | vs dense |" + (" vs dense_rewound |" if rewound else "")
             + " nonzero params | params on dense kernels |", "|---|---|---|---|---|---|" + ("---|" if rewound else "") + "---|---|"]
    lines += [f"| {r['round']} | {r['arm']} | {r['sparsity']:.3f} | {r['val_loss_final']:.4f} | {r['val_loss_best']:.4f} | "
              f"{r['delta_vs_dense']:+.4f} |" + (f" {r['delta_vs_dense_rewound']:+.4f} |" if rewound else "")
              + f" {r['nonzero_parameters']:,} | {r['parameters_dense_kernels']:,} |" for r in rows]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")
    plot_loss_vs_sparsity(rows, run_dir / "loss_vs_sparsity.png")
    print("\n".join(lines), flush=True)
    return rows


def plot_loss_vs_sparsity(rows: list[dict], path: Path) -> None:
    """Final validation loss against sparsity per arm, the dense models (round 0) as lines; rows with a
    "val_loss_sd" (the benchmark's means over seeds) get error bars and bands around the dense lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for dense, color in zip((r for r in rows if r["round"] == 0), ("black", "gray")):
        ax.axhline(dense["val_loss_final"], color=color, linestyle="--", label=dense["arm"])
        if dense.get("val_loss_sd"):
            ax.axhspan(dense["val_loss_final"] - dense["val_loss_sd"], dense["val_loss_final"] + dense["val_loss_sd"],
                       color=color, alpha=0.1)
    for arm in dict.fromkeys(r["arm"] for r in rows if r["round"] > 0):
        points = [r for r in rows if r["arm"] == arm]
        ax.errorbar([r["sparsity"] for r in points], [r["val_loss_final"] for r in points],
                    yerr=[r.get("val_loss_sd", 0.0) for r in points], marker="o", capsize=3, label=arm)
    ax.set_xlabel("sparsity of the prunable weights")
    ax.set_ylabel("validation loss (final)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
