"""Training loop for the extrapolation experiment (and anyone who wants one).

AdamW with warm-up + cosine decay, gradient clipping, the MoE auxiliary loss when the
architecture has one, bf16/fp16 autocast on a GPU, fixed seeds, a tqdm progress bar with
loss and tokens/s, divergence detection (a result, not a crash), early stopping at a
target accuracy, optional mixed-length training, and weights-only checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from archs.attention.fused import sdpa_cudnn_allowed, sdpa_cudnn_context
from archs.counting import trains_by_counting
from harness.allocator import keep_freed_memory, release_freed_memory
from harness.config import TrainConfig
from harness.resume import hold_stop_signals, load_snapshot, restore_rng, rng_states, save_snapshot
from harness.tasks import Batch, Task

log = logging.getLogger(__name__)

# TrainConfig fields added after results were committed: left out of a run's identity
# (checkpoint and result keys) while at these defaults, so earlier keys stay valid.
# `threads`, `snapshot_every_s` and `sdpa_cudnn` (which SDPA kernel runs: speed, and the
# last bits of a GPU run that is not bitwise anyway) never shape the weights: always left out.
_LATER_FIELDS = {"optimizer": "adamw", "initial_state": "zero", "initial_state_scale": 1.0,
                 "target_loss": None}
LOSS_WINDOW = 100  # steps averaged for train.target_loss (one batch of 8 is noisy)
_NOT_IDENTITY = ("threads", "snapshot_every_s", "sdpa_cudnn")


def identity_settings(settings: dict) -> dict:
    """The training settings (a TrainConfig as a dict) that identify a trained model."""
    out = {k: v for k, v in settings.items() if k not in _NOT_IDENTITY}
    for key, default in _LATER_FIELDS.items():
        if out.get(key, default) == default:
            out.pop(key, None)
    if out.get("initial_state", "zero") != "noise":
        out.pop("initial_state_scale", None)  # the scale means nothing without noise
    return out


def factor_columns(cfg: TrainConfig) -> dict:
    """Training factors as result-row columns, so a study's rows can be grouped by them."""
    return {"train_optimizer": cfg.optimizer, "train_schedule": cfg.schedule, "train_lr": cfg.lr,
            "train_weight_decay": cfg.weight_decay, "train_batch_size": cfg.batch_size,
            "train_steps_budget": cfg.steps, "train_mixed_length": cfg.mixed_length,
            "train_warmup_steps": cfg.warmup_steps,
            "train_initial_state": cfg.initial_state,
            "train_initial_state_scale": cfg.initial_state_scale if cfg.initial_state == "noise" else None}


@dataclass
class TrainResult:
    status: str = "ok"                 # ok | diverged
    reason: str = ""
    steps_done: int = 0
    final_loss: float = math.nan
    tokens_seen: int = 0
    wall_s: float = 0.0
    early_stopped: bool = False
    stop_reason: str = ""              # "" (all steps) | "target accuracy" | "time budget"
    sdpa_cudnn: bool | None = None     # whether SDPA could pick cuDNN attention (None: not CUDA,
                                       # or a run saved before 2026-12-04 - not recorded then)
    history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then the configured decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    if cfg.schedule == "linear":
        return cfg.lr * (1 - (1 - floor) * progress)
    return cfg.lr


