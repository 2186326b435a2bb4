"""Export any training checkpoint (ZeRO 0-3, fp32 or bf16) as a Hugging Face model dir.

    python -m pipeline.export --run runs/tiny/scratch                     # newest -> <run>/export/step<N>
    python -m pipeline.export --run runs/tiny/scratch --tag step100 --out /tmp/tiny-step100

Offline and single-process: no launcher, no process group, no GPU. The weights are the fp32 master
copy (DeepSpeed's zero_to_fp32 merges every rank's partitions), written as sharded safetensors with
the HF config the run trained (saved in each checkpoint) and the data's tokenizer; tied weights are
written once and re-tied by `from_pretrained`. The train stage writes <run>/hf at its end; this is for
every checkpoint before that, or a run that never finished.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pipeline import checkpoint
from pipeline.config import ConfigError
from pipeline.data.loader import write_data_position
from pipeline.data.tokenizer import load_tokenizer


def export(run_dir: Path, tag: str | None = None, out_dir: Path | None = None) -> Path:
    checkpoints = run_dir / "checkpoints"
    tag = tag or checkpoint.latest_tag(checkpoints)
    if tag is None or not (checkpoints / tag).is_dir():
        raise ConfigError(f"no checkpoint {tag or 'latest'} in {checkpoints}: pass --run <run dir> (and --tag step<N> "
                          f"to pick one of {sorted(p.name for p in checkpoints.glob('step*'))})")
    progress = checkpoint.read_progress(checkpoints, tag)
    if progress.get("stage") == "grow":  # the train stage's and the prune rounds' ("prune <round>") hold the model
        raise ConfigError(f"{checkpoints / tag} is a grow checkpoint: its trainable parameters are a growth operator, "
                          f"not a model; the grow stage writes its model to <run>/hf when it ends (resume it with "
                          f"--resume auto)")
    out_dir = out_dir or run_dir / "export" / tag
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty: choose another --out (nothing was overwritten)")
    model_config = AutoConfig.from_pretrained(checkpoints / tag)
    tokenizer = load_tokenizer(_tokenizer_path(progress))
    state = _untied(checkpoint.consolidated_state_dict(checkpoints, tag, progress["zero_stage"]))
    _check_names(state, model_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "data_start" in progress:  # where the checkpoint's data order ended, for a run started from the export
        write_data_position(out_dir, progress["data_key"], progress["config"]["data"]["order_seed"],
                            progress["data_start"] + progress["consumed_samples"])
    checkpoint.write_hf_files(state.items(), model_config, tokenizer, out_dir)
    return out_dir


def _tokenizer_path(progress: dict) -> str:
    from pipeline.data.packing import read_meta
    data_dir = Path(progress["config"]["data"]["output_dir"])
    meta = read_meta(data_dir)
    if meta is None:
        raise ConfigError(f"the run's data dir {data_dir} (which names its tokenizer) is gone: restore it")
    return meta["tokenizer"]


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep one name per tensor (safetensors refuses shared storage; from_pretrained re-ties)."""
    seen, out = set(), {}
    for name, value in state.items():
        if value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            out[name] = value
    return out


def _check_names(state: dict, model_config) -> None:
    with torch.device("meta"):
        expected = AutoModelForCausalLM.from_config(model_config).state_dict()
    tied = {"lm_head.weight"} if model_config.tie_word_embeddings else set()
    missing, unexpected = set(expected) - set(state) - tied, set(state) - set(expected)
    if missing or unexpected:
        raise ConfigError(f"the checkpoint's weights do not match its model config (missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}): the checkpoint is damaged")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="run directory (holds checkpoints/)")
    parser.add_argument("--tag", help="checkpoint to export, e.g. step100 (default: the newest complete one)")
    parser.add_argument("--out", type=Path, help="output dir (default: <run>/export/<tag>)")
    args = parser.parse_args(argv)
    try:
        out_dir = export(args.run, args.tag, args.out)
    except ConfigError as err:
        sys.exit(f"export error: {err}")
    print(f"[export] {args.run / 'checkpoints' / (args.tag or 'latest')} -> {out_dir}", flush=True)


if __name__ == "__main__":
    main()
