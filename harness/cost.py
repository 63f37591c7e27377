"""The cost sweep: time, memory, FLOPs and decode state of an architecture against length.

    python -m harness.cost arch=mamba bench=cpu
    python -m harness.cost -m arch=transformer,mamba,linear_attention bench.seq_lens=[512,1024,2048,4096]
    python -m harness.cost -m 'arch=glob(*)' bench=cpu
    python -m harness.cost arch=transformer bench.search=max_len bench.max_len.memory_budget_gb=4

One Hydra job = one architecture config; it measures every (mode, length) point and
writes each as its own result file (atomic), so a sweep survives anything:
  * an OOM / error / timeout point becomes a row with that status and the sweep goes on;
    longer lengths of the same mode are then recorded as ``skipped`` (configurable);
  * re-running skips points already measured (keyed by a hash of every setting that
    affects the measurement) unless ``force=true`` - kill a sweep at any moment, re-run
    it, and every point ends up measured exactly once.
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
from tqdm.auto import tqdm

from harness.build import BuiltModel, build
from harness.config import (DTYPES, BenchConfig, CostConfig, register_configs, resolve_device,
                            to_container, validate_bench, validate_model)
from harness.env import device_name
from harness.measure import fits_in_memory, measure
from harness.results import ResultStore, load_rows, make_row, point_key
from harness.timing import classify_exception, free_memory, limit_cpu_memory, run_with_timeout

log = logging.getLogger(__name__)
register_configs()


def _as_schema(cfg: DictConfig | CostConfig) -> CostConfig:
    if isinstance(cfg, CostConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(CostConfig), cfg)
    return OmegaConf.to_object(merged)


class Sweep:
    """The points of one architecture config, measured in order, resumable."""

    def __init__(self, cfg: CostConfig):
        self.cfg, self.bench = cfg, cfg.bench
        self.device = resolve_device(cfg.device)
        self.store = ResultStore(cfg.results_dir)
        self.built: BuiltModel = build(cfg.arch, cfg.model, cfg.model.vocab_size or 256)
        model = self.built.model
        self.model = model.to(device=self.device, dtype=DTYPES[self.bench.dtype])
        self.params = model.num_params()
        self.rows: list[dict[str, Any]] = []

    # -- bookkeeping -------------------------------------------------------------------
    def settings(self, mode: str, seq_len: int) -> dict[str, Any]:
        """Everything that affects a measurement: its hash is the point's resume key."""
        b = self.bench
        return {"arch": self.built.name, "arch_kwargs": self.built.kwargs, "sizing": self.built.sizing,
                "mode": mode, "seq_len": seq_len, "batch": b.batch, "dtype": b.dtype,
                "device": device_name(self.device), "search": b.search,
                "timing": [b.warmup, b.min_run_time, b.min_repeats, b.decode_steps, b.flush_l2,
                           b.optimizer_step] + ([b.gen_tokens] if mode == "generate" else [])}

    def row(self, mode: str, seq_len: int, status: str = "ok", reason: str = "", **fields) -> dict:
        settings = self.settings(mode, seq_len)
        return make_row(
            status=status, reason=reason, arch_kwargs=self.built.kwargs, settings=settings,
            arch=self.built.name, label=self.built.label,
            backend=self.model.backends(self.device, seq_len), params=self.params, seq_len=seq_len,
            batch=self.bench.batch, dtype=self.bench.dtype, mode=mode,
            device=device_name(self.device), experiment=self.cfg.experiment,
            point_key=point_key(settings, f"{self.built.label}-{mode}-{seq_len}"),
            active_params=self.model.num_params(active_only=True),
            d_model=self.built.kwargs.get("d_model"), n_layers=self.model.cfg.n_layers,
            sizing=self.built.sizing["match"], **fields)

    def write(self, row: dict) -> None:
        self.store.write(row, row["point_key"])
        self.rows.append(row)

    # -- the sweep ---------------------------------------------------------------------
    def run_grid(self) -> None:
        lengths = sorted(set(self.bench.seq_lens))
        points = [(mode, n) for mode in self.bench.modes for n in lengths]
        failed_at: dict[str, tuple[int, str]] = {}
        bar = tqdm(points, desc=self.built.label, disable=not self.cfg.progress, dynamic_ncols=True)
        for mode, n in bar:
            bar.set_postfix(mode=mode, L=n)
            key = point_key(self.settings(mode, n), f"{self.built.label}-{mode}-{n}")
            if not self.cfg.force and self.store.has(key):
                continue
            limit = self.model.max_seq_len
            if limit is not None and n > limit:
                self.write(self.row(mode, n, "skipped", f"length {n} > max_seq_len {limit}"))
            elif mode in failed_at and self.bench.skip_after_failure:
                at, status = failed_at[mode]
                self.write(self.row(mode, n, "skipped", f"{status} at seq_len={at}"))
            else:
                row = self.measure_point(mode, n)
                self.write(row)
                if row["status"] in ("oom", "timeout"):
                    failed_at[mode] = (n, row["status"])
            log.info("%s %s L=%d: %s", self.built.label, mode, n, self.rows[-1]["status"])

    def measure_point(self, mode: str, seq_len: int) -> dict:
        start = time.perf_counter()
        try:
            fields = run_with_timeout(lambda: measure(self.model, mode, seq_len, self.bench, self.device),
                                      self.bench.time_budget_s)
            return self.row(mode, seq_len, wall_s=time.perf_counter() - start, **fields)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row
            status, reason = classify_exception(exc)
            free_memory(exc)
            self.model.zero_grad(set_to_none=True)
            return self.row(mode, seq_len, status, reason, wall_s=time.perf_counter() - start)

    def run_max_len(self) -> None:
        """Longest length whose ``max_len.mode`` step fits the memory budget: double, then bisect."""
        m = self.bench.max_len
        mode, budget = m.mode, m.memory_budget_gb * 2**30
        key = point_key(self.settings(f"max_len:{mode}", 0) | {"max_len": to_container(OmegaConf.structured(m))},
                        f"{self.built.label}-max_len-{mode}")
        if not self.cfg.force and self.store.has(key):
            return
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
        self.write(row)


def run(cfg: DictConfig | CostConfig) -> pd.DataFrame:
    """Measure one architecture config over ``bench``; return this run's rows (all of the
    results directory's rows for this architecture, when points were resumed)."""
    cfg = _as_schema(cfg)
    validate_bench(cfg.bench)
    validate_model(cfg.model)
    build(cfg.arch, cfg.model, cfg.model.vocab_size or 256, validate_only=True)  # fail before compute
    if cfg.bench.threads:
        torch.set_num_threads(cfg.bench.threads)
    if resolve_device(cfg.device).type == "cpu":
        limit_cpu_memory(cfg.bench.cpu_memory_limit_gb)
    torch.manual_seed(cfg.seed)
    sweep = Sweep(cfg)
    if cfg.bench.search == "max_len":
        sweep.run_max_len()
    else:
        sweep.run_grid()
    rows = load_rows(cfg.results_dir)
    if rows.empty:
        return rows
    return rows[rows["label"] == sweep.built.label].reset_index(drop=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="cost")
def main(cfg: DictConfig) -> None:
    # Launchers may run jobs elsewhere; results always land where the user pointed.
    cfg.results_dir = hydra.utils.to_absolute_path(cfg.results_dir)
    df = run(cfg)
    if not df.empty:
        ok = df[df["status"] == "ok"]
        log.info("%d points (%d ok) in %s", len(df), len(ok), cfg.results_dir)


if __name__ == "__main__":
    main()