def _fused_ok(params: list[torch.nn.Parameter]) -> bool:
    """torch's fused (single-kernel) Adam/AdamW runs on CPU and CUDA floating parameters;
    it computes the same update as the per-parameter loop in a fraction of the launches."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                for p in params)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = _fused_ok(params)
    if cfg.optimizer == "adam":
        # Plain Adam over every parameter, no decay (TrainConfig refuses weight_decay != 0).
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
    # Decay only matrices of linear layers/convs; embeddings, norms and biases are exempt,
    # and so are SSM parameters marked `_no_weight_decay` (A_log, D, dt biases).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.dim() < 2 or "embed" in name or getattr(p, "_no_weight_decay", False)
        (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_loss(model, inputs, targets, amp, device, aux_weight) -> tuple[torch.Tensor, torch.Tensor]:
    with autocast(device, amp):
        logits = model(inputs)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    aux = model.aux_loss()
    total = loss + aux_weight * aux if aux is not None else loss
    return total, loss


# --- initial states for training (issue 11: state coverage) ------------------------------
#
# "Understanding and Improving Length Generalization in Recurrent Models" (Buitrago Ruiz &
# Gu, 2025) traces the failure past the training length to states the model never saw in
# training, and widens that coverage by starting training sequences from other states:
#
#   zero    every sequence starts from model.init_state (the usual forward pass);
#   noise   init_state, then every floating tensor in it replaced by scale * N(0, 1)
#           (drawn from a generator seeded with train.seed + 1), fresh every batch;
#   passed  the detached final state of the previous batch's sequences (state passing, i.e.
#           truncated BPTT over independent sequences); the first batch starts from zero.
#
# Both run each batch through model.prefill(tokens, state), so they work for every mixer
# that declares Mixer.accepts_initial_state (a fixed-size recurrent state whose prefill
# is differentiable) and are refused otherwise. The state's position counter restarts
# at 0 each batch: the sequence is new even when the state is not.

def map_state(fn: Callable[[torch.Tensor], torch.Tensor], obj):
    """``obj`` (a nested state: tensors in dicts / lists / tuples / dataclasses) with
    ``fn`` applied to every tensor; other leaves (ints, None) are kept."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_state(fn, v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(map_state(fn, v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_state(fn, v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: map_state(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **fields)
    return obj


def check_initial_state_support(model: torch.nn.Module, mode: str) -> None:
    """Raise ValueError unless every mixer of ``model`` accepts an initial state."""
    name = getattr(model, "arch_name", type(model).__name__)
    if not hasattr(model, "prefill") or not getattr(model, "mixers", None):
        raise ValueError(f"train.initial_state={mode!r} needs the LM shell's prefill(tokens, state) "
                         f"and mixers; {name} lacks them. Use train.initial_state=zero.")
    lacking = sorted({type(m).__name__ for m in model.mixers if not getattr(m, "accepts_initial_state", False)})
    if lacking:
        raise ValueError(
            f"train.initial_state={mode!r} starts training sequences from a given recurrent state, "
            f"but {name} has mixer(s) {lacking} that do not accept one (their class sets no "
            f"Mixer.accepts_initial_state = True; attention's KV cache, for one, is a growing "
            f"record of past tokens, not a fixed-size state). Use train.initial_state=zero for "
            f"this architecture.")


