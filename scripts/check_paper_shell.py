"""Is `arch=induction/mamba_paper_shell` the model of the Mamba paper's induction reproduction?

    python scripts/check_paper_shell.py [--out results/cpu/extrapolation/table2/paper_shell_check.json]

The public reproduction builds ``MambaLMHeadModel(64, 2, 17)`` with positional arguments,
which only mamba-ssm <= 1.0.1 accepts. This script fetches that release's source (the sdist
from PyPI, pure Python once its CUDA build is skipped; cached under
``~/.cache/archbench/sdists``), imports its model on the CPU with stand-ins for the CUDA
modules it cannot load (its own ``selective_scan_ref`` replaces the CUDA scan, PyTorch's conv
replaces causal_conv1d - the slow path its code takes without them), and compares it with
ours:

* the same weights (theirs copied into ours, name by name): logits and the gradient of every
  parameter through both reference scans, in float32 (their selective_scan_ref computes in
  float32 whatever the input dtype), to float32 rounding;
* initialisation, which no copy can show: LayerNorm vs RMSNorm, out_proj's scale (kaiming
  uniform / sqrt(n_layer)), the embedding's std, the tied head, zero Linear biases except
  dt_proj's - statistics over several seeds of each.

It writes a JSON record and exits 1 when any comparison fails. tests/archs/mamba runs it
when the sdist can be fetched (the test skips offline).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from archs import create_arch  # noqa: E402

VERSION = "1.0.1"
CACHE = Path.home() / ".cache" / "archbench" / "sdists"
NO_CUDA = {"MAMBA_FORCE_BUILD": "TRUE", "MAMBA_SKIP_CUDA_BUILD": "TRUE",
           "CAUSAL_CONV1D_SKIP_CUDA_BUILD": "TRUE"}


def fetch_sdist() -> Path:
    """mamba_ssm-1.0.1.tar.gz from PyPI (its setup.py reads torch's CUDA version unless told
    to skip the CUDA build, hence NO_CUDA even for a download)."""
    target = CACHE / f"mamba_ssm-{VERSION}.tar.gz"
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-build-isolation", "--no-binary", ":all:", f"mamba-ssm=={VERSION}",
                        "-d", str(CACHE)], check=True, env={**os.environ, **NO_CUDA}, timeout=300)
    return target


def import_upstream(sdist: Path, workdir: Path):
    """Their MambaLMHeadModel class and their selective_scan_ref, with CUDA-only imports stubbed."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/mamba_ssm/" in m.name and m.name.endswith(".py")]
        tar.extractall(workdir, members=members, filter="data")
    stubs = {"causal_conv1d": dict(causal_conv1d_fn=None, causal_conv1d_update=None),
             "causal_conv1d_cuda": {}, "selective_scan_cuda": {},
             "transformers": {}, "transformers.generation": dict(
                 GreedySearchDecoderOnlyOutput=object, SampleDecoderOnlyOutput=object),
             "transformers.utils": dict(WEIGHTS_NAME="", CONFIG_NAME=""),
             "transformers.utils.hub": dict(cached_file=None)}
    for name, attrs in stubs.items():
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__dict__.update(attrs)
    sys.path.insert(0, str(workdir / f"mamba_ssm-{VERSION}"))
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    from mamba_ssm.modules import mamba_simple
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    mamba_simple.selective_scan_fn = selective_scan_ref  # the slow path's scan, theirs
    return MambaLMHeadModel


