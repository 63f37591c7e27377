"""Checks shared by the config tests."""
from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf


def assert_option_applied(node, option_file: Path) -> None:
    """Every value a config-group option file sets is what the composed config holds."""
    own = yaml.safe_load(option_file.read_text()) or {}
    composed = OmegaConf.to_container(node, resolve=True)
    for key, value in own.items():
        if key != "defaults":
            assert composed[key] == value, (option_file.name, key, composed[key], value)
