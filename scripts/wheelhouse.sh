#!/usr/bin/env bash
# Wheels for the GPU machine, downloaded HERE (it has no network): Python 3.12, x86-64.
# Exactly the pure-Python packages that machine lacks, pinned with their own dependencies;
# nothing it already has (torch, triton, numpy, pandas, einops, packaging, ...).
#
#   scripts/wheelhouse.sh [DEST]        (default .whl/, git-ignored; carried to the GPU machine)
#   MAMBA_SDIST=1 scripts/wheelhouse.sh  also fetch mamba-ssm's sdist, for the optional timed
#                                        sm_90 build of its CUDA kernels in scripts/gpu_check.py
#
# hydra-core 1.3.8 -> omegaconf 2.3.1, antlr4-python3-runtime 4.9.3 (sdist only on PyPI:
# built into a wheel here, it is pure Python), packaging (already there);
# omegaconf -> PyYAML 6.0.4 (a cp312 manylinux wheel; installed only if missing there);
# fla-core = flash-linear-attention's kernels (fla.ops: Triton + einops, pure Python).
# The `flash-linear-attention` package itself only adds fla.models/fla.layers and pulls in
# transformers (large); archbench calls fla.ops only, so it is left out on purpose.
# mamba-ssm = its no-CUDA build (MAMBA_SKIP_CUDA_BUILD: pure Python + Triton, ~0.2 MB, built
# here with the local torch): Mamba-2's fused SSD kernels on the GPU machine, no compiler.
# fla-core and mamba-ssm at the versions pyproject.toml pins (scripts/pins.py), which the
# Triton kernel tier tests (tests/triton_interpret).
set -euo pipefail
DEST=${1:-.whl}
PYTHON=${PYTHON:-python3}
PIP="$PYTHON -m pip"
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --abi none
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any)
WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1 PyYAML==6.0.4 $("$PYTHON" "$HERE/pins.py" fla-core))
MAMBA=$("$PYTHON" "$HERE/pins.py" mamba-ssm)
ANTLR=antlr4-python3-runtime==4.9.3

mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST"/*.tar.gz "$DEST"/SIZES.txt
$PIP download -q --disable-pip-version-check --no-deps --only-binary=:all: "${TARGET[@]}" \
    -d "$DEST" "${WHEELS[@]}"
# antlr4 4.9.3 has no wheel on PyPI: build one (pure Python, so the wheel is py3-none-any).
$PIP wheel -q --disable-pip-version-check --no-deps --no-binary=:all: -w "$DEST" "$ANTLR"
# mamba-ssm's no-CUDA build: its setup.py needs torch (here) and, without these flags, a
# CUDA toolkit; the result is py3-none-any (checked below like every other wheel)
MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
    $PIP wheel -q --disable-pip-version-check --no-deps --no-build-isolation --no-binary=:all: \
    -w "$DEST" "$MAMBA"
if [ "${MAMBA_SDIST:-0}" = 1 ]; then
    $PIP download -q --disable-pip-version-check --no-deps --no-binary=:all: -d "$DEST" "$MAMBA"
fi
# every wheel must be installable on the GPU machine's Python 3.12 (tags checked offline)
$PIP install -q --disable-pip-version-check --no-index --no-deps --dry-run --ignore-installed \
    --only-binary=:all: "${TARGET[@]}" --target "$(mktemp -d)" "$DEST"/*.whl
(cd "$DEST" && shopt -s nullglob && files=(*.whl *.tar.gz) && \
 stat -c '%10s  %n' "${files[@]}" && \
 stat -c '%s' "${files[@]}" | awk '{t += $1} END {printf "%10d  total bytes (%.2f MiB)\n", t, t / 1048576}') \
 | tee "$DEST"/SIZES.txt
