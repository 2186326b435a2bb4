"""Typed configuration: the single source of truth for every stage.

A run is described by a named YAML recipe (``pipeline/recipes/<name>.yaml``) or a YAML path, plus
dotted command-line overrides (``train.lr=3e-4`` or ``--train.lr 3e-4``). Precedence:
command line > recipe file > dataclass defaults. Everything is validated before any work starts;
the resolved config is written into the run directory by the stage that uses it.

New stages (grow, prune) add a dataclass section to ``Config``; loading, overriding, type checking
and YAML round-trips work for any section without further code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import hub
from pipeline.errors import ConfigError
from pipeline.growth.schemes import (
    DEPTH_COEFFICIENTS,
    DEPTH_SCHEMES,
    NEW_LAYER_PLACEMENTS,
    RECOMPUTE_MODES,
    WIDTH_SCHEMES,
)
from pipeline.lottery import CONTROLS, DEFAULT_INCLUDE, MODES, STRATEGIES
from pipeline.models.families import family
from pipeline.models.sizes import DEFAULT_SIZE, SHAPE_FIELDS, ModelShape, resolve_shape, shape_from_hf

RECIPE_DIR = Path(__file__).parent / "recipes"
TXT_DOCUMENTS = ("paragraphs", "lines", "files")
BLEND_BLOCK = 8192  # a mixture's order deals samples in blocks this long, every source's share exact per block
SHAPE_WHERE = {f"model.{name}" for name in SHAPE_FIELDS}
RELATIVE_SHAPE = re.compile(r"\d+(\.\d+)?x")  # model.hidden=1.5x: a factor of the grow stage's donor
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunConfig:
    dir: str = "runs/tiny"
    """Run directory: resolved config, checkpoints, TensorBoard events, metrics.jsonl, final HF model."""


@dataclass
class SourceConfig:
    path: str = ""
    """Where the text is, in data.source's syntax (a file, a directory, a saved `datasets` dir, "stdlib",
    "hf:<name>[:<config>[:<split>]]")."""
    weight: float = 1.0
    """Share of the training samples drawn from this source (weights are normalized to sum to 1)."""
    text_field: typing.Optional[str] = None
    """Column / JSONL key holding the text; unset: data.text_field."""
    name: typing.Optional[str] = None
    """Label in reports and the packed data's sources/<name>/ dir; unset: made from the path."""


@dataclass
class DataConfig:
    source: str = "stdlib"
    """Corpus: "stdlib" (the running interpreter's standard library .py files), a local .txt/.jsonl
    file or directory, a `datasets` dataset saved with save_to_disk, or "hf:<name>[:<config>[:<split>]]"
    (a hub name or a local dataset dir, loaded with `datasets.load_dataset`)."""
    sources: list[SourceConfig] = field(default_factory=list)
    """Several weighted sources instead of data.source, e.g. in YAML
    `sources: [{path: web.jsonl, weight: 0.7}, {path: code/, weight: 0.3}]`: each is tokenized and packed
    on its own and training draws from them in these proportions (pipeline/data/loader.py)."""
    text_field: str = "text"
    """Column / JSONL key holding the text."""
    txt_documents: str = "paragraphs"
    """How .txt files divide into documents: "paragraphs" (split on blank lines), "lines" or "files"
    (a file is one document). Other text files (.py, .md, .rst) are one document each."""
    validation_fraction: float = 0.05
    """Share of documents (files, for file sources) held out for validation; chosen by a stable hash."""
    tokenizer: str = "stdlib-2k"
    """Tokenizer name: trained into tokenizers/<name>/ by prepare, or a path to an existing HF tokenizer dir."""
    vocab_size: int = 2048
    """Sentencepiece vocabulary size (special tokens included)."""
    tokenizer_train_chars: int = 20_000_000
    """At most this many characters of training text are fed to sentencepiece."""
    seq_len: int = 128
    """Tokens per packed training sample."""
    output_dir: str = "data/stdlib-2k-128"
    """Where prepare writes the packed, memory-mapped token files."""
    num_proc: int = 2
    """Worker processes for tokenization."""
    order_seed: int = 1234
    """Seed of the global sample permutation (one permutation per epoch)."""
    start: str = "auto"
    """Global sample position a fresh run's data order starts at. "auto": after the samples the starting
    model (train.init_from, grow.donor) was trained on, if the pipeline trained it on this data and order
    (a grown model then does not re-read its operator's batches), else 0; or an integer."""


ShapeValue = typing.Optional[typing.Union[int, str]]  # an int, or "<factor>x" relative to the grow stage's donor


