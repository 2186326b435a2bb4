"""The one place that builds DeepSpeed objects: distributed init, the DeepSpeed config dict,
ZeRO-3 partitioned model construction, optimizer + LR schedule, and the engine.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import resource
import socket
import sys
import typing
from contextlib import contextmanager
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.ops.adam import DeepSpeedCPUAdam
from transformers.integrations import HfDeepSpeedConfig

from pipeline.build_locks import clear_stale_build_locks
from pipeline.config import TrainConfig, check_batch_triad, load_deepspeed_json
from pipeline.errors import ConfigError
from pipeline.flops import layer_matmul_parameters
from pipeline.models.sizes import ModelShape
from pipeline.preflight import preflight
from pipeline.throughput import datasheet_tflops, measured_matmul_tflops


def init_distributed() -> tuple[int, int]:
    """Join the process group the `deepspeed` launcher set up, or a 1-rank group for plain `python`,
    and run the pre-flight check (pipeline/preflight.py)."""
    if "RANK" not in os.environ:  # not launched: without these DeepSpeed would try MPI discovery
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    accelerator = get_accelerator()
    accelerator.set_device(int(os.environ["LOCAL_RANK"]))  # before any collective: NCCL works on it
    clear_stale_build_locks(remove=os.environ["LOCAL_RANK"] == "0")  # the process group builds an op
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name())
    dist.barrier()  # every rank has now mapped every other rank's shared-memory segment
    _unlink_shm_segment(dist.get_rank())
    device = "cpu" if dist.get_backend() == "gloo" else accelerator.current_device_name()
    preflight(dist.get_rank(), dist.get_world_size(), device)
    return dist.get_rank(), dist.get_world_size()


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)


def return_freed_tensors_to_the_os(threshold: int = 1 << 20) -> None:
    """Serve every host allocation of at least `threshold` bytes from its own mmap, so that freeing it
    gives the memory back. glibc's malloc does that from 128 KiB, but raises the bar to the largest
    block freed so far (up to 32 MiB): after the first few freed weights, the gathered parameters,
    activations and partitions of several MiB come from the heap, and the holes they leave among
    long-lived tensors stay resident. Measured on the 318M-parameter ZeRO-3 fp32 train stage (2 CPU
    ranks, `pipeline.bench memory`): 7.13 GB peak per rank by default, 4.86 GB with 1 MiB, 5.4 GB
    with 4 MiB. The price is paid where tensors live in host memory (CPU training): fresh pages for
    every large allocation made steps ~20% slower there (15.8 s against 12.8 s), and at the tiny
    recipe's size (ZeRO-2, 1 rank) 1.45x slower (`pipeline.bench train_overhead`: 0.55 of a plain loop's
    tokens/s, 0.80 without it). So the stages call it under ZeRO-3 only, whose gathered parameters
    are what churns the heap. To trade memory back for speed set MALLOC_MMAP_THRESHOLD_ (bytes; or
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...) in the environment: it is then left as it is. Other
    C libraries than glibc are left alone."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(M_MMAP_THRESHOLD, threshold)


def _unlink_shm_segment(rank: int) -> None:
    """DeepSpeed's CPU shared-memory allreduce creates a ~70 MB segment per rank in /dev/shm and never
    removes it (deepspeed/ops/csrc/cpu/comm/shm.cpp), so every run leaks RAM until the machine is full.
    Once all ranks have mapped it, the name can go: the memory lives until the last process exits,
    crashes included."""
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}_{rank}"
    Path("/dev/shm", name).unlink(missing_ok=True)


