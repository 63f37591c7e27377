"""The cost sweep: time, memory, FLOPs and decode state of an architecture against length.

    python -m harness.cost arch=mamba bench=cpu
    python -m harness.cost -m arch=transformer,mamba,linear_attention bench.seq_lens=[512,1024,2048,4096]
    python -m harness.cost -m 'arch=glob(*)' bench=cpu
    python -m harness.cost arch=transformer bench.search=max_len bench.max_len.memory_budget_gb=4

One Hydra job = one architecture config; this module gives its points (every (mode,
length)), their keys and a measure function, and ``harness.sweep.run_points`` runs them
(resume by key, claims shared with concurrent sweeps, failure -> row, skip-after-failure,
SIGTERM -> ``timeout`` row; see there):
  * an OOM / error / timeout point becomes a row with that status and the sweep goes on;
    longer lengths of the same mode are then recorded as ``skipped`` (configurable);
  * re-running skips points already measured (keyed by a hash of every setting that
    affects the measurement or its outcome, limits included) unless ``force=true`` - kill
    a sweep at any moment, re-run it, and every point ends up measured exactly once.
Launchers: the basic one (sequential; right for timing), joblib, submitit_local/slurm
(``hydra/launcher=...``); nothing home-made.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from harness.build import BuiltModel, build
from harness.checks import (absolute_dir, as_schema, building_under_cap, check_writable_dir, validate_bench,
                            validate_figures, validate_model)
from harness.claims import check_stale_s
from harness.cluster import start_app
from harness.config import CONF_DIR, DTYPES, CostConfig, to_container
from harness.devices import resolve_device
from harness.env import device_name
from harness.measure import fits_in_memory, measure
from harness.results import load_rows_where, point_key
from harness.sweep import Point, SweepSettings, exit_on_terminate, run_points
from harness.timing import classify_exception, free_memory, job_limits, run_with_timeout

log = logging.getLogger(__name__)
DECODE_MODES = ("decode", "generate")
BIDIRECTIONAL_SKIP = ("bidirectional models do not decode (causal=false: every output depends on "
                      "the tokens after it)")


def _as_schema(cfg: DictConfig | CostConfig) -> CostConfig:
    return as_schema(cfg, CostConfig)  # `+bench.seq_lenz=...` is refused, not silently ignored


class Sweep:
    """The points of one architecture config: their keys, rows and measure function;
    ``harness.sweep.run_points`` does the resume / claim / failure / skip loop."""

    def __init__(self, cfg: CostConfig):
        self.cfg, self.bench = cfg, cfg.bench
        self.device = resolve_device(cfg.device)
        self.built: BuiltModel = build(cfg.arch, cfg.model, cfg.model.vocab_size or 256)
        self.model = self.built.model.to(device=self.device, dtype=DTYPES[self.bench.dtype])  # the same module

    # -- bookkeeping -------------------------------------------------------------------
    def settings(self, mode: str, seq_len: int) -> dict[str, Any]:
        """Everything that affects a measurement or its outcome: its hash is the resume key
        (the limits too: a point that ran out of a 0.7 GB cap is not the answer for no cap)."""
        b = self.bench
        return {"arch": self.built.name, "arch_kwargs": self.built.kwargs, "sizing": self.built.sizing,
                "mode": mode, "seq_len": seq_len, "batch": b.batch, "dtype": b.dtype,
                "device": device_name(self.device), "search": b.search,
                "timing": [b.warmup, b.min_run_time, b.min_repeats, b.decode_steps, b.flush_l2,
                           b.optimizer_step] + ([b.gen_tokens] if mode == "generate" else []),
                "limits": {"time_budget_s": b.time_budget_s, "cpu_memory_limit_gb": b.cpu_memory_limit_gb,
                           # it can only change an outcome with two or more warm-up calls
                           **({"compile_allowance_s": b.compile_allowance_s} if b.warmup >= 2 else {})}}

    def key(self, mode: str, seq_len: int) -> str:
        return point_key(self.settings(mode, seq_len), f"{self.built.label}-{mode}-{seq_len}")

    def row(self, mode: str, seq_len: int, status: str = "ok", reason: str = "", **fields) -> dict:
        b = self.bench
        return self.built.row(
            self.device, seq_len, status=status, reason=reason, settings=self.settings(mode, seq_len),
            point_key=self.key(mode, seq_len), experiment=self.cfg.experiment, figures=self.cfg.figures,
            batch=b.batch, dtype=b.dtype, mode=mode, time_budget_s=b.time_budget_s,
            cpu_memory_limit_gb=b.cpu_memory_limit_gb, active_params=self.model.num_params(active_only=True),
            **fields)

    def _no_decode(self, mode: str, seq_len: int) -> dict | None:
        """A ``skipped`` row for a decode mode of a bidirectional model, else None."""
        if mode.removeprefix("max_len:") in DECODE_MODES and not getattr(self.model, "causal", True):
            return self.row(mode, seq_len, "skipped", BIDIRECTIONAL_SKIP)
        return None

    def _sweep_settings(self) -> SweepSettings:
        return SweepSettings(results_dir=self.cfg.results_dir, force=self.cfg.force,
                             skip_after_failure=self.bench.skip_after_failure,
                             claim_stale_s=self.cfg.claim_stale_s, progress=self.cfg.progress,
                             desc=self.built.label)

    def _failure(self, point: Point, status: str, reason: str) -> dict:
        mode, n = point.info["mode"], point.info["seq_len"]
        return self.row(mode, n, status, reason, wall_s=time.perf_counter() - point.info.get("start", 0.0))

    # -- the sweep ---------------------------------------------------------------------
    def run_grid(self) -> None:
        lengths = sorted(set(self.bench.seq_lens))
        points = [Point(self.key(mode, n), group=mode, info={"mode": mode, "seq_len": n}, desc=f"{mode} L={n}", at=f"seq_len={n}")
                  for mode in self.bench.modes for n in lengths]

        def too_long(point: Point) -> dict | None:
            limit, n, mode = self.model.max_seq_len, point.info["seq_len"], point.info["mode"]
            if limit is not None and n > limit:
                return self.row(mode, n, "skipped", f"length {n} > max_seq_len {limit}")
            return self._no_decode(mode, n)

        run_points(points, self.measure_point, self._failure_and_reset, self._sweep_settings(), precheck=too_long)

    def _failure_and_reset(self, point: Point, status: str, reason: str) -> dict:
        self.model.zero_grad(set_to_none=True)
        return self._failure(point, status, reason)

    def measure_point(self, point: Point) -> dict:
        mode, seq_len = point.info["mode"], point.info["seq_len"]
        point.info["start"] = start = time.perf_counter()
        fields = run_with_timeout(lambda: measure(self.model, mode, seq_len, self.bench, self.device),
                                  self.bench.time_budget_s)
        return self.row(mode, seq_len, wall_s=time.perf_counter() - start, **fields)

    def run_max_len(self) -> None:
        m = self.bench.max_len
        key = point_key(self.settings(f"max_len:{m.mode}", 0) | {"max_len": to_container(OmegaConf.structured(m))},
                        f"{self.built.label}-max_len-{m.mode}")
        point = Point(key, info={"mode": f"max_len:{m.mode}", "seq_len": 0}, desc=f"max_len {m.mode}")
        no_decode = self._no_decode(point.info["mode"], 0)
        if no_decode is not None:
            no_decode["point_key"] = key
        run_points([point], lambda p: self.max_len_row(key), self._failure, self._sweep_settings(),
                   precheck=lambda p: no_decode)

    def max_len_row(self, key: str) -> dict:
        """Longest length whose ``max_len.mode`` step fits the memory budget: double, then bisect."""
        m = self.bench.max_len
        mode, budget = m.mode, m.memory_budget_gb * 2**30
        probes: list[tuple[int, bool, int | None, str]] = []

        def probe(n: int) -> bool:
            try:
                ok, peak, why = fits_in_memory(self.model, mode, n, self.bench, self.device, budget)
            except Exception as exc:  # noqa: BLE001 - an OOM means "does not fit"
                status, why = classify_exception(exc)
                free_memory(exc)
                ok, peak = False, None
            probes.append((n, ok, peak, why))
            return ok

        limit = min(m.limit, self.model.max_seq_len or m.limit)
        lo, hi = 0, None
        n = min(m.start, limit)
        while hi is None:
            if probe(n):
                lo = n
                if n >= limit:
                    break
                n = min(2 * n, limit)
            else:
                hi = n
        while hi is not None and lo and hi / lo > 1 + m.resolution:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if probe(mid) else (lo, mid)
        peak = next((p for n_, ok, p, _ in reversed(probes) if ok and n_ == lo), None)
        status, reason = ("ok", "") if lo else ("oom", probes[0][3] or "the start length does not fit")
        bound = "limit" if hi is None else "memory budget"
        row = self.row(f"max_len:{mode}", lo, status, reason, peak_mem_bytes=peak, search="max_len",
                       memory_budget_bytes=int(budget), bounded_by=bound, first_failing_len=hi,
                       probes=str([(n_, ok) for n_, ok, _, _ in probes]))
        row["point_key"] = key
        return row


def run(cfg: DictConfig | CostConfig) -> pd.DataFrame:
    """Measure one architecture config over ``bench``; return this run's rows (all of the
    results directory's rows for this architecture, when points were resumed)."""
    cfg = _as_schema(cfg)
    validate_bench(cfg.bench)
    validate_model(cfg.model)
    validate_figures(cfg.figures)
    check_stale_s(cfg.claim_stale_s)
    device = resolve_device(cfg.device)
    check_writable_dir(cfg.results_dir, "results_dir")
    build(cfg.arch, cfg.model, cfg.model.vocab_size or 256, validate_only=True)  # fail before compute
    # The threads and the cap hold for this job only: the next job of a multirun starts afresh.
    with job_limits(device, cfg.bench.cpu_memory_limit_gb, threads=cfg.bench.threads):
        torch.manual_seed(cfg.seed)
        with building_under_cap(cfg.bench.cpu_memory_limit_gb, "bench.cpu_memory_limit_gb"):
            sweep = Sweep(cfg)
        if cfg.bench.search == "max_len":
            sweep.run_max_len()
        else:
            sweep.run_grid()
    return load_rows_where(cfg.results_dir, label=sweep.built.label)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="cost")
def _app(cfg: DictConfig) -> None:
    # Launchers may run jobs elsewhere; results always land where the user pointed.
    cfg.results_dir = absolute_dir(cfg.results_dir, "results_dir")
    df = exit_on_terminate(lambda: run(cfg))
    if not df.empty:
        ok = df[df["status"] == "ok"]
        log.info("%d points (%d ok) in %s", len(df), len(ok), cfg.results_dir)


def main() -> None:
    """The command line (``python -m harness.cost``, ``archbench-cost``): what Hydra needs is
    set up here (``harness.cluster.start_app``), not when this module is imported."""
    start_app(_app)


if __name__ == "__main__":
    main()