@dataclass
class ModelConfig:
    size: typing.Optional[str] = None
    """Named size from pipeline/models/sizes.py (family and shape); fields below override it. Unset
    (null): the shape of train.init_from's checkpoint, else of grow.donor's, else llama-micro."""
    layers: ShapeValue = None
    """Number of transformer blocks. Each shape field also takes "<factor>x" (e.g. 2x, 1.5x): that many
    times the grow stage's donor (grow.donor), rounded."""
    hidden: ShapeValue = None
    """Residual stream width."""
    heads: ShapeValue = None
    """Attention (query) heads."""
    kv_heads: ShapeValue = None
    """Key/value heads (LLaMA grouped-query attention; must divide heads; GPT-2 requires == heads)."""
    ffn: ShapeValue = None
    """MLP hidden width."""
    max_positions: ShapeValue = None
    """Longest sequence the model accepts."""
    head_size: ShapeValue = None
    """Attention head width (HF's head_dim) where it is not hidden / heads (Qwen3, Gemma); unset: hidden / heads."""
    activation_checkpointing: bool = False
    """Recompute block activations in backward (less memory, ~1/3 more compute)."""
    init_std: typing.Optional[float] = None
    """Std of the normal init of weight matrices and embeddings of a model trained from scratch (HF's
    initializer_range); unset: the family's default, 0.02."""


@dataclass
class ContinuedConfig:
    """The schedule of a run that starts from pretrained weights (train.init_from: a donor, a grown
    model). The recipe's lr and warmup are tuned for a random init; re-warming a trained model to that
    peak with a fresh AdamW undoes part of what it knows (docs/benchmarks.md, "Continued pretraining after growth")."""
    enabled: bool = True
    """Use the settings below when train.init_from is set (false: the recipe's lr, warmup_steps and
    moment_warmup_steps, as a random init uses them)."""
    lr_ratio: float = 0.1
    """Peak LR as a fraction of train.lr. 0.1 is where a run of the same recipe ended (its default
    min_lr_ratio): a trained model continued above the LR it was annealed to climbs before it improves
    (measured: docs/benchmarks.md, "Continued pretraining after growth")."""
    warmup_steps: int = 0
    """Linear warmup to the peak after the moment warm-up."""
    moment_warmup_steps: int = 10
    """Steps at LR 0 that fill AdamW's moments before the first update (train.moment_warmup_steps), at
    most a tenth of train.steps; none when the optimizer starts from the moments train.init_from
    carries (train.init_optimizer)."""
    new_units_lr_scale: float = 1.0
    """LR factor of a grown model's coordinates that have no donor counterpart (new units, new layers),
    where the grown dir's optimizer file marks them (pipeline/growth/moments.py)."""
    new_units_warmup_steps: int = 100
    """Fade the new coordinates in: their LR factor rises linearly from 0 to new_units_lr_scale over
    this many first steps (their moments fill meanwhile) while the inherited ones train at once, so
    the grown model leaves its donor's function gradually (measured: docs/benchmarks.md, "Continued
    pretraining after growth"; 0: at once)."""