def shutdown_distributed() -> None:
    """Leave the process group in step: exiting with live communication threads can abort the process."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def end_stage_process() -> typing.NoReturn:
    """Exit a stage that finished (every file written and closed) without interpreter finalization:
    ZeRO-3 objects that still hold gloo work handles can abort the process when finalization destroys
    them ("terminate called without an active exception", seen once in CI after a complete run)."""
    shutdown_distributed()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_config(train: TrainConfig, world_size: int, shape: ModelShape, swap_dir: Path | None = None) -> dict:
    """The shipped JSON (ZeRO stage, precision, ...) with its "auto" sizes filled for `shape`, an "auto"
    NVMe offload path set to `swap_dir` (the run's), plus the recipe-owned batch and clipping keys."""
    ds = load_deepspeed_json(train.deepspeed_config)
    zero = ds.get("zero_optimization", {})
    for key, value in zero.items():
        if value == "auto":
            zero[key] = auto_zero_size(key, shape)
    for key in ("offload_optimizer", "offload_param"):
        offload = zero.get(key, {})
        if offload.get("nvme_path") == "auto":
            if swap_dir is None:
                raise ConfigError(f"zero_optimization.{key}.nvme_path is \"auto\" (the run dir) but this tool has "
                                  f"no run dir: give a path")
            offload["nvme_path"] = str(swap_dir)
    ds.update(train_batch_size=check_batch_triad(train, world_size),
              train_micro_batch_size_per_gpu=train.micro_batch_size,
              gradient_accumulation_steps=train.grad_accum_steps,
              gradient_clipping=train.grad_clip,
              # our AdamW is torch's with a skippable step (below); DeepSpeed tests optimizers by exact type
              zero_allow_untested_optimizer=True)
    return ds


def auto_zero_size(key: str, shape: ModelShape) -> int:
    """ZeRO buffer and residency sizes (in elements) for a model of `shape`. DeepSpeed's defaults
    (reduce bucket 5e8 = 2 GB in fp32, 1e9 live parameters, reuse distance 1e9) are sized for large
    GPUs and keep every gathered parameter of a <1B model resident through forward and backward. As
    transformers' "auto": buckets of hidden^2, small tensors (< 10 hidden) not partitioned; and at most
    two blocks' parameters gathered at once (the one computing and the one prefetched), released after
    use unless reused within one block (activation checkpointing's recompute); and the optimizer
    stepping ZeRO-3's partition in sub-groups of two blocks (default 1e9: the whole partition at once,
    whose update temporaries are each as large as the partition)."""
    block = layer_matmul_parameters(shape) // shape.layers
    sizes = {"reduce_bucket_size": shape.hidden ** 2, "allgather_bucket_size": shape.hidden ** 2,
             "stage3_prefetch_bucket_size": int(0.9 * shape.hidden ** 2),
             "stage3_param_persistence_threshold": 10 * shape.hidden,
             "stage3_max_live_parameters": 2 * block, "stage3_max_reuse_distance": block,
             "sub_group_size": 2 * block}
    if key not in sizes:
        raise ConfigError(f"zero_optimization.{key}: \"auto\" is supported for {sorted(sizes)} only; give a number")
    return sizes[key]


def zero_stage(ds: dict) -> int:
    return ds.get("zero_optimization", {}).get("stage", 0)


@contextmanager
def model_construction(ds: dict):
    """Under ZeRO-3, models built by transformers' from_config/from_pretrained inside this context are
    partitioned as they are created (no rank ever holds the full model) and initialized correctly.

    transformers keeps only a weak reference to the HfDeepSpeedConfig, so it must stay alive here."""
    hf_ds_config = HfDeepSpeedConfig(ds) if zero_stage(ds) == 3 else None  # noqa: F841 (kept alive)
    yield


def partitioned_construction(ds: dict):
    """Under ZeRO-3, plain torch modules built inside are partitioned as each submodule is created
    (the growth operator of a billion-parameter target is never whole on one rank)."""
    return deepspeed.zero.Init(config_dict_or_path=ds, enabled=zero_stage(ds) == 3)


def warmup_cosine(train: TrainConfig):
    """LR multiplier for the optimizer step with 0-based index s: train.moment_warmup_steps steps at LR 0
    (AdamW only fills its moments: the weights stay bit-identical), then linear warmup that reaches the
    peak at the last warmup step, then cosine decay to min_lr_ratio at the final step."""
    hold = train.moment_warmup_steps

    def factor(s: int) -> float:
        if s < hold:
            return 0.0
        s -= hold
        if s < train.warmup_steps:
            return (s + 1) / train.warmup_steps
        decay_steps = max(train.steps - hold - train.warmup_steps - 1, 1)
        progress = min((s - train.warmup_steps) / decay_steps, 1.0)
        return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


EMBEDDING_NAMES = ("embed_tokens", "wte", "wpe")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; vectors (norms, biases, growth coefficients) and embeddings are not
    regularized towards zero. Shapes are read from ds_shape under ZeRO-3 (the local shape is empty)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            ndim = len(getattr(param, "ds_shape", param.shape))
            (no_decay if ndim < 2 or any(e in name for e in EMBEDDING_NAMES) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class AdamW(torch.optim.AdamW):
    """torch AdamW whose next update can be skipped, with optional per-coordinate LR scales.

    Skipping: DeepSpeed (ZeRO 0-3, bf16) calls the wrapped optimizer's step() on the fp32 master
    weights and copies them back, so returning early leaves weights and moments exactly as they were:
    the way to drop a step whose loss was not finite.

    `lr_scales` (id of a tensor this optimizer steps -> a tensor of its shape): that tensor's Adam
    update is multiplied coordinate-wise by the scale (decoupled weight decay is not: it shrinks by
    lr * weight_decay as usual). A grown model's split columns need this to take their donor's step
    (pipeline/growth/moments.py); set by pipeline.optimizer_state, never saved in checkpoints.
    `new_units` (same ids -> bool masks): the coordinates with no donor counterpart, whose scale
    `fade_in` sets to `new_units_lr_scale` times the trainer's fade-in factor (in place: no copy of
    the scales per step)."""
    skip_next_update = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_scales: dict[int, torch.Tensor] = {}
        self.new_units: dict[int, torch.Tensor] = {}
        self.new_units_lr_scale = 1.0

    def fade_in(self, factor: float) -> None:
        """The new coordinates' next updates at `factor` x new_units_lr_scale; at 1 the masks are freed."""
        for key, new in self.new_units.items():
            self.lr_scales[key].masked_fill_(new, self.new_units_lr_scale * factor)
        if factor == 1.0:
            self.new_units.clear()

    def step(self, closure=None):
        if self.skip_next_update:
            return None
        if not self.lr_scales:
            return super().step(closure)
        scaled = []  # stepped here; torch's step skips tensors without a gradient
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p) in self.lr_scales:
                    scaled.append((group, p, p.grad))
                    p.grad = None
        super().step(closure)
        for group, p, grad in scaled:
            self._scaled_update(group, p, grad, self.lr_scales[id(p)])
            p.grad = grad
        return None

    @torch.no_grad()
    def _scaled_update(self, group: dict, p: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor) -> None:
        """torch's AdamW update (amsgrad off) with the Adam term scaled by `scale`."""
        state = self.state[p]
        if not state:
            state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** step)).add_(group["eps"])
        p.addcdiv_(state["exp_avg"] * scale, denom, value=-group["lr"] / (1 - beta1 ** step))


