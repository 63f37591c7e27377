"""The one atomic writer of the project, and what goes with it.

* ``atomic_write(path, content)`` - readers see the old file or the new one, never a part
  (temp file ``.<name>.<host>.<pid>.tmp`` in the same folder, fsync, ``os.replace``);
  ``clean_stale_temps`` removes the temp files of killed writers.
* ``atomic_write_group`` - several files replaced together (collect's parquet + csv),
  all old or all new after a kill, one writer at a time (``group_lock``).
* ``reporting_disk_full`` - a write that fails on a full disk says "disk full" and names
  the path, whatever the library that wrote it (torch.save's C++ writer loses the errno).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[Path], None]) -> Path:
    """Write ``path`` so readers see the old file or the new one, never a part: the
    content goes to a dot-prefixed temp file in the same directory
    (``.<name>.<host>.<pid>.tmp``), is fsynced, then ``os.replace``-d over ``path``.
    ``content`` is text, bytes, or a function that writes the file at the path it is given
    (``lambda p: df.to_parquet(p)``). A killed writer leaves only the temp file, which
    readers ignore and ``ResultStore.clean_temp`` removes. The one writer of the project."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{_host()}.{os.getpid()}.tmp")
    try:
        with reporting_disk_full(final):
            if callable(content):
                content(tmp)
            else:
                with open(tmp, "wb") as f:
                    f.write(content.encode() if isinstance(content, str) else content)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(final.parent)
    return final


class DiskFullError(OSError):
    """A write failed because its filesystem is full (or over quota); names the path."""


# Below this much free space, a write error without an errno (torch.save's C++ writer says
# only "basic_ios::clear: iostream error" or "file write failed") is taken to be a full disk.
_NEARLY_FULL_BYTES = 16 * 2**20


@contextlib.contextmanager
def reporting_disk_full(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Re-raise a write error inside the block that a full disk caused as a
    ``DiskFullError`` saying "disk full", naming ``path`` and the free space left."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as exc:
        where = Path(path).parent
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            free = None
        code = getattr(exc, "errno", None)
        full = code in (errno.ENOSPC, errno.EDQUOT) or (
            code is None and free is not None and free < _NEARLY_FULL_BYTES)
        if not full:
            raise
        left = f"{free / 2**20:.1f} MiB free there" if free is not None else "free space unknown"
        raise DiskFullError(errno.ENOSPC, f"disk full: cannot write {what + ' ' if what else ''}{path} "
                            f"({left}; {type(exc).__name__}: {str(exc).strip()[:120]}). Free space on "
                            f"that filesystem or point the folder elsewhere, then re-run") from exc


def atomic_write_group(directory: str | os.PathLike, name: str,
                       writes: Mapping[str, str | bytes | Callable[[Path], None]]) -> list[Path]:
    """Replace several files of ``directory`` together: after a kill at any moment the
    next call (or ``finish_group``) leaves them all old or all new.

    1. each new file is written in full as ``.<file>.<name>.new`` (fsynced);
    2. a journal ``.<name>.journal`` listing them is written atomically - the commit point;
    3. each ``.new`` file is renamed over its final name, then the journal is removed.
    ``finish_group`` (run first by every call) completes a group whose journal exists
    (roll forward) and deletes ``.new`` files without one (roll back)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    with group_lock(root, name):
        finish_group(root, name)
        staged = {}
        for fname, content in writes.items():
            new = root / f".{fname}.{name}.new"
            atomic_write(new, content)
            staged[new.name] = fname
        atomic_write(root / f".{name}.journal", json.dumps(staged))
        finish_group(root, name)
    return [root / f for f in writes]


_HELD_LOCKS: dict[Path, int] = {}


@contextlib.contextmanager
def group_lock(directory: str | os.PathLike, name: str) -> Iterator[None]:
    """Exclusive for the block among processes writing group ``name`` in ``directory``
    (``flock`` on ``.<name>.lock``: released by the kernel if the holder dies, so it is
    never stale); re-entrant within a process. Another holder is waited for."""
    import fcntl

    path = (Path(directory) / f".{name}.lock").resolve()
    if path in _HELD_LOCKS:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process writing %s in %s", name, directory)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a filesystem without locks: go on, as before the lock existed
            log.warning("cannot lock %s (%s); a concurrent %s into that folder could mix files", path, exc, name)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # still the lock file (the previous holder removes it when done)
        except FileNotFoundError:
            pass
        os.close(fd)
    _HELD_LOCKS[path] = fd
    try:
        yield
    finally:
        del _HELD_LOCKS[path]
        path.unlink(missing_ok=True)  # while still locked: waiters then see a new file
        os.close(fd)  # releases the lock


def finish_group(directory: str | os.PathLike, name: str) -> None:
    """Complete (journal present) or discard (journal absent) an interrupted
    ``atomic_write_group``."""
    root = Path(directory)
    journal = root / f".{name}.journal"
    try:
        staged = json.loads(journal.read_text())
    except FileNotFoundError:
        for stray in root.glob(f".*.{name}.new"):
            stray.unlink(missing_ok=True)
        return
    for new, final in staged.items():
        if (root / new).exists():
            os.replace(root / new, root / final)
    _fsync_dir(root)
    journal.unlink(missing_ok=True)



def clean_stale_temps(directory: str | os.PathLike, max_age_s: float = 3600.0) -> int:
    """Remove the temp files of ``atomic_write`` (``.<name>.<host>.<pid>.tmp``) below
    ``directory`` that killed writers left; return how many.

    A temp file is removed if its writer ran on this host and is no longer alive, or if it
    is older than ``max_age_s`` (this covers writers on other hosts of a shared filesystem,
    whose pids cannot be checked, and a pid reused since)."""
    removed = 0
    host = _host()
    for tmp in Path(directory).rglob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)  # [".<name>", host, pid, "tmp"]
        same_host_dead = len(parts) == 4 and parts[1] == host and not pid_alive(parts[2])
        try:
            too_old = time.time() - tmp.stat().st_mtime > max_age_s
            if same_host_dead or too_old:
                tmp.unlink()
                removed += 1
                log.info("removed %s, left by a killed writer", tmp)
        except FileNotFoundError:
            continue  # its writer finished or another cleaner got there first
    return removed


def _host() -> str:
    # Dots would break parsing the temp name back into (key, host, pid).
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def pid_alive(pid: int | str) -> bool:
    """Whether process ``pid`` exists on this host (a temp file's writer, a claim's owner)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