@dataclass
class TrainConfig:
    deepspeed_config: str = "zero2"
    """A JSON in ds_configs/ (name without .json) or a path. Batch, clipping and optimizer come from
    this recipe, not the JSON."""
    micro_batch_size: int = 8
    """Samples per rank per forward/backward."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    global_batch_size: typing.Optional[int] = None
    """If set, must equal micro_batch_size * grad_accum_steps * data-parallel ranks (checked at launch)."""
    steps: int = 200
    """Optimizer steps in the run (the LR schedule spans exactly these)."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Cosine decay floor as a fraction of lr."""
    warmup_steps: int = 20
    """Linear warmup from 0 to lr."""
    moment_warmup_steps: int = 0
    """Steps at LR 0 before the warmup: AdamW accumulates its gradient moments while the weights stay
    bit-identical, so the first real updates are not the sign-like steps of an empty second moment
    (for pretrained starts; the data they read counts as trained on)."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (not on norms, biases or embeddings)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping (0 disables)."""
    eval_interval: int = 50
    """Validate every this many steps (and at the end)."""
    eval_batches: int = 4
    """Validation set size in global batches: eval_batches x global-batch samples spread evenly over the
    validation split, the same whatever the number of ranks (identical count on every rank)."""
    checkpoint_interval: int = 100
    """Save a DeepSpeed checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 3
    """Keep the newest this many complete checkpoints (0: keep all)."""
    preemption_grace_s: float = 120.0
    """After SIGTERM/SIGINT: stop after the current step, checkpoint, exit 0; give up after this long."""
    max_skipped_steps: int = 5
    """A step whose loss is NaN/inf on any rank is skipped (no update); up to this many in a row are
    skipped, one more stops the run with a checkpoint of the last good weights (0: stop at the first)."""
    log_interval: int = 10
    """Console / TensorBoard / JSONL logging interval in steps."""
    throughput_warmup_steps: int = 2
    """Steps after each (re)start left out of throughput numbers (allocator growth, cold caches)."""
    profile_step: int = 0
    """Record steps profile_step to profile_step + 2 with torch.profiler into <run>/profile/ (a timeline
    and a table of ops per rank; pipeline/profiling.py). 0: off."""
    peak_tflops: typing.Optional[float] = None
    """Peak TFLOPS per rank, the MFU/HFU denominator. Unset: the datasheet bf16/fp16 peak of a known GPU,
    else a matmul rate measured at start (pipeline/throughput.py)."""
    seed: int = 0
    """Seed of model initialization and every RNG."""
    init_from: typing.Optional[str] = None
    """HF model dir to start from (weights only; optimizer and step start fresh). Not a resume. Its
    LR schedule: train.continued."""
    continued: ContinuedConfig = field(default_factory=ContinuedConfig)
    """How a run from train.init_from schedules its LR (replaces lr, warmup_steps, moment_warmup_steps)."""
    init_optimizer: str = "auto"
    """How a run from train.init_from starts AdamW: auto (from the dir's optimizer/adamw.safetensors if it
    has one: moments, step count and a grown model's per-coordinate LR scales), moments (the moments and
    step only) or fresh (empty)."""
    save_hf: bool = True
    """Write the final weights as a Hugging Face model dir (<run>/hf) for the next stage."""
    save_hf_optimizer: bool = True
    """With save_hf, also write AdamW's moments into <run>/hf/optimizer/ (8 bytes per parameter), so a
    run or grow stage that starts from this model can continue its optimizer."""


@dataclass
class GrowConfig:
    donor: typing.Optional[str] = None
    """HF model dir of the small pretrained model (safetensors), or a Hub name org/name[@revision]: our
    train stage's <run>/hf or a checkpoint of a registered family (pipeline/models/families) with the
    same tokenizer as data. The target shape is the `model` section."""
    depth_init: str = "identity"
    """Operator start in depth (pipeline/growth/init.py): identity (donor layers in order, new layers that
    start as exact identities: lossless for any depth) | stack (G_stack) | interpolate | midas |
    noisy_stack (the official LiGO code)."""
    new_layers: str = "interleave"
    """Where depth_init=identity puts the new layers: interleave (evenly between donor layers) | top |
    middle."""
    width_init: str = "lossless"
    """Operator start in width: lossless (the donor's function at any width ratio) | copy (HyperCloning;
    lossless only for integer ratios) | aki (bert2BERT) | random (official LiGO code)."""
    depth_coefficients: str = "per_module"
    """Depth blend coefficients: per_module (the paper: one L2 x L1 matrix for each of q, k, v, o, the
    norms and the MLP matrices) | shared (one matrix for every module type)."""
    steps: int = 100
    """Operator training steps on the target's LM loss (0 = the heuristic init as is)."""
    lr: float = 0.03
    """Peak learning rate of the operator (AdamW) for a coefficient that scales one unit; a coefficient
    that blends k donor units or layers gets lr / k (pipeline/growth/operator.py GrowthOperator.fan_in),
    so a step changes the generated weights by about the same relative amount at any model size."""
    warmup_steps: int = 10
    """Linear warmup to lr (it reaches lr, unlike the official code's 10000-step warmup in 100 steps)."""
    min_lr_ratio: float = 0.1
    """Cosine decay floor after warmup, as a fraction of lr."""
    weight_decay: float = 0.0
    """Weight decay on operator coefficients (0: do not pull them towards zero)."""
    recompute: str = "auto"
    """What backward recomputes instead of storing (pipeline/growth/model.py): weights (regenerate each
    module's weights; memory of training the target) | activations (checkpoint whole modules, as
    model.activation_checkpointing does) | none (store the generated weights: an unsharded fp32 copy
    of the target per rank) | auto (activations if model.activation_checkpointing, else weights)."""


