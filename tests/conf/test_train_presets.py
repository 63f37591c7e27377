"""conf/train/paper.yaml is the one place the paper protocol's training keys live: the three
configs that use it compose to its values and restate none of them."""
from __future__ import annotations

import pytest
import yaml

from tests.apps import compose
from tests.paths import CONF

PAPER = yaml.safe_load((CONF / "train/paper.yaml").read_text())
USERS = {  # config file -> (overrides that compose it, keys it may set itself)
    "experiment/induction_paper.yaml": (["experiment=induction_paper"], set()),
    "lengen/paper_protocol.yaml": (["experiment=length_generalisation", "lengen=paper_protocol"], set()),
    "lengen/paper_random_trigger.yaml": (["experiment=length_generalisation", "lengen=paper_random_trigger"],
                                         {"steps"}),
}


@pytest.mark.parametrize("path", sorted(USERS))
def test_the_paper_protocol_is_written_once(path):
    overrides, own = USERS[path]
    train = compose("extrapolate", *overrides).train
    assert {k: train[k] for k in PAPER if k not in own} == {k: v for k, v in PAPER.items() if k not in own}
    restated = set((yaml.safe_load((CONF / path).read_text()).get("train") or {})) & set(PAPER) - own
    assert not restated, f"conf/{path} restates {sorted(restated)} from conf/train/paper.yaml"


def test_train_paper_on_the_command_line_is_the_protocol_over_the_defaults():
    train = compose("extrapolate", "train=paper").train
    default = compose("extrapolate").train
    assert {k: train[k] for k in PAPER} == PAPER
    assert {k: train[k] for k in default if k not in PAPER} == {k: default[k] for k in default if k not in PAPER}
