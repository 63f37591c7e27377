#!/usr/bin/env python3
"""The pinned kernel packages, read from their one source: pyproject.toml's extras.

    python scripts/pins.py fla-core mamba-ssm      # -> fla-core==0.6.0 mamba-ssm==2.3.2.post1

``gpu`` pins the kernel packages archbench calls (fla-core, mamba-ssm), ``interpret`` the
Triton that runs them under the interpreter on a CPU (on a GPU machine triton comes with
torch, at torch's version). The Makefile (``make kernels``), the wheelhouse
(scripts/wheelhouse.sh) and the Triton kernel tier (tests/triton_interpret) all read these;
tests/scripts/test_pins.py checks that nothing else names another version.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
EXTRAS = ("gpu", "interpret")


def _pins() -> dict[str, str]:
    import tomllib  # Python >= 3.11 (the CI and GPU machines: 3.11, 3.12)

    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    pins = {}
    for extra in EXTRAS:
        for requirement in extras[extra]:
            found = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", requirement.replace(" ", ""))
            if found:
                pins[found.group(1).lower()] = found.group(2)
    return pins


KERNEL_PINS: dict[str, str] = _pins()


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name.lower() not in KERNEL_PINS]
    if unknown:
        print(f"no pin for {unknown} in {PYPROJECT.name} extras {EXTRAS}; pinned: {sorted(KERNEL_PINS)}",
              file=sys.stderr)
        return 2
    print(" ".join(f"{name}=={KERNEL_PINS[name.lower()]}" for name in argv or KERNEL_PINS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
