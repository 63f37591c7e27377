"""Triton's caches carried from one GPU check to the next (scripts/triton_cache.py)."""
from __future__ import annotations

import io
import sys
import tarfile

import pytest

from tests.paths import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import triton_cache  # noqa: E402


def _fill(home, files):
    for rel, data in files.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_bytes(data)


def test_round_trip_restores_both_caches_byte_for_byte(tmp_path):
    gpu, later = tmp_path / "gpu" / ".triton", tmp_path / "later" / ".triton"
    files = {"cache/ab12/kernel.cubin": b"\x7fELF" + bytes(range(200)), "cache/ab12/kernel.json": b"{}",
             "cache-f32-ieee/cd34/kernel.cubin": b"ieee", "elsewhere/ignored.txt": b"not a cache"}
    _fill(gpu, files)
    out = tmp_path / triton_cache.FILE
    said = triton_cache.save(gpu, out)
    assert said.startswith("returned 3 files")
    assert "restored 3 files" in triton_cache.restore(out, later)
    for rel, data in files.items():
        assert (later / rel).exists() == (not rel.startswith("elsewhere"))
        if not rel.startswith("elsewhere"):
            assert (later / rel).read_bytes() == data


def test_nothing_to_restore_or_return_is_said(tmp_path):
    assert "every Triton kernel compiles" in triton_cache.restore(tmp_path / "absent.tar.gz", tmp_path / "h")
    assert triton_cache.save(tmp_path / "empty", tmp_path / triton_cache.FILE) == "no Triton cache to return"
    assert not (tmp_path / triton_cache.FILE).exists()


def test_a_cache_too_big_to_come_back_is_not_written(tmp_path):
    import os
    _fill(tmp_path / "h", {"cache/x/big.bin": os.urandom(4096)})  # incompressible
    said = triton_cache.save(tmp_path / "h", tmp_path / triton_cache.FILE, limit=1024)
    assert said.startswith("Triton cache not returned")
    assert not (tmp_path / triton_cache.FILE).exists()


def test_an_archive_cannot_write_outside_the_cache(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cache/../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(tarfile.FilterError):
        triton_cache.restore(archive, tmp_path / "home" / ".triton")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "home" / "escaped.txt").exists()
