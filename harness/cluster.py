"""Two things the submitit (SLURM) launcher needs from the harness process.

1. Picklable task functions. ``python -m harness.extrapolate -m hydra/launcher=slurm_cpu``
   makes submitit cloudpickle ``main`` *by value* (it lives in ``__main__``), walking the
   modules its code names. A method called ``backends`` makes cloudpickle take in
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
"""
from __future__ import annotations

import copyreg
import importlib
import logging
import types

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


def prepare_launchers() -> None:
    """Both of the above; the Hydra apps call it at import, before any launcher runs."""
    pickle_module_subclasses_by_name()
    quiet_sacct_bypass()
