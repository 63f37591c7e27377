"""Triton's compiled kernels carried from one GPU check to the next.

A fresh GPU machine compiles every Triton kernel again: on the H200 (2026-12-04) that was
2-3 minutes per test for fla's and mamba_ssm's kernels, ten side by side, more than the
check's 140 s for its GPU tests, and 26-62 s of a cost point's first call - a third of a
15-minute device session. ``gpu_check`` returns the caches it filled as one tarball
(``triton_cache.tar.gz`` in OUT); put it at ``.triton_cache/triton_cache.tar.gz`` (ignored
by git) and carry ``.triton_cache`` with ``.whl`` next time: the check restores it before
its first step. Triton keys each kernel by its source, its options, the Triton build and the
target GPU, so an entry that does not fit is never used - that kernel compiles as before.

The caches: ``~/.triton/cache`` (what the apps and benchmarks compile, at Triton's default
precision) and ``~/.triton/cache-f32-ieee`` (the GPU tests' fp32 builds; tests/conftest.py).
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

FILE = "triton_cache.tar.gz"
CARRIED = Path(".triton_cache") / FILE      # where the next check looks, from the tree's root
CACHES = ("cache", "cache-f32-ieee")        # folders under ~/.triton
LIMIT = 15 << 20                            # files coming back from the GPU machine: <= 16 MiB


def _files(home: Path) -> list[Path]:
    return sorted(p for name in CACHES if (home / name).is_dir() for p in (home / name).rglob("*") if p.is_file())


def restore(archive: Path, home: Path) -> str:
    """Unpack ``archive`` into ``home`` (~/.triton); what was done, in words."""
    if not archive.is_file():
        return f"none at {archive} (every Triton kernel compiles)"
    home.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[0] in CACHES]
        # the "data" filter refuses absolute paths, links out of the folder, devices
        tar.extractall(home, members=members, filter="data")
    size = sum(m.size for m in members)
    return f"restored {len(members)} files ({size / 2**20:.1f} MiB) from {archive}"


def save(home: Path, out: Path, limit: int = LIMIT) -> str:
    """``out`` = the caches under ``home`` as one tarball, when it fits ``limit``; what was
    done, in words (a tarball over the limit is not written: it would not come back)."""
    files = _files(home)
    if not files:
        return "no Triton cache to return"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(home)))
    if buf.tell() > limit:
        return (f"Triton cache not returned: {buf.tell() / 2**20:.1f} MiB compressed > "
                f"{limit / 2**20:.0f} MiB ({len(files)} files)")
    tmp = out.with_name(f".{out.name}")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)
    return f"returned {len(files)} files as {out.name} ({buf.tell() / 2**20:.1f} MiB)"
