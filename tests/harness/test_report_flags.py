"""A results folder holding a model stopped by its time budget and a noisy crossover: the
report, the figures and the demo's terminal summary must flag both (issue 27) - and a
clean run must not be flagged. The report also says, per architecture, what the
conformance suite checked (a plugin beside the built-ins included)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness import demo
from harness.report.fit import crossover, fit_power_law
from harness.report.plot import extrapolation_figures, main
from harness.results import ResultStore, load_rows, make_row, point_key
from harness.report.series import training_flags
from tests.conformance_toys import PrefixMean, registered  # noqa: F401 - a fixture

ENV = {"torch": "test", "git_commit": "abc123", "hostname": "test-host"}
LENGTHS = (256, 512, 1024, 2048, 4096)
BUDGET_STOP = "stopped by its time budget after 31 of 1,500 steps (final loss 2.77)"


def _cost_rows(noisy: bool) -> list[dict]:
    """transformer ~ L^2 and mamba ~ L meeting at L = 1000; with ``noisy`` both are flat
    and jittered, their p10-p90 bands spanning 10x (the issue's "752, measured")."""
    rng, rows = np.random.default_rng(1), []
    for arch, coef, power in (("transformer", 1e-3, 2.0), ("mamba", 1.0, 1.0)):
        for n in LENGTHS:
            t = coef * n**power if not noisy else 100.0 * float(np.exp(rng.normal(0, 0.6)))
            spread = 3.0 if noisy else 1.05
            rows.append(make_row(arch=arch, backend="ref", mode="forward", seq_len=n, batch=1, dtype="float32",
                                 device="cpu-test", params=1000, env=ENV, experiment="flags", time_ms=t,
                                 time_ms_p10=t / spread, time_ms_p90=t * spread))
    return rows


def _ext_rows(budget_stopped: bool) -> list[dict]:
    rows = []
    for arch, acc in (("transformer", 1.0), ("mamba", 0.0)):
        stopped = budget_stopped and arch == "mamba"
        for n in (64, 128, 256):
            rows.append(make_row(
                arch=arch, backend="ref", mode="eval", task="induction_heads", seq_len=n, train_seq_len=64,
                eval_seq_len=n, seed=0, env=ENV, experiment="flags", accuracy=acc, loss=1.0 - acc,
                train_status="ok", train_steps=31 if stopped else 1500 if arch == "mamba" else 300,
                train_steps_budget=1500, train_loss=2.77 if stopped else 0.01,
                train_stop_reason="time budget" if stopped else "" if arch == "mamba" else "target accuracy",
                early_stopped=stopped or arch == "transformer", train_target_acc=0.99 if arch != "mamba" else None))
    return rows


def _write(root, noisy: bool, budget_stopped: bool):
    for folder, rows in (("cost", _cost_rows(noisy)), ("extrapolation", _ext_rows(budget_stopped))):
        store = ResultStore(root / folder)
        for row in rows:
            store.write(row, point_key(row, f"{row['arch']}-{row.get('eval_seq_len') or row['seq_len']}"))
    for folder in ("cost", "extrapolation"):
        assert main([str(root / folder), "--out", str(root / folder)]) == 0
    return root


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("flagged"), noisy=True, budget_stopped=True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("clean"), noisy=False, budget_stopped=False)


@pytest.mark.slow
def test_the_report_flags_the_budget_stopped_model_and_the_unresolved_crossover(flagged):
    ext = (flagged / "extrapolation" / "report.md").read_text()
    assert "| mamba † | 0.000 | 0.000 | 0.000 |" in ext
    assert f"- † mamba: seed 0: {BUDGET_STOP}" in ext
    assert "| transformer | 1.000 |" in ext  # trained to its target: not flagged
    cost = (flagged / "cost" / "report.md").read_text()
    crossings = cost.split("## Crossover lengths")[1].split("## Failed points")[0]
    row = next(line for line in crossings.splitlines() if line.startswith("| forward |"))
    assert "| not resolved (≈" in row and "| not resolved: " in row and "[" not in row  # no interval
    exponents = cost.split("## Scaling exponents")[1].split("## Crossover")[0]
    assert exponents.count("(not resolved)") == 2  # flat noise: neither exponent is a finding


def test_the_figure_marks_the_points_and_footnotes_the_run(flagged):
    rows = load_rows(flagged / "extrapolation")
    fig = extrapolation_figures(rows)["extrapolation_accuracy"]
    ax = fig.axes[0]
    marked = [c for c in ax.collections if c.get_gid() == "unfinished"]
    assert len(marked) == 1 and sorted(marked[0].get_offsets()[:, 0]) == [64, 128, 256]
    note = [t.get_text() for t in fig.texts if t.get_gid() == "unfinished_note"]
    assert note and "mamba: seed 0: stopped by its time budget after 31 of 1,500" in note[0].replace("\n", " ")
    assert "training unfinished" in ax.get_legend().get_title().get_text()