@dataclass
class PruneConfig:
    sparsities: str = "0.2,0.5,0.8"
    """Comma-separated, increasing: the fraction of the prunable weights pruned in round 1, 2, ... The
    classic 20%-per-round IMP is 0.2,0.36,0.488,0.59,0.672,0.738,0.79."""
    mode: str = "iterative"
    """iterative (IMP: round r prunes round r-1's trained ticket, among its survivors) | one_shot (every
    round prunes the trained dense model)."""
    strategy: str = "global"
    """global (one magnitude threshold over all prunable weights) | layerwise (every prunable tensor
    pruned to the same fraction)."""
    rewind_step: typing.Optional[int] = None
    """Step whose weights the survivors are reset to, and from which each round replays the LR schedule
    and data order. 0: the start weights (the original LTH; with train.init_from, e.g. a grown model,
    those weights). Unset: 5% of train.steps, rounded."""
    include: str = DEFAULT_INCLUDE
    """Regular expression (re.search) of the prunable parameters; only matrices are pruned. Default:
    the attention and MLP matrices of the blocks (embeddings, head, norms and biases are kept)."""
    exclude: str = ""
    """Regular expression of parameters kept dense although `include` matches (e.g. "layers\\.0\\.")."""
    controls: str = "dense_rewound,random_prune,random_reinit"
    """Comma-separated controls, trained with the rounds' steps: dense_rewound (once: the unpruned model
    retrained from the rewind weights as the rounds are, the protocol-matched dense reference) |
    random_prune (each round: the ticket's per-tensor counts at random positions, from the rewind
    weights) | random_reinit (each round: the ticket's mask on a new random init, its seed apart from
    every train.seed a benchmark uses).
    Empty: tickets only."""

    def levels(self) -> list[float]:
        return [float(s) for s in self.sparsities.split(",") if s.strip()]

    def control_names(self) -> list[str]:
        return [c.strip() for c in self.controls.split(",") if c.strip()]


@dataclass
class EvalConfig:
    tasks: str = ""
    """Comma-separated lm-evaluation-harness task names (needs the `eval` extra). corpus_choice and
    corpus_next are built from the prepared data's validation split and need no network
    (pipeline/data/eval_tasks.py); standard names (hellaswag, arc_easy, piqa, lambada_openai, ...)
    download their datasets from the Hub. Empty: no downstream evaluation."""
    interval: int = 0
    """Evaluate the tasks inside the train, grow and prune stages at step 0, every this many steps and
    at the end, on the model being trained (0: only python -m pipeline.evaluate)."""
    num_fewshot: int = 0
    """Few-shot examples per prompt."""
    limit: typing.Optional[int] = None
    """Evaluate only the first this many documents of each task (unset: all)."""
    batch_size: int = 16
    """Requests per forward and rank."""
    corpus_items: int = 100
    """Documents of the corpus_choice and corpus_next tasks, from validation samples spread evenly over
    the split."""
    include_path: typing.Optional[str] = None
    """A directory of your own lm-eval task YAMLs, added to the task index."""

    def task_names(self) -> list[str]:
        return [name.strip() for name in self.tasks.split(",") if name.strip()]


