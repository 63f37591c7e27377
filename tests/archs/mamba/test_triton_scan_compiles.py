"""archbench's Triton scan (archs/mamba/triton_scan.py) compiles for a Hopper GPU here, on a
CPU machine: Triton's compiler takes the kernels through TTIR, TTGIR, LLVM IR and PTX to a
sm_90 cubin (ptxas comes with the triton wheel) without a GPU. The interpreter tier checks
the numbers; this catches what only the compiler refuses (types that change in a loop, a
construct the interpreter lets through) before a GPU run does."""
from __future__ import annotations

import inspect
import os

import pytest

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="the kernels are interpreted functions under TRITON_INTERPRET=1")


def _compile(fn, flags: dict):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = inspect.signature(fn.fn).parameters
    params = list(sig)
    constexprs = {"CHUNK": 64, "BLOCK_E": 32, "BLOCK_N": 16, **flags}  # flags may set CHUNK, BLOCK_E
    optional = {"D_ptr": "HAS_D", "z_ptr": "HAS_Z", "bias_ptr": "HAS_BIAS", "h0_ptr": "HAS_H0",
                "glast_ptr": "HAS_GLAST", "dz_ptr": "HAS_Z"}
    signature = {}
    for p in params:
        if "constexpr" in str(sig[p].annotation):
            signature[p] = "constexpr"
        elif p in optional and not flags.get(optional[p], True):
            signature[p], constexprs[p] = "constexpr", None  # an absent input: None, as launched
        else:
            signature[p] = "*fp32" if p.endswith("_ptr") else "i32"
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(params.index(k),): v for k, v in constexprs.items() if k in params})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32))


@pytest.mark.parametrize("present", [True, False])
@pytest.mark.parametrize("kernel", ["triton_scan._scan_fwd_kernel", "triton_scan._scan_bwd_kernel",
                                    "triton_scan_tiled._tile_fwd_kernel", "triton_scan_tiled._tile_bwd_kernel"])
def test_kernel_compiles_to_a_sm90_cubin(kernel, present):
    import importlib

    module, name = kernel.split(".")
    mod = importlib.import_module(f"archs.mamba.{module}")
    sizes = {"CHUNK": mod.TILE, "BLOCK_E": mod.MAX_BLOCK_E} if module == "triton_scan_tiled" else {}
    flags = {f: present for f in ("HAS_D", "HAS_Z", "HAS_BIAS", "HAS_H0", "SAVE", "HAS_GLAST", "SOFTPLUS")}
    compiled = _compile(getattr(mod, name), {**flags, **sizes})
    assert compiled.asm["cubin"] and ".target sm_90" in compiled.asm["ptx"]
