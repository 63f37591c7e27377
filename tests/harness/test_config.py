"""harness.config: the schemas every run is validated against. A typo or a wrong type fails
when merged into a schema (before any compute), the apps find the config tree from any folder,
and the schemas are registered under the names the primary configs use.
(Each default equals its YAML: tests/conf/test_schema_defaults.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from harness.config import CONF_DIR, CostConfig, ExtrapolateConfig, register_configs


@pytest.mark.parametrize("schema", [CostConfig, ExtrapolateConfig])
def test_a_typo_or_a_wrong_type_is_refused_by_the_schema(schema):
    base = OmegaConf.structured(schema)
    with pytest.raises(ConfigKeyError, match="target_paramz"):
        OmegaConf.merge(base, {"model": {"target_paramz": 10}})
    with pytest.raises(ValidationError, match="n_layers"):
        OmegaConf.merge(base, {"model": {"n_layers": "two"}})
    assert OmegaConf.merge(base, {"model": {"n_layers": 3}}).model.n_layers == 3


def test_the_config_tree_is_an_absolute_path_holding_both_apps():
    # a relative path resolves against the calling module when an app runs as a console script
    assert Path(CONF_DIR).is_absolute()
    assert {"cost.yaml", "extrapolate.yaml"} <= {p.name for p in Path(CONF_DIR).glob("*.yaml")}


def test_every_schema_a_primary_config_names_is_registered():
    register_configs()
    register_configs()  # the apps and the tests both call it: twice is harmless
    repo = ConfigStore.instance().repo
    for app in ("cost", "extrapolate"):
        defaults = yaml.safe_load((Path(CONF_DIR) / f"{app}.yaml").read_text())["defaults"]
        schema = next(d for d in defaults if isinstance(d, str) and d.endswith("_schema"))
        assert f"{schema}.yaml" in repo, schema
    for group in ("bench", "train", "eval"):
        assert f"{group}_schema.yaml" in repo[group]