@dataclass
class BenchConfig:
    donor_size: str = "llama-nano"
    """Growth benchmark: named size of the donor it pretrains (the `model` section is the target)."""
    donor_steps: int = 300
    """Growth benchmark: donor pretraining steps (with the train section's batch, LR and schedule)."""
    arms: str = ("scratch,identity+lossless,stack+copy,interpolate+copy,stack+aki,ligo-from-identity+lossless,ligo,"
                 "ligo-official,ligo-untrained-donor")
    """Growth benchmark: comma-separated arms (listed in pipeline/bench/growth.py). Heuristics are
    written depth+width with the grow.depth_init / grow.width_init names."""
    ligo_init: str = "best"
    """Growth benchmark: the heuristic the `ligo` arm and its untrained-donor control start from:
    `best` (the heuristic arm with the fewest FLOPs to the scratch loss on the first seed) or depth+width."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grow: GrowConfig = field(default_factory=GrowConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_yaml())


# ---------------------------------------------------------------------------------------------
# Loading: recipe -> dict, overrides -> dict, dict -> typed dataclasses.


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def _read_recipe(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"recipe {name_or_path!r} not found: give a YAML path or one of {recipe_names()}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def _set_dotted(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def parse_overrides(args: list[str]) -> dict:
    """``["train.lr=1e-3", "--model.size", "gpt2-nano"]`` -> nested dict with YAML-typed values."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            arg = arg[2:]
            if "=" not in arg:
                if i + 1 >= len(args):
                    raise ConfigError(f"override --{arg} has no value")
                arg = f"{arg}={args[i + 1]}"
                i += 1
        if "=" not in arg or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"cannot read override {args[i]!r}: use section.key=value, e.g. train.lr=3e-4")
        key, raw = arg.split("=", 1)
        _set_dotted(tree, key, yaml.safe_load(raw) if raw else "")
        i += 1
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(value, annotation, where: str):
    """Check ``value`` against a field annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        for option in inner:  # the first type that takes the value
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        names = ("an integer or a factor of the donor's like 1.5x" if where in SHAPE_WHERE
                 else " or ".join(a.__name__ for a in inner))
        raise ConfigError(f"{where}: expected {names}, got {value!r} ({type(value).__name__})")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if annotation is str and type(value) in (int, float) and where not in SHAPE_WHERE:  # prune.sparsities=0.5
        return str(value)
    if annotation in (int, float, str, bool) and type(value) is annotation:
        return value
    raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r} ({type(value).__name__})")


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{where}{k}' for k in unknown)}; "
                          f"valid keys here: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        elif typing.get_origin(hint) is list:  # a list of sections, e.g. data.sources
            if not isinstance(value, list):
                raise ConfigError(f"{where}{name}: expected a list of mappings, got {value!r}")
            item = typing.get_args(hint)[0]
            kwargs[name] = [_build(item, v, f"{where}{name}[{i}].") for i, v in enumerate(value)]
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    return cls(**kwargs)


def load_config(recipe: str, overrides: list[str] | None = None) -> Config:
    """Recipe name or path + dotted overrides -> a validated ``Config``."""
    tree = _merge(_read_recipe(recipe), parse_overrides(overrides or []))
    config = _build(Config, tree, "")
    resolve_hub_names(config)
    config.model = shape_from_checkpoints(config)
    validate(config)
    return config


def resolve_hub_names(config: Config) -> None:
    """Hub names (`org/name[@revision]`, pipeline/hub.py) in grow.donor, train.init_from and data.tokenizer
    -> their local snapshot dirs, before anything reads them."""
    config.grow.donor = hub.resolve(config.grow.donor, "grow.donor")
    config.train.init_from = hub.resolve(config.train.init_from, "train.init_from")
    config.data.tokenizer = hub.resolve(config.data.tokenizer, "data.tokenizer", hub.TOKENIZER_FILES,
                                        "tokenizer_config.json")


def _checkpoint_shape(model_dir: str, key: str) -> ModelShape:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{key}={model_dir} has no config.json: give the HF model dir")
    return shape_from_hf(json.loads(path.read_text()))


def shape_from_checkpoints(config: Config) -> ModelConfig:
    """The model section with what it leaves to checkpoints filled in (JSON reads only). model.size unset:
    the base shape is train.init_from's config.json, else grow.donor's, else DEFAULT_SIZE; fields set
    override it; "<factor>x" fields are that factor of grow.donor's."""
    m = config.model
    fields = {name: getattr(m, name) for name in SHAPE_FIELDS}
    relative = {name: v for name, v in fields.items() if isinstance(v, str)}
    for name, value in relative.items():
        if not RELATIVE_SHAPE.fullmatch(value):
            raise ConfigError(f"model.{name}={value!r}: give an integer or a factor of the donor's like 2x or 1.5x")
        if name == "head_size":
            raise ConfigError(f"model.head_size={value!r}: give an integer (heads grow whole, so a grown model keeps "
                              f"the donor's head size: leave it unset)")
    if relative and not config.grow.donor:
        raise ConfigError(f"model.{', model.'.join(relative)} = {', '.join(relative.values())} is relative to the "
                          f"donor: set grow.donor (or give the size in numbers)")
    donor = _checkpoint_shape(config.grow.donor, "grow.donor") if relative else None
    set_fields = {name: v for name, v in fields.items() if v is not None}
    for name, value in relative.items():
        set_fields[name] = round(float(value[:-1]) * getattr(donor, name))
    if m.size is not None:
        return dataclasses.replace(m, **set_fields)
    if config.train.init_from:
        base = _checkpoint_shape(config.train.init_from, "train.init_from")
    elif config.grow.donor:
        base = donor or _checkpoint_shape(config.grow.donor, "grow.donor")
    else:
        return dataclasses.replace(m, size=DEFAULT_SIZE, **set_fields)
    return dataclasses.replace(m, size=family(base.family).base_size,
                               **{**{name: getattr(base, name) for name in SHAPE_FIELDS}, **set_fields})


