"""Claims: which of several processes sharing one results folder measures a point.

A point is measured exactly once - and never zero times - when every process follows
these rules (``harness.sweep.run_points`` does):

* **claim** - ``<results_dir>/.claims/<key>.claim`` is created with its whole content at
  once (written to a temp file, then ``os.link``-ed to the name, which fails if the name
  exists), so a claim is never seen empty or half-written, and a full disk leaves no
  claim at all (a ``DiskFullError`` naming the path).
* **heartbeat** - while it holds claims, a process touches them (``os.utime``) every
  ``stale_s / 10`` seconds (at most 30 s), from a background thread.
* **judge** - a point is left to another process only if its claim shows a live owner:
  readable, owner not provably gone, and heartbeat younger than ``stale_s``. The owner
  is provably gone when it ran on this host, in this boot and PID namespace, and its PID
  is dead or now belongs to a process started at another time (PID reuse: the start time
  from ``/proc/<pid>/stat`` is recorded). The heartbeat's age is the filesystem's current
  time (the mtime of a probe file touched just now) minus the claim's mtime, so clock skew
  between nodes does not enter; a claim stamped more than ``stale_s`` in the future
  (a filesystem that takes clients' clocks) is judged stale, so even then no claim blocks
  longer than twice ``stale_s``.
* **take over** - a stale claim is renamed to a name unique to the taker; only the
  process whose rename moved the very file it judged (same inode, mtime and content) has
  taken it over and removes it, then claims as above. A taker that moved anything else
  (a fresh claim, a claim that just had a heartbeat) puts it back. So of two processes
  that judged one claim stale, one takes it over and logs it; the other leaves the point.
* **release** - a holder removes its claim only while it still carries its token; a
  holder whose claim was taken over says so (the point may then be measured twice; the
  second result replaces the first - one file per point).
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.atomic import pid_alive, reporting_disk_full

log = logging.getLogger(__name__)

DEFAULT_STALE_S = 600.0   # no heartbeat for this long: the owner is taken to be gone
MIN_STALE_S = 1.0
MAX_HEARTBEAT_S = 30.0
_HEARTBEAT_STACK = 512 * 1024  # small: the thread must start under a tight RLIMIT_DATA


def check_stale_s(stale_s: Any, key: str = "claim_stale_s") -> float:
    """``stale_s`` as a float, or ValueError naming ``key``: a claim is taken over after
    this many seconds without a heartbeat, so 0, negative, NaN or infinite make no sense."""
    try:
        value = float(stale_s)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={stale_s!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < MIN_STALE_S:
        raise ValueError(f"{key}={stale_s!r}: must be a finite number of seconds >= {MIN_STALE_S:g} "
                         f"(how long a claim may go without a heartbeat before it is taken over; "
                         f"default {DEFAULT_STALE_S:g})")
    return value


# ---------------------------------------------------------------- who is a process


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), or None."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3
    return fields[19] if len(fields) > 19 else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def me() -> dict[str, Any]:
    """This process as a claim records it."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid()),
            "boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": _pid_namespace()}


def owner_gone(owner: dict[str, Any], here: dict[str, Any]) -> str | None:
    """Why ``owner`` (a claim's record) is provably not running, or None when this process
    cannot tell (another host, boot or PID namespace) or it is running."""
    pid = owner.get("pid")
    if owner.get("host") != here["host"] or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    for key in ("boot", "pidns"):
        if owner.get(key) is not None and here[key] is not None and owner[key] != here[key]:
            # another boot: gone; another PID namespace (a container on this host): cannot tell
            return f"it ran before this host's last boot (pid {pid})" if key == "boot" else None
    if not pid_alive(pid):
        return f"its process (pid {pid} on {owner['host']}) has exited"
    start = owner.get("start")
    if start is not None and process_start(pid) not in (None, start):
        return f"pid {pid} on {owner['host']} now belongs to another process (PID reuse)"
    return None


# ---------------------------------------------------------------- claim files


@dataclass(frozen=True)
class Snapshot:
    """What one claim file was when it was read: to recognise it again after a rename."""
    inode: tuple[int, int]
    mtime_ns: int
    text: str

    @staticmethod
    def of(path: Path) -> "Snapshot | None":
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            return None
        return Snapshot((st.st_dev, st.st_ino), st.st_mtime_ns, raw.decode("utf-8", "replace"))

    def owner(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.text)
        except ValueError:
            return None
        return info if isinstance(info, dict) and info.get("pid") is not None else None