class OffloadAdamW(DeepSpeedCPUAdam):
    """DeepSpeed's CPU Adam (AdamW mode) with the same skippable update: the optimizer DeepSpeed needs
    when ZeRO offloads the optimizer states (offload_optimizer), stepping each swapped-in sub-group."""
    skip_next_update = False

    def step(self, closure=None):
        if self.skip_next_update:
            return None
        return super().step(closure)


def offloads_optimizer(ds: dict) -> bool:
    return ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") != "none"


def single_rank_zero3_note(ds: dict, world_size: int) -> str | None:
    """ZeRO-3 on one rank partitions nothing and still pays its gathers around every layer: worth it
    there only to offload. None where that does not apply."""
    zero = ds.get("zero_optimization", {})
    offloads = any(zero.get(key, {}).get("device", "none") != "none" for key in ("offload_optimizer", "offload_param"))
    if zero_stage(ds) != 3 or world_size > 1 or offloads:
        return None
    return ("ZeRO-3 on a single rank partitions nothing and adds gathers around every layer (on the CPU ~41 ms "
            "per decoder layer per step, 2.5x ZeRO-2's step: benchmarks/2026-12-04-train-overhead-zero3.md); a "
            "ZeRO-2 config (zero2, zero2_bf16) trains the same model faster where its states (16 bytes per "
            "parameter) fit the device")