def parse_stage_args(description: str, argv: list[str] | None = None,
                     add_arguments=None) -> tuple[Config, argparse.Namespace]:
    """Shared command line of every stage: ``--config <recipe>``, stage flags, then dotted overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="tiny", help=f"recipe name {recipe_names()} or YAML path")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by `deepspeed`
    if add_arguments is not None:
        add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    try:
        return load_config(args.config, rest), args
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n")


INIT_OPTIMIZER = ("auto", "moments", "fresh")


def schedule_for_start(t: TrainConfig, carries_moments: bool = False) -> TrainConfig:
    """The optimizer schedule a run uses: the recipe's as written for a random init; from pretrained
    weights (train.init_from) with train.continued enabled, the continued settings replace lr,
    warmup_steps and moment_warmup_steps (no moment warm-up when the optimizer starts from carried
    moments). The result has continued disabled, so resolving it again (a prune round that starts from
    rewound weights) keeps the schedule of the run it replays."""
    if t.init_from is None or not t.continued.enabled:
        return t
    c = t.continued
    return dataclasses.replace(t, lr=t.lr * c.lr_ratio, warmup_steps=c.warmup_steps,
                               moment_warmup_steps=0 if carries_moments else min(c.moment_warmup_steps, t.steps // 10),
                               continued=dataclasses.replace(c, enabled=False))


# ---------------------------------------------------------------------------------------------
# Validation of values that type-check but cannot work.


def validate(config: Config) -> None:
    d, t = config.data, config.train
    for name in ("vocab_size", "seq_len", "num_proc", "tokenizer_train_chars"):
        if getattr(d, name) <= 0:
            raise ConfigError(f"data.{name} must be positive, got {getattr(d, name)}")
    if d.vocab_size < 16:
        raise ConfigError(f"data.vocab_size={d.vocab_size} is too small for a sentencepiece model (use >= 16)")
    if not 0 < d.validation_fraction < 1:
        raise ConfigError(f"data.validation_fraction must be in (0, 1), got {d.validation_fraction}")
    if d.start != "auto" and not (d.start.isdigit()):
        raise ConfigError(f"data.start must be auto or a sample position (an integer >= 0), got {d.start!r}")
    if d.txt_documents not in TXT_DOCUMENTS:
        raise ConfigError(f"data.txt_documents must be one of {TXT_DOCUMENTS}, got {d.txt_documents!r}")
    validate_sources(d)
    for name in ("micro_batch_size", "grad_accum_steps", "steps", "eval_interval", "eval_batches",
                 "checkpoint_interval", "log_interval"):
        if getattr(t, name) <= 0:
            raise ConfigError(f"train.{name} must be positive, got {getattr(t, name)}")
    if t.lr <= 0 or not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"train.lr must be > 0 and train.min_lr_ratio in [0, 1] (got {t.lr}, {t.min_lr_ratio})")
    if t.profile_step < 0:
        raise ConfigError(f"train.profile_step must be >= 0 (0: off), got {t.profile_step}")
    if t.warmup_steps < 0 or t.moment_warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps and train.moment_warmup_steps must be >= 0 (got {t.warmup_steps}, "
                          f"{t.moment_warmup_steps})")
    if t.init_optimizer not in INIT_OPTIMIZER:
        raise ConfigError(f"train.init_optimizer must be one of {INIT_OPTIMIZER}, got {t.init_optimizer!r}")
    c = t.continued
    if c.new_units_lr_scale < 0:
        raise ConfigError(f"train.continued.new_units_lr_scale must be >= 0, got {c.new_units_lr_scale}")
    if c.lr_ratio <= 0 or min(c.warmup_steps, c.moment_warmup_steps, c.new_units_warmup_steps) < 0:
        raise ConfigError(f"train.continued: need lr_ratio > 0 and warmup_steps, moment_warmup_steps, "
                          f"new_units_warmup_steps >= 0 (got {c.lr_ratio}, {c.warmup_steps}, {c.moment_warmup_steps}, "
                          f"{c.new_units_warmup_steps})")
    resolved = schedule_for_start(t)
    where = "train." if resolved is t else "train.continued."
    if resolved.warmup_steps > t.steps:
        raise ConfigError(f"{where}warmup_steps={resolved.warmup_steps} must be in [0, train.steps={t.steps}]")
    if resolved.moment_warmup_steps > t.steps - resolved.warmup_steps:
        raise ConfigError(f"{where}moment_warmup_steps={resolved.moment_warmup_steps} must be in [0, train.steps - "
                          f"{where}warmup_steps = {t.steps - resolved.warmup_steps}]")
    g = config.grow
    for name, allowed in (("depth_init", DEPTH_SCHEMES), ("new_layers", NEW_LAYER_PLACEMENTS),
                          ("width_init", WIDTH_SCHEMES), ("depth_coefficients", DEPTH_COEFFICIENTS)):
        if getattr(g, name) not in allowed:
            raise ConfigError(f"grow.{name} must be one of {allowed}, got {getattr(g, name)!r}")
    if g.depth_init == "identity" and g.depth_coefficients == "shared":
        raise ConfigError("grow.depth_init=identity needs grow.depth_coefficients=per_module: a new layer's "
                          "residual writers start at zero while its readers copy a donor layer, which one "
                          "shared depth matrix cannot express")
    if g.steps < 0 or g.warmup_steps < 0 or g.lr <= 0 or g.weight_decay < 0:
        raise ConfigError(f"grow: need steps >= 0, warmup_steps >= 0, lr > 0, weight_decay >= 0 (got steps={g.steps}, "
                          f"warmup_steps={g.warmup_steps}, lr={g.lr}, weight_decay={g.weight_decay})")
    if g.recompute not in ("auto", *RECOMPUTE_MODES):
        raise ConfigError(f"grow.recompute must be auto or one of {RECOMPUTE_MODES}, got {g.recompute!r}")
    if 0 < g.steps < g.warmup_steps:
        raise ConfigError(f"grow.warmup_steps={g.warmup_steps} exceeds grow.steps={g.steps}")
    if t.keep_checkpoints < 0 or t.max_skipped_steps < 0 or t.preemption_grace_s <= 0:
        raise ConfigError(f"train.keep_checkpoints and train.max_skipped_steps must be >= 0 and "
                          f"train.preemption_grace_s > 0 (got {t.keep_checkpoints}, {t.max_skipped_steps}, "
                          f"{t.preemption_grace_s})")
    if t.throughput_warmup_steps < 0 or (t.peak_tflops is not None and t.peak_tflops <= 0):
        raise ConfigError(f"train.throughput_warmup_steps must be >= 0 and train.peak_tflops > 0 or unset (got "
                          f"{t.throughput_warmup_steps}, {t.peak_tflops})")
    if t.grad_clip < 0 or t.weight_decay < 0:
        raise ConfigError("train.grad_clip and train.weight_decay must be >= 0")
    if config.model.init_std is not None and config.model.init_std <= 0:
        raise ConfigError(f"model.init_std must be positive or unset, got {config.model.init_std}")
    validate_prune(config.prune, t.steps)
    validate_eval(config.eval)
    if config.bench.donor_steps <= 0:
        raise ConfigError(f"bench.donor_steps must be positive, got {config.bench.donor_steps}")
    shape = resolve_shape(config.model)
    if d.seq_len > shape.max_positions:
        raise ConfigError(f"data.seq_len={d.seq_len} exceeds the model's max_positions={shape.max_positions}: "
                          f"lower data.seq_len or set model.max_positions")
    if t.global_batch_size is not None and t.global_batch_size % (t.micro_batch_size * t.grad_accum_steps):
        raise ConfigError(batch_triad_message(t, world_size=None))
    load_deepspeed_json(t.deepspeed_config)


def validate_eval(e: EvalConfig) -> None:
    if e.interval < 0 or e.num_fewshot < 0 or e.batch_size <= 0 or e.corpus_items <= 0 or (e.limit is not None
                                                                                             and e.limit <= 0):
        raise ConfigError(f"eval: need interval >= 0, num_fewshot >= 0, batch_size > 0, corpus_items > 0 and limit "
                          f"> 0 or unset (got {e.interval}, {e.num_fewshot}, {e.batch_size}, {e.corpus_items}, "
                          f"{e.limit})")
    if e.interval and not e.task_names():
        raise ConfigError(f"eval.interval={e.interval} evaluates in the loop, but eval.tasks is empty: name the "
                          f"tasks, e.g. eval.tasks=corpus_choice,corpus_next")
    if e.include_path is not None and not Path(e.include_path).is_dir():
        raise ConfigError(f"eval.include_path={e.include_path} is not a directory of lm-eval task YAMLs")


def source_names(d: DataConfig) -> list[str]:
    """Each source's label: its `name`, else "<index>-<last part of its path>" (unique by the index)."""
    names = []
    for i, source in enumerate(d.sources):
        path = source.path[len("hf:"):].split(":")[0] if source.path.startswith("hf:") else source.path
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem) or "source"
        names.append(source.name or f"{i}-{stem}")
    return names


