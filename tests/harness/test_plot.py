"""harness.report.plot and harness.report.markdown: figures and report.md from result files only."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from harness.report.plot import (
    cost_figures, extrapolation_figures, extrapolation_groups, format_bytes, format_length, main, series_names,
    series_palette, split_kinds,
)
from harness.report.markdown import markdown_table
from harness.results import load_rows

COST_STEMS = ("time_vs_length", "memory_vs_length", "throughput_vs_length", "decode_vs_context")
EXTRAP_STEMS = ("extrapolation_accuracy", "extrapolation_loss")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, write_synthetic_results):
    """Run the CLI once on the synthetic results (rendering is the slow part)."""
    root = write_synthetic_results(tmp_path_factory.mktemp("plot") / "results")
    out = root.parent / "out"
    assert main([str(root), "--out", str(out)]) == 0
    return root, out


@pytest.fixture(scope="module")
def rows(rendered):
    return load_rows(rendered[0])


@pytest.fixture(scope="module")
def cost_figs(rows):
    return cost_figures(rows)


@pytest.mark.slow
def test_cli_writes_png_and_svg_for_every_figure(rendered):
    _, out = rendered
    for stem in COST_STEMS + EXTRAP_STEMS:
        for ext in ("png", "svg"):
            path = out / "figures" / f"{stem}.{ext}"
            assert path.stat().st_size > 5_000, path
    assert (out / "figures" / "time_vs_length.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_report_has_the_expected_tables(rendered):
    _, out = rendered
    report = (out / "report.md").read_text()
    for heading in ("## Status counts", "## Scaling exponents", "## Crossover lengths",
                    "## Failed points", "## Extrapolation", "### induction, trained at 128: accuracy"):
        assert heading in report
    assert "| attention | forward | 1.99 |" in report or "| attention | forward | 2.00 |" in report
    assert "| forward | attention | mamba |" in report and "measured (interpolated)" in report
    assert "OutOfMemoryError: synthetic" in report and "PointTimeout: synthetic" in report
    assert "| arch | 128 (train) | 256 | 512 | 1K |" in report
    assert "![time_vs_length](figures/time_vs_length.png)" in report


def test_palette_is_stable_and_distinct():
    a = series_palette(["mamba", "attention", "hybrid"])
    b = series_palette(["hybrid", "mamba", "attention", "mamba"])
    assert a == b
    assert len(set(a.values())) == 3
    many = series_palette([f"arch{i}" for i in range(15)])
    assert len(set(many.values())) == 15
    crowd = series_palette([f"arch{i}" for i in range(25)])
    assert len(set(crowd.values())) == 25


def test_builtin_architectures_keep_their_colour_across_experiments():
    cost = series_palette(["transformer", "transformer_math", "mamba", "mamba2", "linear_attention", "lstm"])
    induction = series_palette(["transformer_rope", "transformer_nope", "mamba", "mamba2", "lstm", "my_plugin"])
    for name in ("mamba", "mamba2", "lstm"):
        assert cost[name] == induction[name], name
    assert len(set(induction.values())) == 6
    # two names sharing a canonical colour in one figure still get distinct colours
    both = series_palette(["transformer", "transformer_rope", "samba", "hybrid"])
    assert len(set(both.values())) == 4


@pytest.mark.slow
def test_same_arch_same_colour_in_every_figure(rows):
    df = rows.copy()
    # The extrapolation rows hold only a subset of the curves in the cost rows.
    df.loc[df["eval_seq_len"].notna() & (df["arch"] == "attention"), "arch"] = "zz-only-extrap"
    palette = series_palette(series_names(df))
    figures = {**cost_figures(df, palette), **extrapolation_figures(df, palette)}
    seen = {}
    for fig in figures.values():
        for ax in fig.axes:
            for line in ax.get_lines():
                name = line.get_label().split(" ")[0]
                if name in palette:
                    seen.setdefault(name, set()).add(to_rgb(line.get_color()))
    assert set(seen) == {"attention", "mamba", "zz-only-extrap"}
    for name, colours in seen.items():
        assert colours == {to_rgb(palette[name])}, name


@pytest.mark.slow
def test_failed_points_are_drawn(cost_figs):
    train_ax = [ax for ax in cost_figs["time_vs_length"].axes if ax.get_title() == "train"][0]
    xs = np.concatenate([c.get_offsets()[:, 0] for c in train_ax.collections if len(c.get_offsets())])
    assert 4096 in xs  # the synthetic attention OOM at the longest length
    assert "failed" in train_ax.get_legend().get_title().get_text()


def test_legend_carries_the_fitted_exponent(cost_figs):
    fig = cost_figs["time_vs_length"]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(label.startswith("attention (∝ L^2.0") or label.startswith("attention (∝ L^1.9")
               for label in labels)
    assert any(label.startswith("mamba (∝ L^1.0") or label.startswith("mamba (∝ L^0.9")
               for label in labels)


@pytest.mark.slow
def test_cost_only_results_give_no_extrapolation(cost_only_dir, tmp_path):
    assert main([str(cost_only_dir), "--out", str(tmp_path / "o")]) == 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "## Extrapolation" not in report and "## Scaling exponents" in report
    assert not list((tmp_path / "o" / "figures").glob("extrapolation_*"))
    cost, ext = split_kinds(load_rows(cost_only_dir))
    assert len(cost) > 0 and ext.empty


def test_runs_trained_at_different_lengths_are_not_averaged():
    import pandas as pd

    from harness.results import make_row

    rows = [make_row(arch="a", mode="eval", task="copy", train_seq_len=train, eval_seq_len=train * k,
                     seq_len=train * k, accuracy=1.0 / k, env={})
            for train in (64, 128) for k in (1, 2, 4)]
    df = pd.DataFrame(rows)
    assert [title for title, _ in extrapolation_groups(df)] == ["copy, trained at 64", "copy, trained at 128"]
    assert len(extrapolation_figures(df)["extrapolation_accuracy"].axes) == 2


def test_empty_results_dir_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "nothing to plot" in capsys.readouterr().err


def test_formatters_and_markdown():
    assert [format_length(x) for x in (512, 2048, 3 * 2**20, 1000)] == ["512", "2K", "3M", "1000"]
    assert format_bytes(3 * 2**30) == "3 GiB" and format_bytes(512) == "512 B"
    import pandas as pd

    table = markdown_table(pd.DataFrame({"a": [1.0, float("nan")], "b": ["x|y", None]}))
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "|  |  |"]


def test_several_widths_give_the_recall_vs_state_figure():
    import pandas as pd
    from harness.report.plot import extrapolation_figures
    from harness.results import make_row
    rows = [make_row(arch=a, mode="eval", seq_len=256, eval_seq_len=256, train_seq_len=256, task="mqar",
                     accuracy=d / 128, loss=1.0, state_bytes=s * d, d_model=d, seed=0, env={})
            for a, s in (("transformer", 4096), ("mamba", 256)) for d in (32, 64, 128)]
    figures = extrapolation_figures(pd.DataFrame(rows))
    assert list(figures) == ["accuracy_vs_state"]  # one length: no length curves
    ax = figures["accuracy_vs_state"].axes[0]
    assert {line.get_label() for line in ax.get_lines()} == {"transformer", "mamba"}
    assert ax.get_xscale() == "log"
