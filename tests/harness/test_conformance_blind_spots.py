"""Issue 27's blind spots: one planted bug each (tests/conformance_toys.py) that the suite
of c1ceaec let through, or reported with a misleading message. Each must now fail its
check with a message that names the bug.

* a leak at a single position (forward and prefill alike; outside every sampled gradient
  position and cut): caught by comparing step with forward at every position;
* slow decode drift (~2e-5 of the output per 100 tokens): the same comparison, with a
  tolerance that does not grow with the length;
* a small leak (1e-6 of the next token): exact zero gradients are required unless the
  mixer declares ``exact_causality = False``;
* bfloat16- and float64-only bugs: the causality and form checks run in those dtypes;
* messages: dropout left on in eval is "not deterministic" (and the rest is not run), a
  leak only in batches "depends on the batch size", a leak seen as prefill != forward
  names the forward.
"""
import pytest
import torch

from harness.conformance import CHECKS, ConformanceError
from tests.conformance_toys import (LENGTHS, ONE_POSITION, Bidirectional, DropoutInEval, Float32Inside,
                                    ForwardOnlyLeakAtOnePosition, LeakAtOnePosition, LeaksInBatches, SlowDrift,
                                    SmallLeak, SmallLeakDeclaredInexact, StateInModelDtype, registered,  # noqa: F401
                                    toy)

F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64
FORWARD_SEES_THE_FUTURE = (rf"causality leak at length 1024 in float32: the parallel forward's output at position "
                           rf"{ONE_POSITION} .*changes when the inputs after it are removed")

# (planted bug, check, dtype, what the message must say)
BLIND_SPOTS = [
    (LeakAtOnePosition, "long_decode", F32, FORWARD_SEES_THE_FUTURE),
    (ForwardOnlyLeakAtOnePosition, "long_decode", F32, FORWARD_SEES_THE_FUTURE),
    (ForwardOnlyLeakAtOnePosition, "long_prefill", F32, FORWARD_SEES_THE_FUTURE),  # not "prefill is wrong"
    (SlowDrift, "long_decode", F32, r"token-by-token step from position 0 vs parallel forward at length 1024 in "
                                    r"float32: first disagreement at position \d{3}.*so token-by-token step from "
                                    r"position 0 is the likely culprit"),
    (SmallLeak, "causality", F32, r"causality leak at length 21 in float32: the output at position 0 .*has a non-zero "
                                  r"gradient w.r.t. the input at future position 1 .*declare `exact_causality = "
                                  r"False`"),
    (SmallLeak, "long_causality", F32, r"causality leak at length 1024 in float32: .*non-zero gradient"),
    (StateInModelDtype, "long_decode", BF16, r"at length 1024 in bfloat16: first disagreement"),
    (Float32Inside, "step_matches_forward", F64, r"in float64: .*float32 rounding: does a form compute in float32"),
    (Float32Inside, "long_decode", F64, r"at length 1024 in float64: .*float32 rounding"),
    (DropoutInEval, "batch_independence", F32, r"^not deterministic at length 64 in float32"),
    (LeaksInBatches, "batch_independence", F32, r"^output depends on the batch size at length 64 in float32: a batch "
                                                r"of 3 identical copies of row 0 differs from the row alone"),
    (LeaksInBatches, "long_causality", F32, r"^output depends on the batch size at length 1024 in float32: the "
                                            r"gradient test of position \d+ .*finds a leak in a batch of \d+ identical rows but not in "
                                            r"a batch of 1"),
]


def _run(mixer, check, dtype):
    CHECKS[check](toy(mixer, dtype=dtype), lengths=LENGTHS, rebuild=lambda seed: toy(mixer, dtype=dtype))


@pytest.mark.slow
@pytest.mark.parametrize("mixer,check,dtype,message", BLIND_SPOTS,
                         ids=[f"{m.__name__}-{c}-{str(d)[6:]}" for m, c, d, _ in BLIND_SPOTS])
def test_blind_spot_is_caught_with_a_message_naming_it(mixer, check, dtype, message):
    with pytest.raises(ConformanceError, match=message):
        _run(mixer, check, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("mixer,dtype", [(StateInModelDtype, F32), (StateInModelDtype, F64),
                                         (Float32Inside, F32), (Float32Inside, BF16)],
                         ids=lambda v: getattr(v, "__name__", str(v)[6:]))
def test_dtype_only_bugs_pass_in_the_other_dtypes(mixer, dtype):
    """So only running the checks in that dtype can catch them."""
    for check in ("step_matches_forward", "prefill_matches_forward", "long_decode", "long_prefill"):
        _run(mixer, check, dtype)


def test_a_mixer_declaring_its_causal_form_inexact_gets_the_tolerance():
    for check in ("causality", "long_causality"):
        _run(SmallLeakDeclaredInexact, check, F32)


def test_drift_is_invisible_over_the_old_160_steps():
    """The tolerance is the same at every length: the drift passes where c1ceaec looked."""
    from harness.conformance.forms import step_through
    model = toy(SlowDrift)
    x = torch.randint(0, 64, (1, 160), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stepped, _ = step_through(model, x, model.init_state(1))
        forward = model(x)
    scale = float(forward[:, :64].abs().max())
    assert float((stepped - forward).abs().max()) < 1e-4 * scale


def test_a_random_forward_is_reported_once_and_the_rest_not_run(registered):
    from harness.conformance import run_checks
    results = list(run_checks(registered("toy_dropout", DropoutInEval), lengths=LENGTHS, dtypes=["float32"]))
    assert [r.check for r in results if not r.passed] == ["determinism"]
    later = results[[r.check for r in results].index("determinism") + 1:]
    assert later and all(r.skipped and r.detail.startswith("not run: the forward is not deterministic")
                         for r in later)


@pytest.mark.slow
def test_a_bidirectional_mixer_takes_the_bidirectional_checks(registered):
    """A plugin's mixer declaring ``causal = False`` (its model built with causal=False): the
    future must be used, and every decode form is skipped, saying why, in every dtype."""
    from harness.conformance import run_checks
    results = list(run_checks(registered("toy_bidirectional", Bidirectional, causal=False), lengths=LENGTHS))
    assert all(r.passed for r in results), [(r.check, r.detail) for r in results if not r.passed]
    causality = [r for r in results if r.check == "causality"]
    assert len(causality) == 3 and all(r.detail.startswith("the future is used") for r in causality)
    skipped = [r for r in results if r.detail.startswith("skipped")]
    assert {"prefill_matches_forward", "state_size", "long_causality", "long_decode", "long_prefill"} <= \
        {r.check for r in skipped}
    assert all("bidirectional" in r.detail or "reference backend" in r.detail for r in skipped)