class InitialStates:
    """The starting state of each training batch for ``cfg.initial_state`` noise | passed."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
        check_initial_state_support(model, cfg.initial_state)
        self.model, self.cfg, self.device = model, cfg, device
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
        self.carried = None  # passed: the previous batch's detached final state

    def noise(self, batch_size: int):
        scale = self.cfg.initial_state_scale

        def draw(t: torch.Tensor) -> torch.Tensor:
            if not t.is_floating_point():
                return t
            return (scale * torch.randn(t.shape, generator=self.gen, dtype=torch.float32)).to(t.device, t.dtype)

        return map_state(draw, self.model.init_state(batch_size, device=self.device))

    def start(self, batch_size: int):
        if self.cfg.initial_state == "noise":
            return self.noise(batch_size)
        if self.carried is None:
            return self.model.init_state(batch_size, device=self.device)
        return self.carried

    def loss(self, inputs, targets, amp, aux_weight) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``batch_loss``, but the batch continues from ``start()`` through model.prefill."""
        state = self.start(inputs.shape[0])
        with autocast(self.device, amp):
            logits, final = self.model.prefill(inputs, state)
        if self.cfg.initial_state == "passed":
            self.carried = map_state(torch.Tensor.detach, final)
            self.carried.pos = 0
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        aux = self.model.aux_loss()
        total = loss + aux_weight * aux if aux is not None else loss
        return total, loss


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU intra-op threads (None: leave torch's default)."""
    if threads is not None:
        torch.set_num_threads(threads)


def training_batch(task: Task, cfg: TrainConfig, gen: torch.Generator) -> Batch:
    """The next training batch of the stream ``gen`` draws (at a random length in
    [min_len, seq_len] with ``mixed_length``)."""
    seq_len = cfg.seq_len
    if cfg.mixed_length:
        seq_len = int(torch.randint(task.min_len(), cfg.seq_len + 1, (1,), generator=gen))
    return task.sample(cfg.batch_size, seq_len, gen)


def train(model: torch.nn.Module, task: Task, cfg: TrainConfig, device: torch.device | str = "cpu",
          *, eval_fn: Callable[[], float] | None = None, progress: bool = True,
          resume_path: str | os.PathLike | None = None, resume_identity: str = "") -> TrainResult:
    """Train ``model`` on ``task``; ``eval_fn`` returns the accuracy used for early stopping
    (its ``generator`` attribute, if any, is part of a resume snapshot).

    ``resume_path``: keep a resume snapshot there and continue from it when it exists and
    its identity is ``resume_identity`` (harness/resume.py); the caller deletes it once the
    final weights are saved. A finished run's snapshot returns its result at once.
    A count-based model (``archs.counting``) is trained by ``count_training_tokens`` instead."""
    if trains_by_counting(model):  # its training is one counting pass (harness/counting.py)
        from harness.counting import count_training_tokens  # imports this module: not at the top
        return count_training_tokens(model, task, cfg, device, progress=progress)
    device = torch.device(device)
    set_threads(cfg.threads)
    keep_freed_memory()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    amp = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    states = None if cfg.initial_state == "zero" else InitialStates(model, cfg, device)
    run = _Run(model, opt, scaler, gen, states, eval_fn, resume_path, resume_identity)
    if run.restore(device) and run.finished:
        model.eval()
        return run.result
    result = run.result
    bar = tqdm(range(run.start_step, cfg.steps), initial=run.start_step, total=cfg.steps,
               desc=f"train {getattr(model, 'arch_name', '')}", disable=not progress,
               dynamic_ncols=True, leave=False)
    result.sdpa_cudnn = sdpa_cudnn_allowed(cfg.sdpa_cudnn, device, shapes_vary=cfg.mixed_length)
    try:
        with sdpa_cudnn_context(result.sdpa_cudnn):
            for step in bar:
                # a stop signal waits for the end of the step: snapshots sit at step boundaries
                with hold_stop_signals():
                    stop = _train_step(step, run, task, cfg, device, amp, bar)
                if stop:
                    break
                run.maybe_snapshot(cfg.snapshot_every_s)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # a stop signal or Ctrl-C: keep the progress
            run.snapshot()
        raise
    finally:
        bar.close()
        release_freed_memory()
    model.eval()
    result.wall_s = run.elapsed()
    run.snapshot(finished=True)
    return result


def _train_step(step: int, run: "_Run", task: Task, cfg: TrainConfig, device: torch.device,
                amp: torch.dtype | None, bar) -> bool:
    """One optimisation step (and the checks after it); True when training should stop."""
    model, opt, result = run.model, run.opt, run.result
    batch = training_batch(task, cfg, run.gen).to(device)
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    if run.states is None:
        total, loss = batch_loss(model, batch.inputs, batch.targets, amp, device, cfg.aux_loss_weight)
    else:
        total, loss = run.states.loss(batch.inputs, batch.targets, amp, cfg.aux_loss_weight)
    value = loss.item()
    run.first_loss = value if run.first_loss is None else run.first_loss
    if not math.isfinite(value) or value > cfg.diverge_factor * max(run.first_loss, 1.0):
        result.status, result.reason = "diverged", f"loss {value:.4g} at step {step}"
        return True
    opt.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    if cfg.grad_clip > 0:
        run.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    run.scaler.step(opt)
    run.scaler.update()
    result.steps_done, result.final_loss = step + 1, value
    result.tokens_seen += batch.inputs.numel()
    if step % cfg.log_every == 0 or step == cfg.steps - 1:
        result.history.append({"step": step, "loss": value, "lr": lr_at(step, cfg)})
        bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{result.tokens_seen / max(run.elapsed(), 1e-9):.0f}")
    if run.eval_fn and cfg.eval_every and cfg.target_acc is not None and (step + 1) % cfg.eval_every == 0:
        model.eval()
        acc = run.eval_fn()
        model.train()
        result.history.append({"step": step, "eval_acc": acc})
        if acc >= cfg.target_acc:
            result.early_stopped, result.stop_reason = True, "target accuracy"
            return True
    if cfg.target_loss is not None:
        run.recent_losses.append(value)
        window = run.recent_losses[-LOSS_WINDOW:]
        if len(window) == LOSS_WINDOW and sum(window) / LOSS_WINDOW < cfg.target_loss:
            result.early_stopped, result.stop_reason = True, "target loss"
            return True
        del run.recent_losses[:-LOSS_WINDOW]
    if cfg.time_budget_s is not None and run.elapsed() > cfg.time_budget_s:
        result.early_stopped, result.stop_reason = True, "time budget"
        return True
    return False


def _tensors(state) -> list[torch.Tensor] | None:
    """A nested decode state's tensors in map_state's order (a snapshot stores no classes)."""
    if state is None:
        return None
    found: list[torch.Tensor] = []
    map_state(lambda t: found.append(t) or t, state)
    return found


class _Run:
    """A training run's mutable state and its resume snapshots (harness/resume.py)."""

    def __init__(self, model, opt, scaler, gen, states, eval_fn, resume_path, identity) -> None:
        self.model, self.opt, self.scaler, self.gen, self.states = model, opt, scaler, gen, states
        self.eval_fn = eval_fn
        self.path = Path(resume_path) if resume_path else None
        self.identity = identity
        self.rngs = {"initial_state": states.gen if states else None,
                     "eval": getattr(eval_fn, "generator", None)}
        self.result, self.first_loss = TrainResult(), None
        self.recent_losses: list[float] = []  # train.target_loss's window
        self.start_step, self.prior_wall, self.finished = 0, 0.0, False
        self.started = self.last_snapshot = time.perf_counter()

    def elapsed(self) -> float:
        """Wall seconds of training, earlier sessions of a resumed run included."""
        return self.prior_wall + time.perf_counter() - self.started

    def restore(self, device: torch.device) -> bool:
        snap = load_snapshot(self.path, self.identity)
        if snap is None:
            return False
        self.model.load_state_dict(snap["model"])
        self.opt.load_state_dict(snap["optimizer"])
        self.scaler.load_state_dict(snap["scaler"])
        restore_rng(snap["rng"], self.gen, self.rngs)
        if self.states is not None and snap["carried"] is not None:
            # the passed state, rebuilt in the model's own state structure from its tensors
            leaves = iter(snap["carried"])
            template = self.model.init_state(snap["carried"][0].shape[0], device=device)
            self.states.carried = map_state(lambda t: next(leaves).to(device, t.dtype), template)
        self.result = TrainResult(**snap["result"])
        self.first_loss, self.start_step = snap["first_loss"], snap["step"]
        self.recent_losses = list(snap.get("recent_losses", []))
        self.prior_wall, self.finished = snap["wall_s"], snap.get("finished", False)
        log.info("resumed %s at step %d of %s", self.path, self.start_step,
                 "a finished run" if self.finished else "an interrupted run")
        return True

    def snapshot(self, finished: bool = False) -> None:
        if self.path is None:
            return
        save_snapshot(self.path, self.identity, step=self.result.steps_done, model=self.model,
                      optimizer=self.opt, scaler=self.scaler, rng=rng_states(self.gen, self.rngs),
                      carried=_tensors(self.states.carried if self.states else None), result=self.result,
                      first_loss=self.first_loss, wall_s=self.elapsed(),
                      recent_losses=self.recent_losses, finished=finished)
        self.last_snapshot = time.perf_counter()

    def maybe_snapshot(self, every_s: float) -> None:
        if every_s and time.perf_counter() - self.last_snapshot > every_s:
            self.snapshot()


# --- checkpoints: weights only, loaded without unpickling arbitrary objects ---------------
#
# A checkpoint is {"format": 2, "identity": JSON text, "sha256": hash of the weights,
# "weights": state_dict}: it says which training run made it (the run's key and settings,
# its TrainResult), so a file copied or moved to another run's name is refused, and the
# hash catches weights altered after the save. (Format 1, a bare state_dict, is read
# where no identity is asked for.)

CHECKPOINT_FORMAT = 2


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read as this model's weights."""


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, identity: dict | None = None) -> None:
    """Write ``model``'s weights with ``identity`` (JSON-able: the run's ``key``, settings,
    result) and their hash, atomically; a full disk is a ``DiskFullError`` naming ``path``."""
    from harness.atomic import atomic_write  # the one atomic writer (never a half-written checkpoint)

    state = model.state_dict()
    record = {"format": CHECKPOINT_FORMAT, "identity": json.dumps(identity or {}, sort_keys=True),
              "sha256": weights_hash(state), "weights": state}
    atomic_write(path, lambda tmp: torch.save(record, tmp))


