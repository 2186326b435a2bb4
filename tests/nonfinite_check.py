"""Launched by tests/test_faults.py on 2 ranks: the train stage with the loss made NaN on rank 1 only
at the step indices in PIPELINE_TEST_NAN_STEPS; writes each rank's weight fingerprint after every step
to <out>.rank<r>."""

import json
import os
import sys

import torch

from pipeline.config import parse_stage_args
from pipeline.train import Trainer, TrainingHalted, stage_flags

out_path, *stage_args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
config, args = parse_stage_args("non-finite loss check", stage_args, stage_flags)
nan_steps = {int(s) for s in os.environ["PIPELINE_TEST_NAN_STEPS"].split(",")}


class PoisonedTrainer(Trainer):
    fingerprints = []

    def train_step(self, step):
        module = self.engine.module
        if self.rank == 1 and step in nan_steps:
            forward = module.forward

            def poisoned(*a, **k):
                out = forward(*a, **k)
                out.loss = out.loss * float("nan")
                return out
            module.forward = poisoned
        try:
            result = super().train_step(step)
        finally:
            module.__dict__.pop("forward", None)
        with torch.no_grad():  # ZeRO-2: every rank holds the full weights
            fingerprint = sum(p.double().abs().sum().item() for p in module.parameters())
        self.fingerprints.append({"step": step, "fingerprint": fingerprint, "skipped": result.skipped})
        return result


trainer = PoisonedTrainer(config, args.resume)
try:
    trainer.fit()
    outcome = "finished"
except TrainingHalted as err:
    outcome = f"halted: {err}"
with open(f"{out_path}.rank{trainer.rank}", "w") as f:
    json.dump({"outcome": outcome, "steps": trainer.fingerprints}, f)
from pipeline.engine import shutdown_distributed  # noqa: E402

shutdown_distributed()
