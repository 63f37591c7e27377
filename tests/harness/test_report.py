"""harness.report.markdown's seed statistics: mean with a Student-t 95% interval over seeds."""
import math

import pandas as pd
import pytest

from harness.report.markdown import seed_cells


def _values(groups: dict[tuple[str, int], list[float]]) -> pd.Series:
    index = [(arch, length) for (arch, length), vs in groups.items() for _ in vs]
    values = [v for vs in groups.values() for v in vs]
    return pd.Series(values, index=pd.MultiIndex.from_tuples(index, names=["arch", "eval_seq_len"]))


def test_three_seeds_get_the_t_interval_and_their_count():
    cells = seed_cells(_values({("mamba", 1024): [1.0, 0.5, 0.0]}), ["arch", "eval_seq_len"])
    half = 4.302653 * 0.5 / math.sqrt(3)  # t(0.975, 2) x std / sqrt(n)
    assert cells[("mamba", 1024)] == f"0.500 ± {half:.3f} (n=3)"


def test_one_seed_prints_its_value_alone_and_groups_stay_apart():
    cells = seed_cells(_values({("mamba", 256): [0.25], ("lstm", 256): [1.0, 1.0]}), ["arch", "eval_seq_len"])
    assert cells[("mamba", 256)] == "0.250"
    assert cells[("lstm", 256)] == "1.000 ± 0.000 (n=2)"


@pytest.mark.parametrize("n, t", [(2, 12.706), (5, 2.776), (30, 2.045)])
def test_interval_narrows_with_seeds_as_students_t(n, t):
    values = [0.0, 1.0] * (n // 2) + [0.5] * (n % 2)
    cell = seed_cells(_values({("m", 1): values}), ["arch", "eval_seq_len"])[("m", 1)]
    std = pd.Series(values).std()
    assert cell.endswith(f"(n={n})")
    assert float(cell.split("± ")[1].split(" ")[0]) == pytest.approx(t * std / math.sqrt(n), abs=2e-3)