def ours(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_arch("mamba", vocab_size=17, d_model=64, n_layers=2, backend="ref",
                       norm="layernorm", rescale_out_proj=True)


def theirs(cls, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = cls(64, 2, 17)  # the reproduction's call
    for layer in model.backbone.layers:
        layer.mixer.use_fast_path = False  # mamba_inner_fn is CUDA-only
    return model


def name_map(model) -> dict[str, str]:
    """Their parameter name -> ours."""
    out = {"backbone.embedding.weight": "embed.weight", "backbone.norm_f.weight": "norm.weight",
           "backbone.norm_f.bias": "norm.bias"}
    for name, _ in model.named_parameters():
        if name.startswith("backbone.layers."):
            i, rest = name.split(".", 3)[2:]
            out[name] = f"blocks.{i}.{'mixer_norm' + rest[4:] if rest.startswith('norm.') else rest}"
    return out


def compare_same_weights(cls) -> dict:
    up, me = theirs(cls, 0), ours(1)  # float32: their selective_scan_ref computes in float32
    names = name_map(up)
    ours_params = dict(me.named_parameters())
    missing = [o for o in names.values() if o not in ours_params]
    if missing:
        raise SystemExit(f"our model lacks {missing}; parameter names changed?")
    with torch.no_grad():
        for theirs_name, p in up.named_parameters():
            ours_params[names[theirs_name]].copy_(p)
    tokens = torch.randint(0, 17, (3, 40), generator=torch.Generator().manual_seed(0))
    logits_up, logits_me = up(tokens).logits, me(tokens)
    weights = torch.randn(logits_up.shape, generator=torch.Generator().manual_seed(1))
    g_up = dict(zip([n for n, _ in up.named_parameters()],
                    torch.autograd.grad((logits_up * weights).sum(), list(up.parameters()))))
    g_me = dict(zip(ours_params, torch.autograd.grad((logits_me * weights).sum(), list(ours_params.values()))))
    grad_err = {n: ((g_up[n] - g_me[names[n]]).abs().max() / g_up[n].abs().max().clamp_min(1e-300)).item()
                for n in g_up}
    return {"logits_max_abs_diff": (logits_up - logits_me).abs().max().item(),
            "logits_scale": logits_up.abs().max().item(),
            "grad_max_rel_diff": max(grad_err.values()), "grad_worst": max(grad_err, key=grad_err.get),
            "n_params_theirs": sum(p.numel() for p in up.parameters()),
            "n_params_ours": me.num_params()}


def init_stats(cls, seeds: int = 8) -> dict:
    def stats(model, out_proj: str, embed: str, norm_type) -> dict:
        p = dict(model.named_parameters())
        return {"out_proj_std": torch.stack([p[f"{k}"].std() for k in out_proj]).mean().item(),
                "embed_std": p[embed].std().item(),
                "norm_is_layernorm": all(isinstance(m, torch.nn.LayerNorm) for m in model.modules()
                                         if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm))),
                "norm_count": sum(isinstance(m, norm_type) for m in model.modules())}

    up = [stats(theirs(cls, s), ["backbone.layers.0.mixer.out_proj.weight", "backbone.layers.1.mixer.out_proj.weight"],
                "backbone.embedding.weight", torch.nn.LayerNorm) for s in range(seeds)]
    me = [stats(ours(s), ["blocks.0.mixer.out_proj.weight", "blocks.1.mixer.out_proj.weight"],
                "embed.weight", torch.nn.LayerNorm) for s in range(seeds)]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    model_up, model_me = theirs(cls, 0), ours(0)
    return {"out_proj_std": [mean(up, "out_proj_std"), mean(me, "out_proj_std")],
            "embed_std": [mean(up, "embed_std"), mean(me, "embed_std")],
            "layernorm_everywhere": [all(r["norm_is_layernorm"] for r in up), all(r["norm_is_layernorm"] for r in me)],
            "norm_count": [up[0]["norm_count"], me[0]["norm_count"]],
            "head_tied": [model_up.lm_head.weight is model_up.backbone.embedding.weight,
                          model_me.head.weight is model_me.embed.weight],
            "zero_biases_except_dt_proj": [
                all((p == 0).all() for n, p in model_up.named_parameters()
                    if n.endswith("bias") and "dt_proj" not in n and "conv1d" not in n and "norm" not in n),
                all((p == 0).all() for n, p in model_me.named_parameters()
                    if n.endswith("bias") and "dt_proj" not in n and "conv1d" not in n and "norm" not in n)]}


def check(out: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cls = import_upstream(fetch_sdist(), Path(tmp))
        record = {"upstream": f"mamba-ssm {VERSION} MambaLMHeadModel(64, 2, 17)",
                  "ours": "arch=induction/mamba_paper_shell (mamba, norm=layernorm, rescale_out_proj=true)",
                  "same_weights_float32": compare_same_weights(cls), "init": init_stats(cls)}
    same, init = record["same_weights_float32"], record["init"]
    record["failures"] = [msg for ok, msg in [
        (same["logits_max_abs_diff"] <= 1e-5 * max(1.0, same["logits_scale"]), "logits differ"),
        (same["grad_max_rel_diff"] <= 1e-4, f"gradient of {same['grad_worst']} differs"),
        (same["n_params_theirs"] == same["n_params_ours"], "parameter counts differ"),
        (abs(init["out_proj_std"][1] / init["out_proj_std"][0] - 1) < 0.05, "out_proj init scale differs"),
        (abs(init["embed_std"][1] / init["embed_std"][0] - 1) < 0.05, "embedding init differs"),
        (init["layernorm_everywhere"] == [True, True] and init["norm_count"][0] == init["norm_count"][1],
         "norms differ"),
        (init["head_tied"] == [True, True], "head tying differs"),
        (init["zero_biases_except_dt_proj"] == [True, True], "bias init differs")] if not ok]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "results/cpu/extrapolation/table2/paper_shell_check.json")
    record = check(p.parse_args().out)
    print(json.dumps(record, indent=2))
    sys.exit(1 if record["failures"] else 0)


if __name__ == "__main__":
    main()