def _refuse(path, problem: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} {problem}. Re-run with force=true to train again (the file "
                           f"is then replaced), or delete it.")


def load_identified(model: torch.nn.Module, path: str | os.PathLike, key: str | None = None) -> dict:
    """Load ``path``'s weights into ``model`` and return the identity stored with them.
    With ``key``, the file must have been written for the run with that key: a checkpoint
    of another run (copied, moved, swapped), one without an identity, or weights that do not
    match their hash is a ``CheckpointError`` saying which, never loaded."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad file
        # torch's own message may advise weights_only=False (unsafe); do not repeat it.
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = "" if "weights_only" in str(exc) else f" ({type(exc).__name__}: {detail[:200]})"
        raise _refuse(path, f"cannot be loaded{detail}: it is truncated, corrupt or from other code") from None
    identified = isinstance(record, dict) and record.get("format") == CHECKPOINT_FORMAT
    identity = json.loads(record["identity"]) if identified else {}
    if key is not None:
        if not identified:
            raise _refuse(path, "records no identity (written by an older archbench or another program), so "
                                "it cannot be shown to belong to this run")
        if identity.get("key") != key:
            raise _refuse(path, f"was written by training run {identity.get('key')!r}, not this one ({key!r}): "
                                f"it was copied or moved here from another run ({_describe(identity)})")
    weights = record["weights"] if identified else record
    if identified and weights_hash(weights) != record.get("sha256"):
        raise _refuse(path, "holds weights that do not match the hash saved with them (altered or damaged "
                            "after it was written)")
    try:
        model.load_state_dict(weights)
    except Exception as exc:  # noqa: BLE001 - another model's weights
        raise _refuse(path, f"does not fit this model ({type(exc).__name__}: {str(exc).strip()[:200]})") from None
    return identity


def _describe(identity: dict) -> str:
    settings = identity.get("settings") or {}
    train = settings.get("train") or {}
    return f"arch {settings.get('arch')!r}, seed {train.get('seed')!r}, seq_len {train.get('seq_len')!r}"


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load weights (``weights_only=True``: no arbitrary objects are unpickled), without an
    identity check (``load_identified`` does one). A file that does not load - truncated,
    garbage, another model's - is a ``CheckpointError`` naming it and the fix; loading it
    less safely is never the fix."""
    load_identified(model, path)
    return model
