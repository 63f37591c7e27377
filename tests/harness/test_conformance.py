"""Every registered architecture (built-in or plugin) passes the conformance suite."""
import pytest

from archs import list_archs
from harness.conformance import CHECKS, build_tiny, main


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("arch", list_archs())
def test_conformance(arch, check):
    # Call the check directly so a failure shows its own traceback.
    CHECKS[check](build_tiny(arch))


def test_cli_reports_and_exits_zero(capsys):
    assert main(["transformer", "--check", "shapes"]) == 0
    out = capsys.readouterr().out
    assert "PASS  transformer" in out and "0 failed" in out


def test_cli_unknown_arch_lists_known():
    with pytest.raises(KeyError, match="Known architectures: .*transformer"):
        main(["no_such_arch"])