def test_the_terminal_summary_prints_both_flags(flagged):
    text = demo.summary(flagged)
    assert "mamba †" in text and f"† mamba: seed 0: {BUDGET_STOP}" in text
    assert "crossover not resolved" in text
    assert "not resolved: mamba forward:" in text


@pytest.mark.slow
def test_a_clean_run_carries_no_flag(clean):
    text = demo.summary(clean)
    assert "†" not in text and "not resolved" not in text
    assert "mamba is faster than transformer beyond L ≈ 1,000 [907, 1,102]" in text
    for folder in ("cost", "extrapolation"):
        report = (clean / folder / "report.md").read_text()  # (the legends explaining the marks stay)
        assert " † |" not in report and "- †" not in report
        assert "(not resolved)" not in report and "not resolved (≈" not in report
    assert not training_flags(load_rows(clean / "extrapolation")).any()


def test_training_flags_name_each_way_a_run_falls_short():
    base = dict(train_status="ok", train_steps=1500, train_steps_budget=1500, train_loss=0.5, train_stop_reason="",
                train_target_acc=None)
    cases = pd.DataFrame([base, {**base, "train_target_acc": 0.99},
                          {**base, "train_steps": 400, "train_stop_reason": "target accuracy", "train_target_acc": 0.99},
                          {**base, "train_steps": 900, "train_status": "diverged"}])
    assert training_flags(cases).tolist() == [
        "", "did not reach its target accuracy 0.99 in 1,500 of 1,500 steps (final loss 0.5)", "",
        "training diverged after 900 of 1,500 steps (final loss 0.5)"]


def test_exponent_and_crossover_uncertainty_rules():
    xs = np.array(LENGTHS, float)
    assert fit_power_law(xs, 1e-3 * xs**2).unresolved == ""
    assert fit_power_law(xs, np.full(5, 2.0)).unresolved == ""  # flat: r² means nothing, the CI decides
    assert "95% CI" in fit_power_law(xs, [1.0, 9.0, 2.0, 8.0, 1.5]).unresolved
    assert "no confidence interval" in fit_power_law(xs[:2], [1.0, 2.0]).unresolved
    # a crossing of fits beyond the data: resolved, its interval around the point
    df = pd.DataFrame([{"arch": a, "seq_len": n, "time_ms": c * n**p * (1 + 0.01 * (-1) ** i), "status": "ok"}
                       for a, c, p in (("attn", 1e-5, 2.0), ("ssm", 1e-2, 1.0))
                       for i, n in enumerate((2048, 4096, 8192, 16384))])
    c = crossover(df, "attn", "ssm")
    assert c.method == "fit" and not c.unresolved and c.x_low < c.x < c.x_high


def test_the_report_says_what_conformance_checked_for_each_architecture(tmp_path, registered):
    from harness.report.markdown import write_report
    plugin = registered("toy_plugin", PrefixMean)  # registered from outside archs/: a plugin
    rows = pd.DataFrame([r for r in _ext_rows(False) if r["arch"] == "mamba"] +
                        [{**r, "arch": plugin} for r in _ext_rows(False) if r["arch"] == "transformer"])
    report = write_report(rows, tmp_path).read_text()
    section = report.split("## Conformance")[1].split("## Figures")[0]
    assert "| mamba | default backend: float32 causality 1K, 4K; prefill == forward 1K, 4K; step == forward 1K" \
        in section
    assert f"| {plugin} | not run by archbench's suite (a plugin) |" in section
    table = report.split("### induction_heads, trained at 64: accuracy")[1]
    assert "| mamba | 0.000 | 0.000 | 0.000 | causality 1K, 4K; prefill == forward 1K, 4K; step == forward 1K |" \
        in table
    assert f"| {plugin} | 1.000 | 1.000 | 1.000 | not run by archbench's suite (a plugin) |" in table


def test_a_labelled_curve_reports_its_architectures_conformance(tmp_path):
    """A curve named by its arch config (label ``encoder_decoder_mamba`` of the registry's
    ``encoder_decoder``, ``mamba_custom`` of ``mamba``) shows what was checked for that arch."""
    from harness.conformance.plan import coverage_brief
    from harness.report.markdown import write_report
    rows = pd.DataFrame([{**r, "label": "mamba_custom"} for r in _ext_rows(False) if r["arch"] == "mamba"])
    table = write_report(rows, tmp_path).read_text().split("trained at 64: accuracy")[1]
    assert f"| mamba_custom | 0.000 | 0.000 | 0.000 | {coverage_brief('mamba')} |" in table
    assert "unknown here" not in table