def validate_sources(d: DataConfig) -> None:
    if not d.sources:
        return
    if d.source != DataConfig.source:
        raise ConfigError(f"set data.source ({d.source!r}) or data.sources, not both: a mixture lists every "
                          f"source in data.sources")
    total = sum(max(source.weight, 0) for source in d.sources)
    for i, source in enumerate(d.sources):
        if not source.path:
            raise ConfigError(f"data.sources[{i}] has no path")
        if not source.weight > 0:
            raise ConfigError(f"data.sources[{i}] ({source.path}): weight must be positive, got {source.weight}")
        if source.weight / total * BLEND_BLOCK < 1:
            raise ConfigError(f"data.sources[{i}] ({source.path}): weight {source.weight} is below 1/{BLEND_BLOCK} of "
                              f"the total {total}; the blend deals samples in blocks of {BLEND_BLOCK}: raise it or drop it")
    names = source_names(d)
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.-]+", n) or n in (".", "..")]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"data.sources names must be unique file names (letters, digits, _ . -), got {names}")


def validate_prune(p: PruneConfig, train_steps: int) -> None:
    try:
        levels = p.levels()
    except ValueError:
        raise ConfigError(f"prune.sparsities must be comma-separated numbers, got {p.sparsities!r}") from None
    if not levels or any(not 0 < s < 1 for s in levels) or levels != sorted(set(levels)):
        raise ConfigError(f"prune.sparsities must be increasing fractions in (0, 1), got {p.sparsities!r}")
    for name, allowed in (("mode", MODES), ("strategy", STRATEGIES)):
        if getattr(p, name) not in allowed:
            raise ConfigError(f"prune.{name} must be one of {allowed}, got {getattr(p, name)!r}")
    unknown = [c for c in p.control_names() if c not in CONTROLS]
    if unknown:
        raise ConfigError(f"prune.controls: unknown {unknown}; choose from {CONTROLS} (comma-separated) or leave empty")
    if p.rewind_step is not None and not 0 <= p.rewind_step < train_steps:
        raise ConfigError(f"prune.rewind_step={p.rewind_step} must be in [0, train.steps={train_steps})")
    for name in ("include", "exclude"):
        try:
            re.compile(getattr(p, name))
        except re.error as err:
            raise ConfigError(f"prune.{name} is not a regular expression ({err}): {getattr(p, name)!r}") from None


