"""The accuracy-vs-trigger-distance figure (harness.report.plot_distance, drawn by harness.report.plot)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.report import plot_distance
from harness.report.plot import main as plot_main, series_palette
from harness.report.series import series_names, split_distance_rows
from harness.results import ResultStore, make_row, point_key

ENV = {"torch": "test", "git_commit": "abc123", "hostname": "test-host"}
DISTANCES = (16, 64, 256, 1024)


def _rows() -> list[dict]:
    rows = []
    for arch, cliff in (("mamba", 300), ("lstm", 40)):
        for seed in (0, 1, 2):
            for length in (1024, 4096):
                for d in (None, *DISTANCES):
                    if d is not None and d >= length:
                        continue
                    acc = 1.0 if d is not None and d < cliff else 0.1 + 0.01 * seed
                    rows.append(make_row(arch=arch, label=arch, seq_len=length, eval_seq_len=length,
                                         train_seq_len=256, task="induction_heads", seed=seed,
                                         trigger_distance=d, accuracy=acc, loss=1.0, mode="eval",
                                         device="cpu-test", env=ENV, experiment="synthetic"))
    return rows


@pytest.fixture
def results(tmp_path):
    store = ResultStore(tmp_path / "res")
    for i, row in enumerate(_rows()):
        store.write(row, point_key({"i": i}, "p"))
    return tmp_path / "res"


def test_split_separates_the_two_axes():
    df = pd.DataFrame(_rows())
    by_length, by_distance = split_distance_rows(df)
    assert by_length["trigger_distance"].isna().all() and len(by_length) == 2 * 3 * 2
    assert set(by_distance["trigger_distance"]) == set(DISTANCES)
    assert len(by_length) + len(by_distance) == len(df)


def _panels(fig) -> dict[str, object]:
    return {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_visible() and ax.get_title()}


def test_figure_draws_the_mean_per_distance_one_panel_per_curve():
    df = pd.DataFrame(_rows())
    _, fixed = split_distance_rows(df)
    fig = plot_distance.distance_figure(fixed, series_palette(series_names(fixed)), title="induction")
    panels = _panels(fig)
    assert set(panels) == {"mamba", "lstm"}
    ax = panels["mamba"]
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 1]
    # mamba at 4096: perfect up to its cliff, then the mean over seeds 0.1, 0.11, 0.12 (bold) ...
    bold = [line for line in lines if line.get_linewidth() > 1]
    assert any(tuple(line.get_xdata()) == DISTANCES and np.allclose(line.get_ydata(), [1.0, 1.0, 1.0, 0.11])
               for line in bold)
    # ... and each seed as its own thin line: seed 2 ends at 0.12.
    thin = [line for line in lines if line.get_linewidth() < 1]
    assert any(tuple(line.get_xdata()) == DISTANCES and np.allclose(line.get_ydata(), [1.0, 1.0, 1.0, 0.12])
               for line in thin)
    assert ax.get_xscale() == "log"
    assert "3 seeds" in ax.get_title()
    assert any(len(line.get_xdata()) and line.get_xdata()[0] == 255 for line in ax.get_lines())
    # lstm's panel is its own: its cliff at 40 does not mix into mamba's lines.
    assert all(max(line.get_ydata()[:2]) == 1.0 for line in bold if tuple(line.get_xdata()) == DISTANCES)


@pytest.mark.slow
def test_plot_draws_both_axes_without_mixing_them(results, tmp_path):
    assert plot_main([str(results), "--out", str(tmp_path / "out")]) == 0
    figures = tmp_path / "out" / "figures"
    assert (figures / "accuracy_vs_distance.png").stat().st_size > 0
    assert (figures / "accuracy_vs_distance.svg").exists()
    assert (figures / "extrapolation_accuracy.png").exists()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Accuracy by trigger distance" in report and "d=256" in report


@pytest.mark.slow
def test_length_figure_leaves_fixed_distance_rows_out():
    from harness.report.plot import extrapolation_figures
    df = pd.DataFrame(_rows())
    by_length, _ = split_distance_rows(df)
    drawn = extrapolation_figures(df)["extrapolation_accuracy"]
    alone = extrapolation_figures(by_length)["extrapolation_accuracy"]
    ys = lambda fig: sorted(tuple(np.round(line.get_ydata(), 6)) for ax in fig.axes for line in ax.get_lines())  # noqa: E731
    assert ys(drawn) == ys(alone)
