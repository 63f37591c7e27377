"""Structured configs: the schemas Hydra validates every run against.

A typo (``bench.seq_lenz``) or a wrong type fails at composition, before any compute,
with Hydra's message naming the key; values are checked again when a run starts
(``validate_*``) so a bad value (a negative length, an unknown dtype) names its key too.
The ``arch`` node is free-form (its keys are the architecture's own keyword arguments)
and is checked by the registry against the builder's signature.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from harness.train import TrainConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("forward", "train_step", "decode", "generate")
MATCH = ("params", "active_params", "flops", "state", "width")
# Figures an experiment can declare (``figures: [...]``); harness.plot draws exactly these.
FIGURES = ("time_vs_length", "memory_vs_length", "throughput_vs_length", "decode_vs_context",
           "generation_throughput", "accuracy_vs_state", "extrapolation_accuracy", "extrapolation_loss",
           "extrapolation_bpb", "extrapolation_perplexity")


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


@dataclass
class MaxLenConfig:
    mode: str = "train_step"                   # which measurement must fit the budget
    memory_budget_gb: float = 2.0
    start: int = 1024
    limit: int = 1 << 22                        # stop doubling here
    resolution: float = 0.05                    # bisect until hi / lo < 1 + resolution


@dataclass
class BenchConfig:
    seq_lens: List[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096])
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
    skip_after_failure: bool = True            # after oom/timeout, skip longer lengths
    search: str = "grid"                       # grid | max_len
    max_len: MaxLenConfig = field(default_factory=MaxLenConfig)
    cpu_memory_limit_gb: Optional[float] = None  # RLIMIT_DATA, so a CPU OOM is an error row
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
    claim_stale_s: float = 6 * 3600.0          # a claim from another host older than this is taken over
    figures: List[str] = field(default_factory=list)  # the experiment's figures (FIGURES); [] = all that apply


@dataclass
class EvalConfig:
    seq_lens: List[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    n_sequences: int = 64
    batch_tokens: int = 65536                  # eval batch = max(1, batch_tokens // length)
    chunk_len: Optional[int] = 4096            # longer sequences run in state-carrying chunks
    seed: int = 1234                           # eval data differ from training data
    time_budget_s: float = 900.0               # per length; over it: timeout, longer lengths skipped
    cpu_memory_limit_gb: Optional[float] = None  # RLIMIT_DATA on CPU: past it an allocation is an OOM
                                               # (micro-batch halved, then an `oom` row), not the OOM killer


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
    claim_stale_s: float = 6 * 3600.0          # a claim from another host older than this is taken over
    figures: List[str] = field(default_factory=list)  # the experiment's figures (FIGURES); [] = all that apply


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="cost_schema", node=CostConfig)
    cs.store(name="extrapolate_schema", node=ExtrapolateConfig)
    cs.store(group="bench", name="bench_schema", node=BenchConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    cs.store(group="eval", name="eval_schema", node=EvalConfig)


def _fail(key: str, problem: str) -> None:
    raise ValueError(f"{key}: {problem}")


def validate_model(m: ModelConfig | DictConfig, prefix: str = "model") -> None:
    if m.match not in MATCH:
        _fail(f"{prefix}.match", f"must be one of {list(MATCH)}, got {m.match!r}")
    if m.n_layers is not None and m.n_layers <= 0:
        _fail(f"{prefix}.n_layers", f"must be positive, got {m.n_layers}")
    needed = {"params": "target_params", "active_params": "target_params", "flops": "target_flops_per_token",
              "state": "target_state_bytes", "width": "d_model"}[m.match]
    value = getattr(m, needed)
    if value is None or value <= 0:
        _fail(f"{prefix}.{needed}", f"match={m.match!r} needs a positive {needed}, got {value}")
    for arch, width in dict(m.d_model_by_arch).items():
        if width <= 0:
            _fail(f"{prefix}.d_model_by_arch.{arch}", f"must be positive, got {width}")


def validate_figures(figures: List[str]) -> None:
    bad = [f for f in figures if f not in FIGURES]
    if bad:
        _fail("figures", f"unknown figure(s) {bad}; choose from {list(FIGURES)}")


def validate_bench(b: BenchConfig | DictConfig) -> None:
    if not b.seq_lens or any(n <= 0 for n in b.seq_lens):
        _fail("bench.seq_lens", f"must be a non-empty list of positive lengths, got {list(b.seq_lens)}")
    if b.batch <= 0:
        _fail("bench.batch", f"must be positive, got {b.batch}")
    if b.dtype not in DTYPES:
        _fail("bench.dtype", f"must be one of {list(DTYPES)}, got {b.dtype!r}")
    bad = [m for m in b.modes if m not in MODES]
    if bad or not b.modes:
        _fail("bench.modes", f"must be a non-empty subset of {list(MODES)}, got {list(b.modes)}")
    if b.search not in ("grid", "max_len"):
        _fail("bench.search", f"must be 'grid' or 'max_len', got {b.search!r}")
    if b.max_len.mode not in MODES:
        _fail("bench.max_len.mode", f"must be one of {list(MODES)}, got {b.max_len.mode!r}")
    for key in ("warmup", "decode_steps"):
        if getattr(b, key) < 0:
            _fail(f"bench.{key}", f"must be >= 0, got {getattr(b, key)}")
    if b.min_repeats < 1 or b.min_run_time <= 0 or b.time_budget_s <= 0:
        _fail("bench.min_repeats/min_run_time/time_budget_s", "must be positive")


def validate_eval(e: EvalConfig | DictConfig) -> None:
    if not e.seq_lens or any(n <= 0 for n in e.seq_lens):
        _fail("eval.seq_lens", f"must be a non-empty list of positive lengths, got {list(e.seq_lens)}")
    if e.n_sequences <= 0 or e.batch_tokens <= 0:
        _fail("eval.n_sequences/batch_tokens", "must be positive")
    if e.time_budget_s <= 0:
        _fail("eval.time_budget_s", f"must be positive, got {e.time_budget_s}")
    if e.chunk_len is not None and e.chunk_len <= 0:
        _fail("eval.chunk_len", f"must be positive or null, got {e.chunk_len}")
    if e.cpu_memory_limit_gb is not None and e.cpu_memory_limit_gb <= 0:
        _fail("eval.cpu_memory_limit_gb", f"must be positive or null, got {e.cpu_memory_limit_gb}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device torch knows; use device=auto, cpu, cuda "
                         f"or cuda:<index>") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r}: archbench runs on cpu or cuda; use device=auto, cpu, cuda "
                         f"or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=auto or cpu")
    return device


def to_container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
