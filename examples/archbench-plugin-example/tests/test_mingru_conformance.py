"""A plugin's own test: the archbench conformance suite run on our architecture."""
import pytest

from harness.conformance import CHECKS, assert_conformance


@pytest.mark.parametrize("check", list(CHECKS))
def test_mingru_conforms(check):
    assert_conformance("mingru", checks=[check])
