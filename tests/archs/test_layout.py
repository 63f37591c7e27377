"""The fla layout: shared cores live outside the families, so importing one family never
pulls in another (read from the import statements, no interpreter per family), and each
fast form sits beside its reference."""
import ast
import functools

import pytest

from tests.paths import ROOT

ARCHS = ROOT / "archs"


def _file(module: str):
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_module(module: str) -> bool:
    return _file(module).exists()


@functools.lru_cache(maxsize=None)
def _imports_at_load(module: str) -> frozenset[str]:
    """The archs modules ``module`` imports when it is loaded: its module-level import
    statements (a function's lazy import waits for the call), packages included."""
    found: set[str] = set()
    todo = list(ast.parse(_file(module).read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)
                      if parts[0] == "archs" and _is_module(".".join(parts[:i]))}
        todo.extend(ast.iter_child_nodes(node))
    return frozenset(found)


def _loaded(module: str) -> set[str]:
    """Everything under archs/ that importing ``module`` loads (transitively)."""
    seen, todo = set(), [module]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            parts = mod.split(".")
            todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # parent packages
            todo += _imports_at_load(mod)
    return seen


# Every family folder under archs/ (a package without a leading underscore); the lists
# below come from the folders, so a new family is checked without editing this file.
FAMILIES = sorted(p.parent.name for p in ARCHS.glob("*/__init__.py")
                  if not p.parent.name.startswith("_"))
# attention's layer is the base that windowed, compressive and cross attention build on:
# the one family another family may import.
BASE_FAMILIES = {"attention"}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_imports_no_other_family(family):
    loaded = {m.split(".")[1] for m in _loaded(f"archs.{family}")}
    others = loaded & set(FAMILIES) - {family} - BASE_FAMILIES
    assert not others, f"archs.{family} imports the families {sorted(others)}: move the shared part to archs/_<core>.py"


def test_shared_cores_are_shared():
    assert "archs._ssd" in _loaded("archs.linear_attention") and "archs._ssd" in _loaded("archs.mamba2")


@pytest.mark.parametrize("family", [f for f in FAMILIES if (ARCHS / f / "chunked.py").exists()
                                    or (ARCHS / f / "fused.py").exists()])
def test_a_fast_form_has_its_reference_and_its_layer(family):
    """The fla layout: a chunked or fused form is tested against ``ref.py`` and used by the
    mixer in ``layer.py``."""
    folder = ARCHS / family
    assert {"ref.py", "layer.py"} <= {p.name for p in folder.glob("*.py")}


def test_linear_attention_and_mamba2_share_one_chunked_core():
    from archs import _ssd
    from archs.linear_attention import chunked as la_chunked
    from archs.mamba2 import chunked as m2_chunked
    assert la_chunked.chunked_core is _ssd.chunked_core is m2_chunked.chunked_core


def test_the_import_reading_sees_what_python_loads():
    """The static reading agrees with a real import (one interpreter, for one family)."""
    import json
    import subprocess
    import sys
    probe = ("import json, sys, archs.mamba2; "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('archs.'))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    real = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert _loaded("archs.mamba2") <= real
    assert {m.split(".")[1] for m in real} & set(FAMILIES) == {"mamba2"}