def swaps_optimizer_to_disk(ds: dict) -> bool:
    return ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "nvme"


def param_group_decays(engine) -> list[float]:
    return [group["weight_decay"] for group in engine.client_optimizer.param_groups]


def restore_param_group_settings(engine, decays: list[float], universal: bool) -> None:
    """After loading a checkpoint, each group's learning rate is the restored schedule's: ZeRO-3 with an
    offloaded optimizer restores the groups' LR of the step before (seen: a resumed run's first step
    at the previous step's LR). A universal checkpoint also gives every group group 0's settings
    (deepspeed/runtime/zero/stage3.py, load of universal optimizer state): put each group's weight
    decay (as built) back."""
    for group, decay, lr in zip(engine.client_optimizer.param_groups, decays, engine.lr_scheduler.get_last_lr()):
        if universal:
            group["weight_decay"] = decay
        group["lr"] = lr


def skip_next_update(engine, skip: bool) -> None:
    engine.client_optimizer.skip_next_update = skip


def new_units_fade_in(steps: int):
    """The new units' LR factor for the optimizer step with 0-based index s: linear from 1/steps at the
    first step to 1 at step `steps` (1 throughout with steps=0)."""
    return lambda s: min((s + 1) / steps, 1.0) if steps else 1.0


def fade_in_new_units(engine, factor: float) -> None:
    """Scale the next update of a grown model's new coordinates (AdamW.new_units) by `factor`; at 1 the
    fade-in is over and the masks are freed."""
    optimizer = engine.client_optimizer
    if getattr(optimizer, "new_units", None):  # none installed, or DeepSpeed's CPU Adam (offload)
        optimizer.fade_in(factor)


def build_engine(model: torch.nn.Module, train: TrainConfig, ds: dict, groups: list[dict] | None = None,
                 first_step: int = 0):
    """DeepSpeed engine around ``model`` with torch AdamW (no JIT-built op on CPU; DeepSpeed's CPU Adam
    when the optimizer is offloaded) and the LR schedule.
    `groups`: the optimizer's parameter groups (a group's own "lr" is its peak), default
    parameter_groups(). `first_step`: the run starts there, its schedule replayed from that step.

    The scheduler is handed to DeepSpeed so it is stepped with the optimizer and saved/restored in
    every checkpoint (a scheduler kept outside restarts from step 0 on resume)."""
    groups = parameter_groups(model, train.weight_decay) if groups is None else groups
    # offloaded optimizer states need DeepSpeed's CPU Adam (JIT-built on first use, ~80 s on CPU)
    optimizer = (OffloadAdamW if offloads_optimizer(ds) else AdamW)(groups, lr=train.lr, betas=(train.beta1, train.beta2),
                                                                    eps=1e-8)
    schedule = warmup_cosine(train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step + first_step))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds)
    if engine.zero_optimization_stage() == 3:
        _register_shared_parameters(engine.module)
    return engine


