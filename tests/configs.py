"""Checks shared by the config tests."""
from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from tests.paths import CONF


def group_options(group: str) -> list[str]:
    """A config group's options as Hydra names them: conf/<group>/**/*.yaml, sorted."""
    base = CONF / group
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml"))


def assert_option_applied(node, option_file: Path) -> None:
    """Every value a config-group option file sets is what the composed config holds."""
    own = yaml.safe_load(option_file.read_text()) or {}
    composed = OmegaConf.to_container(node, resolve=True)
    for key, value in own.items():
        if key != "defaults":
            assert composed[key] == value, (option_file.name, key, composed[key], value)
