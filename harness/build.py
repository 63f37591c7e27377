"""Turn an ``arch`` config node plus the ``model`` sizing config into a model.

Shared by the cost and extrapolation apps, so both size architectures the same way:
matched parameter count by default, or matched FLOPs per token, matched decode-state
bytes at a reference length, or a fixed width - and every row records the result
(``BuiltModel.row``: the columns both apps' rows share, written in one place).
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from archs import arch_info, create_arch
from archs._registry import COMMON_KWARGS, ArchInfo, check_kwargs
from archs.model import LMConfig
from archs.sizing import param_count, width_for_target
from harness.config import ModelConfig, to_container
from harness.env import device_name
from harness.results import make_row

# Keys of an arch node that describe the run rather than the architecture: `train` holds
# the architecture's own training options (harness/arch_train.py merges them over `train`;
# a cost sweep, which trains nothing, ignores them).
RESERVED = ("name", "label", "train")


@dataclass
class BuiltModel:
    model: torch.nn.Module
    name: str                 # registry key
    label: str                # curve name in plots (the arch config's label, else name)
    kwargs: dict[str, Any]    # everything create_arch received, d_model included
    sizing: dict[str, Any]    # how the width was chosen (recorded in rows)

    def row(self, device: torch.device, seq_len: int, *, status: str, reason: str, settings: Mapping[str, Any],
            point_key: str, experiment: str, figures: Sequence[str], batch: int, dtype: str, mode: str,
            time_budget_s: float | None, cpu_memory_limit_gb: float | None, **fields: Any) -> dict[str, Any]:
        """A validated result row for one point measured on this model at ``seq_len`` on
        ``device``: what was built (registry name, curve label, keywords, size, sizing rule),
        the backend it ran, where, under which limits - the columns every app's rows share -
        then the app's own ``fields``."""
        return make_row(
            status=status, reason=reason, arch_kwargs=self.kwargs, settings=settings,
            arch=self.name, label=self.label, backend=self.model.backends(device, seq_len),
            params=self.model.num_params(), seq_len=seq_len, batch=batch, dtype=dtype, mode=mode,
            device=device_name(device), experiment=experiment, point_key=point_key,
            d_model=self.kwargs.get("d_model"), n_layers=self.model.cfg.n_layers, sizing=self.sizing["match"],
            figures=",".join(figures) or None, time_budget_s=time_budget_s,
            cpu_memory_limit_gb=cpu_memory_limit_gb, **fields)


def split_arch(arch_node: Any) -> tuple[str, str, dict[str, Any]]:
    node = dict(to_container(arch_node))
    if "name" not in node:
        raise ValueError("the arch config needs `name:` (a registry key); see conf/arch/*.yaml")
    run = {key: node.pop(key) for key in RESERVED if key in node}
    return run["name"], run.get("label") or run["name"], node


def _drop_defaults(info: ArchInfo, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keywords that differ from what the builder would use anyway.

    conf/arch/*.yaml restate every default (one source of truth, checked by a test), so
    the same model would otherwise get a different identity - result keys, checkpoint
    names - from a config that restates a default and one that does not."""
    params = list(inspect.signature(info.builder).parameters.values())
    defaults = {}
    if any(p.kind is p.VAR_KEYWORD for p in params):  # **shell goes to LMConfig: its defaults
        defaults = {f.name: f.default for f in dataclasses.fields(LMConfig) if f.default is not dataclasses.MISSING}
    defaults.update({p.name: p.default for p in params if p.default is not inspect.Parameter.empty})
    defaults.update(info.defaults)
    return {k: v for k, v in kwargs.items()
            if k in COMMON_KWARGS or k not in defaults or defaults[k] != v}


def _set_bidirectional(name: str, info: ArchInfo, kwargs: dict[str, Any]) -> None:
    """model.causal=false: build the architecture bidirectional (archs/bidirectional.py)."""
    if "causal" not in info.accepted_kwargs():
        raise ValueError(f"model.causal=false: {name}'s builder takes no `causal` keyword "
                         f"(it does not build through archs.model.LMConfig)")
    if kwargs.get("causal", False) is not False:
        raise ValueError(f"model.causal=false but the arch config of {name} sets causal: true; "
                         f"set one of them")
    kwargs["causal"] = False


def _measure(match: str, m: ModelConfig):
    if match == "params":
        return param_count, m.target_params
    if match == "active_params":
        return (lambda model: model.num_params(active_only=True)), m.target_params
    if match == "flops":
        per_token = lambda model: model.analytic_flops(1, m.match_seq_len) / m.match_seq_len  # noqa: E731
        return per_token, m.target_flops_per_token
    if match == "state":
        state = lambda model: model.expected_state_bytes(1, m.match_seq_len, torch.float32)  # noqa: E731
        return state, m.target_state_bytes
    raise ValueError(f"model.match={match!r} has no measure")


def build(arch_node: Any, m: ModelConfig, vocab_size: int, *, validate_only: bool = False) -> BuiltModel:
    """Build the architecture at the size ``m`` asks for (on the CPU, float32)."""
    name, label, kwargs = split_arch(arch_node)
    info = arch_info(name)  # unknown name -> error listing the known ones
    kwargs = {"vocab_size": vocab_size, **({"n_layers": m.n_layers} if m.n_layers else {}), **kwargs}
    if m.norm_position != LMConfig.norm_position:  # passed only when it changes something, so
        kwargs.setdefault("norm_position", m.norm_position)  # pre-norm keys stay as they were
    if not m.causal:
        _set_bidirectional(name, info, kwargs)
    check_kwargs(name, kwargs)
    kwargs = _drop_defaults(info, kwargs)
    if kwargs.get("norm_position") == "post" and label == name:  # its own curve, not pre-norm's
        label = f"{name}+postnorm"
    if kwargs.get("causal") is False and not label.endswith("+bidirectional"):
        label = f"{label}+bidirectional"  # its own curve beside the causal model of that label
    sizing: dict[str, Any] = {"match": m.match}
    if "d_model" in kwargs:
        sizing["match"] = "arch_config"
    elif name in m.d_model_by_arch:
        kwargs["d_model"], sizing["match"] = int(m.d_model_by_arch[name]), "d_model_by_arch"
    elif m.match == "width":
        kwargs["d_model"] = int(m.d_model)
    else:
        measure, target = _measure(m.match, m)
        merged = {**info.defaults, **kwargs}
        kwargs["d_model"] = width_for_target(lambda **kw: info.builder(**kw), merged, target, measure,
                                             what=f"model.target for match={m.match}")
        sizing["target"] = target
        if m.match != "params":
            sizing["match_seq_len"] = m.match_seq_len
    if validate_only:
        return BuiltModel(None, name, label, kwargs, sizing)
    model = create_arch(name, **kwargs)
    return BuiltModel(model, name, label, kwargs, sizing)