class WeightMasks:
    """Keeps masked-out (pruned) weights exactly zero while DeepSpeed trains: ZeRO 0-3, any precision.

    Built before the engine: it zeroes the pruned weights in the module, from which the optimizer's
    fp32 masters are copied. Then the pruned weights' gradients are zeroed before every update, so
    AdamW's moments stay zero, its update is zero and decoupled weight decay keeps zero at zero.
    Zeroing the module's weights alone would be undone: the optimizer updates its own fp32 masters
    and copies them back.

    ZeRO 0-2: a hook on each masked parameter multiplies its gradient before DeepSpeed reduces it (the
    mask is whole on every rank, as the parameter is). ZeRO-3: `masks` hold each rank's slice matching
    its partition (checkpoint.load_partitions), never a whole mask, and `before_update` masks the
    rank's partition of the reduced fp32 gradient after a step's last backward."""

    def __init__(self, model: torch.nn.Module, masks: dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        self.partitioned = any(hasattr(p, "ds_tensor") for p in params.values())
        self.masked = []
        with torch.no_grad():
            for name, mask in masks.items():
                param = params[name]
                weights = param.ds_tensor if self.partitioned else param
                mask = mask.to(weights.device).view(weights.shape)
                weights.data.mul_(mask)
                self.masked.append((param, mask))
                if not self.partitioned:
                    param.register_hook(functools.partial(self._mask_gradient, len(self.masked) - 1))

    def _mask_gradient(self, index: int, grad: torch.Tensor) -> torch.Tensor:
        """ZeRO 0-2's hook. masked_fill, not a product: a non-finite gradient must not reach a pruned
        weight. The mask was made where the module was before the engine moved it to the accelerator:
        it follows the gradient there once."""
        param, mask = self.masked[index]
        if mask.device != grad.device:
            mask = mask.to(grad.device)
            self.masked[index] = (param, mask)
        return grad.masked_fill(~mask, 0)

    def before_update(self) -> None:
        if self.partitioned:
            for param, mask in self.masked:
                grad = deepspeed.utils.safe_get_local_grad(param)
                deepspeed.utils.safe_set_local_grad(param, grad.masked_fill(~mask.to(grad.device), 0))


def set_master_weights(engine, values) -> None:
    """Write exact fp32 values (name -> tensor, names as engine.module.named_parameters()) into the
    optimizer's fp32 master copies. Under bf16 the module's parameters were created in bf16, and the
    masters DeepSpeed makes from them are bf16 roundings (1/3 -> 0.33398); the next step's copy-back
    then gives the module the rounding of the exact value. Local to each rank (no collective).

    Under ZeRO-3 each rank writes its own partition's slice, zero-padded on the last rank: DeepSpeed
    0.19.8's safe_set_full_fp32_param reads past the end of a value whose size the ranks do not divide
    (the 15 q-head scales of a 15/5-head target on 2 ranks crashed the grow stage)."""
    params = dict(engine.module.named_parameters())
    for name, value in values:
        param, value = params[name], value.to(torch.float32)
        if not hasattr(param, "ds_id"):
            deepspeed.utils.safe_set_full_fp32_param(param, value)
            continue
        if value.numel() != param.ds_numel:
            raise ValueError(f"{name}: {value.numel()} values for a parameter of {param.ds_numel}")
        local = torch.zeros(param.ds_tensor.numel())
        start = dist.get_rank(group=param.ds_process_group) * local.numel()
        piece = value.flatten()[start:start + local.numel()]
        local[:piece.numel()] = piece
        deepspeed.utils.safe_set_local_fp32_param(param, local)


def _register_shared_parameters(model: torch.nn.Module) -> None:
    """ZeRO-3 gathers a module's own parameters around its forward. Modules that also read parameters
    owned elsewhere (growth generators read the residual expansion and the donor) declare them in
    `shared_parameters()`, and DeepSpeed gathers those too."""
    for module in model.modules():
        if hasattr(module, "shared_parameters"):
            for param in module.shared_parameters():
                deepspeed.zero.register_external_parameter(module, param)



def all_reduce_mean(values: list[float | torch.Tensor]) -> list[float]:
    """Mean over ranks of a few scalars (host numbers or 0-d device tensors), in one collective."""
    return [v / dist.get_world_size() for v in _all_reduce(values, dist.ReduceOp.SUM)]


def all_reduce_max(values: list[float | torch.Tensor]) -> list[float]:
    return _all_reduce(values, dist.ReduceOp.MAX)


def _all_reduce(values: list[float | torch.Tensor], op) -> list[float]:
    device = get_accelerator().current_device_name()
    tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def training_dtype(ds: dict) -> torch.dtype:
    if ds.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    return torch.float16 if ds.get("fp16", {}).get("enabled") else torch.float32


def peak_tflops_per_rank(configured: float | None, dtype: torch.dtype) -> tuple[float, str]:
    """The MFU denominator and where it came from: the setting, a datasheet, or a measurement (then
    a collective: all ranks measure at once and share the mean)."""
    if configured:
        return configured, "train.peak_tflops"
    kind = get_accelerator().device_name()
    if kind != "cpu":
        device_name = getattr(torch, kind).get_device_name()
        tflops = datasheet_tflops(device_name, dtype)
        if tflops:
            return tflops, f"datasheet {dtype} peak of {device_name}"
    dist.barrier()
    measured = all_reduce_mean([measured_matmul_tflops(get_accelerator().current_device_name(), dtype)])[0]
    return measured, f"measured {dtype} matmul rate on {kind} (set train.peak_tflops to override)"


def local_device() -> torch.device:
    """This process's accelerator (its LOCAL_RANK's), or the CPU under DeepSpeed's CPU accelerator."""
    return torch.device(get_accelerator().current_device_name())


def wait_for_device() -> None:
    """Blocks the host until the accelerator has run everything queued (nothing to wait for on the CPU):
    before a clock read that must include the device's work."""
    get_accelerator().synchronize()


def peak_memory_gb() -> float:
    """This rank's peak memory: device memory allocated on accelerators, resident set size on CPU
    (DeepSpeed's CPU accelerator only samples RSS when asked, so its 'max' misses peaks)."""
    if get_accelerator().device_name() == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB
    return get_accelerator().max_memory_allocated() / 1e9


def full_fp32_parameters(engine, rank: int, trainable_only: bool = False):
    """Yield (name, full fp32 weight) per parameter: the value on rank 0 (a CPU copy), None elsewhere.
    Gathered one parameter at a time, so no rank holds more than one extra full tensor; every rank must
    iterate it to the end (the gathers are collective).

    The optimizer's fp32 master copy is used where there is one (ZeRO 1-3, bf16): the module's own
    weights may be bf16 roundings of it."""
    stage3 = engine.zero_optimization_stage() == 3
    for name, param in engine.module.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        full = deepspeed.utils.safe_get_full_fp32_param(param) if param.requires_grad else None
        if full is None:  # no master copy (fp32 ZeRO-0, frozen parameters): the module holds the value
            with deepspeed.zero.GatheredParameters([param], enabled=stage3):
                full = param.detach().clone()
        yield name, full.detach().to("cpu", torch.float32).clone() if rank == 0 else None


def checkpoint_bytes(engine) -> int:
    """About what a checkpoint takes on disk: every parameter as saved by the module (its dtype), plus
    fp32 master weights and two Adam moments for the trainable ones."""
    total = 0
    for p in engine.module.parameters():
        numel = getattr(p, "ds_numel", p.numel())
        total += numel * p.element_size() + (12 * numel if p.requires_grad else 0)
    return total


def optimizer_swap_bytes_to_come(engine, swap_dir: Path) -> int:
    """What an optimizer offloaded to NVMe/disk will still add to this node's swap files: 16 bytes per
    trainable element of the node's ranks (fp32 master, two Adam moments, fp32 gradient; measured 15.3
    at 1B), less what swap_dir holds already."""
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad)
    # the deepspeed launcher says LOCAL_SIZE, torchrun LOCAL_WORLD_SIZE
    local_ranks = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or dist.get_world_size())
    written = sum(f.stat().st_size for f in swap_dir.rglob("*") if f.is_file()) if swap_dir.exists() else 0
    return max(0, 16 * trainable * local_ranks // dist.get_world_size() - written)


def trainable_parameters_per_rank(engine) -> list[int]:
    """How many trainable parameter elements each rank holds (ZeRO-3 partitions them). Collective."""
    local = sum((p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel())
                for p in engine.module.parameters() if p.requires_grad)
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, local)
    return counts
