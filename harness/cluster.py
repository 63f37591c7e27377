"""What Hydra's launchers (submitit for SLURM, joblib) need from the harness process.

1. Picklable task functions. ``python -m harness.extrapolate -m hydra/launcher=slurm_cpu``
   makes submitit cloudpickle the app's task function *by value* (it lives in ``__main__``),
   walking the modules its code names. A method called ``backends`` makes cloudpickle take in
   ``torch.backends``, a module *subclass* (``GenericModule``) it cannot pickle, and the
   submission fails with "cannot pickle 'GenericModule' object". Module objects of that
   kind are registered to pickle by name (re-imported in the job).
2. Quiet submitit on clusters without SLURM accounting.

submitit asks ``sacct`` for job states; a cluster without accounting (the local one of
scripts/slurm-local.sh, many small clusters) makes every poll fail and submitit log
"Bypassing sacct error ... status may be inaccurate" as a warning, dozens of times per
sweep. The jobs still finish (submitit then waits on their result files), so that one
record is dropped from the ``submitit`` logger: said once at debug level, never again.
Nothing else submitit logs is touched.
3. A launcher whose plugin is missing says which extra to install: without the
   ``[cluster]`` extra, ``hydra/launcher=slurm_cpu`` (``submitit_slurm``, ``submitit_local``,
   ``joblib``) fails with "needs the cluster extra: pip install 'archbench[cluster]'"
   instead of Hydra's "Could not load 'hydra/launcher/submitit_slurm'".
4. A SLURM job that can never start stops the sweep (``watch_pending_slurm_jobs``): while
   submitit waits, a job array PENDING for a reason that waiting cannot resolve
   (``PartitionConfig``, a request above the partition's limits ...) is cancelled and the
   sweep ends with a message naming the request, the partition's limits and what to override.
"""
from __future__ import annotations

import copyreg
import functools
import importlib
import importlib.util
import logging
import subprocess
import time
import types
from collections.abc import Callable

SACCT_BYPASS = "Bypassing sacct error"


def _module_by_name(module: types.ModuleType):
    return importlib.import_module, (module.__name__,)


def pickle_module_subclasses_by_name() -> None:
    """Make ``torch.backends`` (a ``ModuleType`` subclass) picklable by reference."""
    import torch.backends

    kind = type(torch.backends)
    if kind is not types.ModuleType:
        copyreg.pickle(kind, _module_by_name)