class Claims:
    """Claim files under ``<results_dir>/.claims`` (see the module doc)."""

    def __init__(self, results_dir: str | os.PathLike, stale_s: float = DEFAULT_STALE_S) -> None:
        self.dir = Path(results_dir) / ".claims"  # hidden: readers of point files skip it
        self.stale_s = check_stale_s(stale_s)
        self.heartbeat_s = min(MAX_HEARTBEAT_S, self.stale_s / 10)
        self.held: dict[str, str] = {}     # key -> token written into its claim
        self.left: set[str] = set()        # keys left to live owners
        self._me = me()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.claim"

    def owner(self, key: str) -> dict[str, Any] | None:
        snap = Snapshot.of(self.path(key))
        return None if snap is None else (snap.owner() or {"unreadable": snap.text[:80]})

    # -- judging -------------------------------------------------------------------------
    def fs_now(self) -> float:
        """The filesystem's current time: the mtime of a probe file touched now (the
        clock that stamps heartbeats), or this host's clock if that cannot be written."""
        probe = self.dir / f".clock.{self._me['host']}.{os.getpid()}"
        try:
            probe.touch()
            os.utime(probe)
            return probe.stat().st_mtime
        except OSError:
            return time.time()

    def why_stale(self, snap: Snapshot) -> str | None:
        """Why the claim ``snap`` may be taken over, or None if a live owner holds it."""
        owner = snap.owner()
        if owner is None:
            return f"unreadable claim ({snap.text[:40]!r})" if snap.text.strip() else "empty claim"
        if (owner.get("pid"), owner.get("host"), owner.get("start")) == (
                os.getpid(), self._me["host"], self._me["start"]):
            return "a claim of this very process that it no longer holds"
        gone = owner_gone(owner, self._me)
        if gone:
            return gone
        age = self.fs_now() - snap.mtime_ns / 1e9
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f} s (claim_stale_s={self.stale_s:g})"
        if age < -self.stale_s:
            return (f"its heartbeat is stamped {-age:.0f} s in the future (clock skew between hosts "
                    f"beyond claim_stale_s={self.stale_s:g})")
        return None

    # -- acquiring ---------------------------------------------------------------------
    def _create(self, path: Path) -> str | None:
        """Create ``path`` with a full claim record (temp file + link); its token, or None
        if the name exists."""
        token = uuid.uuid4().hex
        text = json.dumps({**self._me, "token": token, "time": time.time()})  # time: for people
        tmp = path.with_name(f".{path.name}.{token}.new")
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            with reporting_disk_full(path, "the claim"):
                tmp.write_text(text)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return None
            except OSError:  # a filesystem without hard links: exclusive create, then write
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return None
                with os.fdopen(fd, "w") as f:
                    f.write(text)
        finally:
            tmp.unlink(missing_ok=True)
        return token

    def _remove_if_same(self, path: Path, snap: Snapshot) -> bool:
        """Remove ``path`` if it is still exactly ``snap`` (rename it away, compare, put
        back anything else); True if this call removed it."""
        grave = path.with_name(f".{path.name}.{uuid.uuid4().hex}.taken")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return False
        try:
            if Snapshot.of(grave) == snap:
                return True
            try:
                os.link(grave, path)  # not the file we judged: put it back
            except FileExistsError:
                log.warning("claim %s was replaced while being checked; its owner may measure the "
                            "point a second time", path)
            return False
        finally:
            grave.unlink(missing_ok=True)

    def acquire(self, key: str) -> bool:
        """True if this process now holds ``key``'s claim; False if a live owner holds it."""
        path = self.path(key)
        for _ in range(8):
            try:
                token = self._create(path)
            except FileNotFoundError:
                continue  # the folder was removed by a finishing process just now
            if token is not None:
                with self._lock:
                    self.held[key] = token
                self._start_heartbeat()
                return True
            snap = Snapshot.of(path)
            if snap is None:
                continue  # released meanwhile: try again
            why = self.why_stale(snap)
            if why is None:
                self.left.add(key)
                return False
            if self._remove_if_same(path, snap):
                log.warning("took over the claim on %s: %s (owner %s)", key, why, snap.owner() or "unknown")
        self.left.add(key)
        return False

    # -- holding -----------------------------------------------------------------------
    def _still_mine(self, key: str, token: str) -> bool:
        snap = Snapshot.of(self.path(key))
        return snap is not None and (snap.owner() or {}).get("token") == token

    def beat(self) -> None:
        """Touch every held claim; say so once if one was taken over."""
        with self._lock:
            held = dict(self.held)
        for key, token in held.items():
            try:
                if self._still_mine(key, token):
                    os.utime(self.path(key))
                    continue
            except OSError:
                pass
            with self._lock:
                if self.held.pop(key, None) is None:
                    continue
            log.warning("the claim on %s was taken over by another process (no heartbeat seen for "
                        "claim_stale_s=%g s?); the point may be measured twice", key, self.stale_s)

    def _start_heartbeat(self) -> None:
        if self._beater is not None and self._beater.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.beat()
                except Exception as exc:  # noqa: BLE001 - a heartbeat must never kill the sweep
                    log.warning("claim heartbeat failed: %s", exc)

        self._beater = threading.Thread(target=loop, name="archbench-claim-heartbeat", daemon=True)
        old = threading.stack_size()
        try:
            threading.stack_size(_HEARTBEAT_STACK)
            self._beater.start()
        except (RuntimeError, ValueError) as exc:
            log.warning("no claim heartbeat (%s): a point measured for longer than claim_stale_s=%g s "
                        "may be taken over by another process", exc, self.stale_s)
            self._beater = None
        finally:
            threading.stack_size(old)

    def release(self, key: str) -> None:
        with self._lock:
            token = self.held.pop(key, None)
        if token is None:
            return
        # Ours while it carries our token: nobody takes over a claim whose heartbeat is fresh.
        if self._still_mine(key, token):
            self.path(key).unlink(missing_ok=True)

    def release_all(self) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=5)
            self._beater = None
        for key in list(self.held):
            self.release(key)
        self._remove_debris()
        try:
            self.dir.rmdir()  # only when empty: no claim of anyone is touched
        except OSError:
            pass

    def _remove_debris(self) -> None:
        """Hidden files in the claims folder (temp claims, renamed-away ones, clock probes)
        that a killed process left: untouched for longer than ``stale_s``, they are debris."""
        now = self.fs_now()
        (self.dir / f".clock.{self._me['host']}.{os.getpid()}").unlink(missing_ok=True)
        for debris in self.dir.glob(".*"):
            try:
                if now - debris.stat().st_mtime > self.stale_s:
                    debris.unlink()
            except OSError:
                continue

