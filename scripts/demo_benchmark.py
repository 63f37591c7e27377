"""The demo benchmark record: run `make demo`'s job under /usr/bin/time -v, on an empty
output folder, and write what it cost as results/<device>/demo/demo_benchmark.json.

    .venv/bin/python scripts/demo_benchmark.py            # from a fresh clone, on an idle machine

Records wall time, user/sys CPU time, peak RSS (/usr/bin/time's "Maximum resident set
size"), the device the demo used, CPU model and core count, torch version and the git
commit (refused on a dirty tree unless --allow-dirty: the record must name the code it
measured). The demo resumes from earlier results, so it is always timed on a new folder.
Measure on an otherwise idle machine: the README's timing claims quote this record.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# /usr/bin/time -v field -> (record key, parser)
FIELDS = {
    "User time (seconds)": ("user_s", float),
    "System time (seconds)": ("sys_s", float),
    "Elapsed (wall clock) time (h:mm:ss or m:ss)": ("wall_s", lambda v: _clock(v)),
    "Maximum resident set size (kbytes)": ("peak_rss_mb", lambda v: round(int(v) / 1024, 1)),
    "Exit status": ("exit_status", int),
}


def _clock(text: str) -> float:
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def parse_time_v(stderr: str) -> dict[str, float]:
    """The FIELDS of a /usr/bin/time -v report (the last one in ``stderr``)."""
    out = {}
    for line in stderr.splitlines():
        name, _, value = line.strip().rpartition(": ")
        if name in FIELDS:
            key, parse = FIELDS[name]
            out[key] = parse(value.strip())
    missing = [k for k, _ in FIELDS.values() if k not in out]
    if missing:
        raise ValueError(f"no {missing} in the /usr/bin/time -v output; is /usr/bin/time GNU time?")
    return out


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=None, help="record folder (default results/<cpu|gpu>/demo)")
    parser.add_argument("--allow-dirty", action="store_true", help="measure uncommitted code (not for the record)")
    args = parser.parse_args(argv)
    if not Path("/usr/bin/time").exists():
        parser.error("/usr/bin/time is missing: install GNU time (apt-get install time)")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    if dirty and not args.allow_dirty:
        parser.error("the work tree has uncommitted changes; commit them (or pass --allow-dirty)")
    with tempfile.TemporaryDirectory(prefix="archbench-demo-") as tmp:
        cmd = ["/usr/bin/time", "-v", args.python, "-m", "harness.demo", "--out", str(Path(tmp) / "demo")]
        print("$", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr[-4000:])
    timing = parse_time_v(proc.stderr)
    if timing["exit_status"] != 0:
        print(f"the demo failed (exit {timing['exit_status']}); no record written", file=sys.stderr)
        return 1
    probe = ("import torch; print(torch.__version__); "
             "print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')")
    torch_version, device = subprocess.run([args.python, "-c", probe], capture_output=True, text=True,
                                           check=True).stdout.split("\n")[:2]
    record = {
        "what": "make demo (python -m harness.demo) on an empty output folder",
        **timing, "cpu_s": round(timing["user_s"] + timing["sys_s"], 1),
        "device": device, "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "torch": torch_version, "python": platform.python_version(),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": dirty,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = args.out or ROOT / "results" / ("cpu" if device == "cpu" else "gpu") / "demo"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo_benchmark.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{path}:\n{json.dumps(record, indent=2)}")
    print(f"\nREADME: `make demo` took {timing['wall_s'] / 60:.1f} min wall "
          f"({record['cpu_s'] / 60:.1f} CPU-min), peak RSS {timing['peak_rss_mb'] / 1024:.2f} GB "
          f"on {record['cpu_count']} cores ({record['cpu_model']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