class DropSacctBypass(logging.Filter):
    """Drops submitit's repeated "Bypassing sacct error" warnings (logger-level filter)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if SACCT_BYPASS not in record.getMessage():
            return True
        self.dropped += 1
        if self.dropped == 1:
            logging.getLogger(__name__).debug("sacct unavailable (no SLURM accounting?): %s", record.getMessage())
        return False


def quiet_sacct_bypass() -> None:
    """Install the filter once. A logger's filters survive submitit's own dictConfig
    (it replaces handlers and level, not filters), so this may run before or after it."""
    logger = logging.getLogger("submitit")
    if not any(isinstance(f, DropSacctBypass) for f in logger.filters):
        logger.addFilter(DropSacctBypass())


# Hydra launcher configs (hydra/launcher=NAME) and the plugin module that provides each.
EXTRA_LAUNCHERS = {"submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
                   "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                   "joblib": "hydra_plugins.hydra_joblib_launcher"}
_MISSING_RESOLVER = "archbench_missing_extra"


def _missing_extra(launcher: str) -> str:
    presets = " (which hydra/launcher=slurm_cpu and slurm_gpu build on)" if launcher == "submitit_slurm" else ""
    raise ImportError(
        f"hydra/launcher={launcher}{presets} needs the `cluster` extra, which is not installed here: "
        f"pip install 'archbench[cluster]' (hydra-submitit-launcher, submitit, hydra-joblib-launcher); "
        f"or run without hydra/launcher=...")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def stand_in_for_missing_launchers() -> None:
    """For each launcher of the ``cluster`` extra whose plugin is not installed, a stand-in
    config under its name: composing it works, launching it raises the ``_missing_extra``
    message. (Installed, the plugin's own config replaces it when Hydra scans plugins.)"""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(_MISSING_RESOLVER):
        OmegaConf.register_new_resolver(_MISSING_RESOLVER, _missing_extra)
    for name, module in EXTRA_LAUNCHERS.items():
        if not _installed(module):
            ConfigStore.instance().store(group="hydra/launcher", name=name, package="hydra.launcher",
                                         node={"_target_": f"${{{_MISSING_RESOLVER}:{name}}}"})


def prepare_launchers() -> None:
    """All of the above, before any launcher runs (``start_app``; not at import: importing an
    app for its ``run`` changes nothing)."""
    pickle_module_subclasses_by_name()
    quiet_sacct_bypass()
    stand_in_for_missing_launchers()
    watch_pending_slurm_jobs()


def start_app(app: Callable[[], None]) -> None:
    """Each Hydra app's ``main()``: register the schemas its config names
    (``harness.config.register_configs``), prepare the launchers, then run ``app`` (its
    ``@hydra.main`` function, which parses the command line)."""
    from harness.config import register_configs

    register_configs()
    prepare_launchers()
    app()



# ---------------------------------------------------------------- SLURM jobs that cannot start

# Pending reasons that waiting cannot resolve: the request is beyond what the partition, its
# nodes, the account or the QOS allow. (Priority, Resources, Dependency, JobArrayTaskLimit,
# QOSMaxJobsPerUserLimit ... resolve as other jobs finish, and are waited for.)
HOPELESS_REASONS = frozenset({
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
    "InvalidQOS", "DependencyNeverSatisfied", "MaxMemPerLimit", "QOSMaxCpuPerJobLimit",
    "QOSMaxNodePerJobLimit", "QOSMaxWallDurationPerJobLimit", "QOSMaxMemoryPerJob",
    "AssocMaxCpuPerJobLimit", "AssocMaxNodesPerJobLimit", "AssocMaxWallDurationPerJobLimit",
    "AssocMaxMemPerJobLimit"})
PENDING_CHECK_S = 10.0  # how often the queue is asked while submitit waits (per job array)


class SlurmJobCannotStart(RuntimeError):
    """A submitted job array is pending for a reason that waiting cannot resolve."""


def _slurm(*command: str) -> str:
    """stdout of a SLURM client command, or "" if it fails (no SLURM here, a slow controller)."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def _fields(text: str) -> dict[str, str]:
    """``scontrol show ...`` output as KEY -> value."""
    return dict(word.split("=", 1) for word in text.split() if "=" in word)


def _mb(value: str) -> int | None:
    """SLURM memory (``8G``, ``7000M``, ``7000``) in MB."""
    value = value.strip()
    try:
        scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}.get(value[-1:].upper())
        return int(float(value[:-1]) * scale) if scale else int(value)
    except ValueError:
        return None


def describe_hopeless(array_id: str, reason: str) -> str:
    """The message for a job array stuck on ``reason``: request, partition limits, overrides."""
    job = _fields((_slurm("scontrol", "show", "job", "-o", array_id).splitlines() or [""])[0])
    part_name = job.get("Partition", "?")
    part = _fields(_slurm("scontrol", "show", "partition", "-o", part_name))
    nodes = [line.split("|") for line in _slurm("sinfo", "-h", "-p", part_name, "-o", "%c|%m").split()]
    node_cpus = max((int(c) for c, _ in nodes if c.isdigit()), default=None)
    node_mb = max((int(m) for _, m in nodes if m.isdigit()), default=None)
    cpus = job.get("MinCPUsNode") or job.get("NumCPUs", "?")
    mem = job.get("MinMemoryNode") or (job.get("MinMemoryCPU", "?") + " per CPU")
    asks = (f"{cpus} CPUs, {mem} memory, time limit {job.get('TimeLimit', '?')} and "
            f"NumNodes={job.get('NumNodes', '?')} per task, on partition '{part_name}'")
    allows = (f"nodes with at most {node_cpus if node_cpus is not None else '?'} CPUs and "
              f"{node_mb if node_mb is not None else '?'} MB, "
              + ", ".join(f"{k}={part[k]}" for k in ("MaxCPUsPerNode", "MaxMemPerNode", "MaxMemPerCPU",
                                                     "MaxTime", "MaxNodes", "State") if k in part))
    fix = []
    if node_cpus is not None and cpus.isdigit() and int(cpus) > node_cpus:
        fix.append(f"hydra.launcher.cpus_per_task={node_cpus}")
    asked_mb = _mb(job.get("MinMemoryNode", ""))
    if node_mb is not None and asked_mb is not None and asked_mb > node_mb:
        fix.append(f"hydra.launcher.mem_gb={max(1, node_mb // 1024)}")
    overrides = " ".join(fix) + "; or " if fix else ""
    return (f"SLURM job {array_id} cannot start: it is PENDING with Reason={reason}, which waiting does "
            f"not resolve. It asks {asks}; the partition allows {allows}. Override the request to fit: "
            f"{overrides}set hydra.launcher.cpus_per_task / mem_gb / timeout_min / partition / account to what "
            f"the cluster allows. The pending job was cancelled.")


class PendingWatch:
    """Asks ``squeue`` about each job array at most every ``PENDING_CHECK_S`` seconds."""

    def __init__(self) -> None:
        self.asked: dict[str, float] = {}

    def check(self, job_id: str) -> None:
        array_id = str(job_id).split("_")[0]
        now = time.monotonic()
        if now - self.asked.get(array_id, -PENDING_CHECK_S) < PENDING_CHECK_S:
            return
        self.asked[array_id] = now
        for line in _slurm("squeue", "-h", "-j", array_id, "-o", "%T|%r").splitlines():
            state, _, reason = line.partition("|")
            if state.strip() == "PENDING" and reason.strip() in HOPELESS_REASONS:
                message = describe_hopeless(array_id, reason.strip())
                _slurm("scancel", array_id)
                raise SlurmJobCannotStart(message)


def watch_pending_slurm_jobs() -> None:
    """Make submitit's SLURM jobs check, while they are waited for, that they can start
    (``PendingWatch``): the launcher waits in ``Job.results()``, which polls ``done()`` every
    second and has no notion of a job that will never run. ``SlurmJob.done`` is wrapped
    (Hydra re-executes its launcher plugin's module when it scans plugins, so the launcher
    class itself cannot be patched from here)."""
    try:
        from submitit.slurm.slurm import SlurmJob
    except ImportError:
        return  # no cluster extra: nothing to watch
    done = SlurmJob.done
    if getattr(done, "_watches_pending", False):
        return
    watch = PendingWatch()

    @functools.wraps(done)
    def done_or_hopeless(job, force_check: bool = False) -> bool:
        finished = done(job, force_check)
        if not finished:
            watch.check(job.job_id)
        return finished

    done_or_hopeless._watches_pending = True
    SlurmJob.done = done_or_hopeless