def batch_triad_message(t: TrainConfig, world_size: int | None) -> str:
    ranks = "data-parallel ranks" if world_size is None else f"{world_size} ranks"
    return (f"train.global_batch_size={t.global_batch_size} != micro_batch_size {t.micro_batch_size} x "
            f"grad_accum_steps {t.grad_accum_steps} x {ranks}: fix one of them or drop global_batch_size")


def check_batch_triad(t: TrainConfig, world_size: int) -> int:
    """The global batch for this launch; raises if the recipe's global_batch_size disagrees."""
    global_batch = t.micro_batch_size * t.grad_accum_steps * world_size
    if t.global_batch_size is not None and t.global_batch_size != global_batch:
        raise ConfigError(batch_triad_message(t, world_size))
    return global_batch


# Top-level keys DeepSpeed understands (docs: config-json). DeepSpeed silently ignores unknown top-level
# keys, so a typo like "gradient_acumulation_steps" would quietly fall back to a default.
DEEPSPEED_KEYS = {
    "zero_optimization", "bf16", "fp16", "amp", "communication_data_type", "prescale_gradients",
    "gradient_predivide_factor", "sparse_gradients", "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer", "wall_clock_breakdown", "steps_per_print", "dump_state",
    "flops_profiler", "activation_checkpointing", "tensorboard", "wandb", "csv_monitor", "comet",
    "checkpoint", "data_types", "timers", "aio", "memory_breakdown", "compression_training",
    "data_efficiency", "elasticity", "autotuning", "comms_logger", "seq_parallel_communication_data_type",
    "torch_autocast", "compile", "use_data_before_expert_parallelism", "graph_harvesting",
    "disable_allgather", "load_universal_checkpoint", "pipeline", "zenflow",
}
# Keys this pipeline fills from the recipe, so there is exactly one place to set them.
RECIPE_OWNED_KEYS = {
    "train_batch_size": "train.global_batch_size", "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps", "gradient_clipping": "train.grad_clip",
    "optimizer": "train.lr / train.weight_decay / train.beta1 / train.beta2",
    "scheduler": "train.warmup_steps / train.min_lr_ratio",
}


def resolve_deepspeed_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = PROJECT_ROOT / "ds_configs" / f"{name_or_path}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in (PROJECT_ROOT / "ds_configs").glob("*.json"))
        raise ConfigError(f"DeepSpeed config {name_or_path!r} not found: give a .json path or one of {shipped}")
    return path


def load_deepspeed_json(name_or_path: str) -> dict:
    """Read and validate a DeepSpeed JSON; the recipe-owned keys are rejected, typos are named."""
    path = resolve_deepspeed_path(name_or_path)
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    for key in ds:
        if key in RECIPE_OWNED_KEYS:
            raise ConfigError(f"{path}: remove {key!r}; it is set by the recipe ({RECIPE_OWNED_KEYS[key]})")
        if key not in DEEPSPEED_KEYS:
            raise ConfigError(f"{path}: unknown DeepSpeed key {key!r} (DeepSpeed would silently ignore it); "
                              f"check the spelling against https://www.deepspeed.ai/docs/config-json/")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    if ds.get("fp16", {}).get("enabled"):
        raise ConfigError(f"{path}: fp16 is not supported by this pipeline; use bf16")
    return ds
