"""Structured configs: the schemas Hydra validates every run against, training's included
(schemas and their own value checks only: the cross-key checks before compute are in
``harness.checks``), ``to_container`` (a config node as plain Python) and ``compose``. It
imports no app and no training loop, so anything may import it.

A typo (``bench.seq_lenz``) or a wrong type fails at composition, before any compute,
with Hydra's message naming the key; values are checked again when a run starts
(``validate_*``) so a bad value (a negative length, an unknown dtype) names its key too.
The ``arch`` node is free-form (its keys are the architecture's own keyword arguments)
and is checked by the registry against the builder's signature.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from pathlib import Path

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from archs.attention.fused import SDPA_CUDNN_CHOICES
from harness.claims import DEFAULT_STALE_S

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("forward", "train_step", "decode", "generate")
MATCH = ("params", "active_params", "flops", "state", "width")
# Figures an experiment can declare (``figures: [...]``); harness.report.plot draws exactly these.
# The Hydra config tree, as an absolute path: a relative "../conf" resolves against the
# calling *module* when an app runs as a console script (archbench-cost), and fails there.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

FIGURES = ("time_vs_length", "memory_vs_length", "throughput_vs_length", "decode_vs_context",
           "generation_throughput", "accuracy_vs_state", "extrapolation_accuracy", "extrapolation_loss",
           "extrapolation_bpb", "extrapolation_perplexity", "accuracy_vs_distance",
           "extrapolation_vs_train_tokens")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adam")
INITIAL_STATES = ("zero", "noise", "passed")


@dataclass
class TrainConfig:
    """Defaults here are conf/train/default.yaml's (tests/conf/test_schema_defaults.py keeps them equal)."""
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1          # on matrices only; norms, biases, embeddings exempt
    beta1: float = 0.9
    beta2: float = 0.95                # the usual LM setting; more stable than 0.999
    warmup_steps: int = 100
    schedule: str = "cosine"           # decays to min_lr_ratio * lr at the last step
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0             # global norm; 0 disables
    aux_loss_weight: float = 0.01      # MoE load balancing (Switch Transformer's alpha)
    precision: str = "auto"            # auto = bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    mixed_length: bool = False         # sample each batch's length in [min_len, seq_len]
    eval_every: int = 100              # steps between early-stop checks (0 = never)
    target_acc: float | None = 0.995   # stop once train-length accuracy reaches this (None = never)
    time_budget_s: float | None = None  # stop (status ok, stop_reason="time budget") after this
    log_every: int = 10
    diverge_factor: float = 1e3        # loss above this x the first loss counts as divergence
    # -- study options (issue 11); at their defaults they leave checkpoint keys unchanged --
    optimizer: str = "adamw"           # adamw (decoupled decay) | adam (plain Adam, no decay: the
                                       # Mamba paper's induction reproduction)
    initial_state: str = "zero"        # zero | noise | passed: where each sequence's recurrent state
                                       # starts (Buitrago Ruiz & Gu 2025); see train_initial_state()
    initial_state_scale: float = 1.0   # noise: every float tensor of the state ~ scale * N(0, 1)
    threads: int | None = None         # torch CPU threads (None: torch's default); pin runs with 1
    snapshot_every_s: float = 300.0    # resumable runs: seconds between resume snapshots (0 = only
                                       # when stopped by a signal); see harness/resume.py
    target_loss: float | None = None   # stop once the mean training loss of the last
                                       # LOSS_WINDOW steps falls below this (e.g. the step a
                                       # model leaves a plateau); None = never
    sdpa_cudnn: str = "auto"           # auto | on | off: may SDPA use cuDNN attention on a GPU?
                                       # auto = off with mixed_length (cuDNN builds a plan per
                                       # new shape; archs.attention.fused.sdpa_cudnn_allowed);
                                       # early-stopping checks run under it too

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "seq_len"):
            if getattr(self, key) <= 0:
                raise ValueError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise ValueError(f"train.warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.optimizer == "adam" and self.weight_decay != 0:
            raise ValueError(f"train.optimizer=adam is plain Adam without weight decay, but "
                             f"train.weight_decay={self.weight_decay}; set train.weight_decay=0 "
                             f"or use train.optimizer=adamw")
        if self.initial_state not in INITIAL_STATES:
            raise ValueError(f"train.initial_state must be one of {INITIAL_STATES}, got {self.initial_state!r}")
        if not self.initial_state_scale > 0:
            raise ValueError(f"train.initial_state_scale must be > 0, got {self.initial_state_scale}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"train.threads must be >= 1 or null (torch's default), got {self.threads}")
        if self.target_loss is not None and not self.target_loss > 0:
            raise ValueError(f"train.target_loss must be > 0 or null, got {self.target_loss}")
        if self.sdpa_cudnn not in SDPA_CUDNN_CHOICES:
            raise ValueError(f"train.sdpa_cudnn must be one of {SDPA_CUDNN_CHOICES}, got {self.sdpa_cudnn!r}")
        if self.snapshot_every_s < 0:
            raise ValueError(f"train.snapshot_every_s must be >= 0 (0: only on a stop signal), "
                             f"got {self.snapshot_every_s}")


@dataclass
class ModelConfig:
    """How big each architecture is built. Comparing at different sizes without saying so
    is the field's classic mistake, so every row records the real count."""
    vocab_size: Optional[int] = 256            # None: the task's vocabulary (extrapolation)
    n_layers: int = 2
    match: str = "params"                      # params | active_params (MoE) | flops | state | width
    target_params: Optional[int] = 1_000_000
    target_flops_per_token: Optional[float] = None
    target_state_bytes: Optional[int] = None
    match_seq_len: int = 2048                  # reference length for flops/state matching
    d_model: Optional[int] = None              # match=width: this width for every arch
    d_model_by_arch: Dict[str, int] = field(default_factory=dict)  # per-arch widths (Mamba paper)
    norm_position: str = "pre"                 # pre | post residual blocks (archs.model.LMConfig's default)
    causal: bool = True                        # false: bidirectional (encoder-only) models; restates
                                               # archs.model.LMConfig.causal (tests/harness/test_bidirectional_apps.py)


@dataclass
class MaxLenConfig:
    mode: str = "train_step"                   # which measurement must fit the budget
    memory_budget_gb: float = 2.0
    start: int = 1024
    limit: int = 1 << 22                        # stop doubling here
    resolution: float = 0.05                    # bisect until hi / lo < 1 + resolution


@dataclass
class BenchConfig:
    # Defaults here are conf/bench/cpu.yaml's (tests/conf/test_schema_defaults.py keeps them equal)
    seq_lens: List[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096, 8192])
    batch: int = 1
    dtype: str = "float32"
    modes: List[str] = field(default_factory=lambda: ["forward", "train_step", "decode"])
    warmup: int = 1
    min_run_time: float = 0.2                  # seconds of timed calls per point (CPU blocks)
    min_repeats: int = 3
    decode_steps: int = 16                     # timed decode steps after the context
    gen_tokens: int = 128                      # generate: new tokens after a seq_len prompt
    optimizer_step: bool = False               # train_step includes AdamW.step()
    flush_l2: bool = False                     # CUDA: evict L2 between repetitions
    count_flops: bool = True
    measure_memory: bool = True
    time_budget_s: float = 120.0               # per point; over it the point is a timeout
    compile_allowance_s: float = 300.0         # first call's compile/autotune time not charged (warmup >= 2)
    skip_after_failure: bool = True            # after oom/timeout, skip longer lengths
    search: str = "grid"                       # grid | max_len
    max_len: MaxLenConfig = field(default_factory=MaxLenConfig)
    cpu_memory_limit_gb: Optional[float] = 16.0  # RLIMIT_DATA, so a CPU OOM is an error row
    threads: Optional[int] = None              # torch CPU threads (None: torch's default)


@dataclass
class CostConfig:
    arch: Dict[str, Any] = MISSING
    bench: BenchConfig = field(default_factory=BenchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    device: str = "auto"                       # auto = cuda if available, else cpu
    results_dir: str = "results/local/cost"
    experiment: str = "adhoc"
    force: bool = False                        # re-measure points already in results_dir
    seed: int = 0
    progress: bool = True
    claim_stale_s: float = DEFAULT_STALE_S     # a claim without a heartbeat for this long is taken over
    figures: List[str] = field(default_factory=list)  # the experiment's figures (FIGURES); [] = all that apply


@dataclass
class EvalConfig:
    # Defaults here are conf/eval/default.yaml's (tests/conf/test_schema_defaults.py)
    seq_lens: List[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048, 4096])
    n_sequences: int = 64
    batch_tokens: int = 65536                  # eval batch = max(1, batch_tokens // length)
    chunk_len: Optional[int] = 4096            # longer sequences run in state-carrying chunks
    seed: int = 1234                           # eval data differ from training data
    time_budget_s: float = 900.0               # per length; over it: timeout, longer lengths skipped
    cpu_memory_limit_gb: Optional[float] = 16.0  # RLIMIT_DATA on CPU: past it an allocation is an OOM
                                               # (micro-batch halved, then an `oom` row), not the OOM killer
    trigger_distances: Optional[List[int]] = None  # also evaluate with the trigger this many tokens
                                               # before the query (Task.at_distance): one row per
                                               # (length, distance) with a trigger_distance column
    distance_at: str = "every_length"          # every_length: each distance at every length that
                                               # holds it; shortest: only at the shortest one (with
                                               # d = 2^k - 1, the trigger at the start of a 2^k-token
                                               # sequence: the Mamba paper's reproduction's evaluation)
    sdpa_cudnn: str = "auto"                   # auto | on | off: cuDNN attention on a GPU; auto = off
                                               # (every length is a new shape, a new cuDNN plan)

    def __post_init__(self) -> None:
        if self.sdpa_cudnn not in SDPA_CUDNN_CHOICES:
            raise ValueError(f"eval.sdpa_cudnn must be one of {SDPA_CUDNN_CHOICES}, got {self.sdpa_cudnn!r}")


@dataclass
class ExtrapolateConfig:
    arch: Dict[str, Any] = MISSING
    task: Dict[str, Any] = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=None, target_params=None,
                                                                   match="width", d_model=128))
    device: str = "auto"
    results_dir: str = "results/local/extrapolate"
    checkpoint_dir: Optional[str] = "runs/checkpoints"  # None: do not keep weights
    experiment: str = "adhoc"
    force: bool = False
    progress: bool = True
    claim_stale_s: float = DEFAULT_STALE_S     # a claim without a heartbeat for this long is taken over
    figures: List[str] = field(default_factory=list)  # the experiment's figures (FIGURES); [] = all that apply


def to_container(node: Any) -> Any:
    """A config node (resolved) as plain Python; anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="cost_schema", node=CostConfig)
    cs.store(name="extrapolate_schema", node=ExtrapolateConfig)
    cs.store(group="bench", name="bench_schema", node=BenchConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    cs.store(group="eval", name="eval_schema", node=EvalConfig)


def compose(app: str, overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """``app``'s config (``cost`` or ``extrapolate``) as its command line would compose it,
    for code that calls an app's ``run`` or rebuilds its model without the command line (the
    probe, notebooks, tests). The apps register their schemas in ``main()``, not on import;
    this registers them first."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(app, overrides=list(overrides), return_hydra_config=return_hydra_config)
