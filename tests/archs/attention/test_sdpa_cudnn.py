"""When SDPA may use cuDNN attention (archs.attention.fused.sdpa_cudnn_allowed): never where
the shapes vary from call to call (cuDNN builds a plan per new shape), torch's choice
elsewhere; the training loop and the extrapolation evaluation apply it."""
import pytest
import torch

from archs import create_arch
from archs.attention.fused import sdpa_context, sdpa_cudnn_allowed, sdpa_cudnn_context
from harness.config import EvalConfig, TrainConfig
from harness.tasks import get_task
from harness.train import TrainResult, identity_settings, train


@pytest.mark.parametrize("choice,vary,expected", [
    ("auto", True, False), ("auto", False, True), ("on", True, True), ("on", False, True),
    ("off", True, False), ("off", False, False)])
def test_cuda_policy(choice, vary, expected):
    assert sdpa_cudnn_allowed(choice, "cuda", shapes_vary=vary) is expected
    assert sdpa_cudnn_allowed(choice, torch.device("cuda:0"), shapes_vary=vary) is expected


@pytest.mark.parametrize("choice", ["auto", "on", "off"])
def test_no_cudnn_to_pick_off_cuda(choice):
    assert sdpa_cudnn_allowed(choice, "cpu", shapes_vary=True) is None


def test_unknown_choice_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"'sometimes'.*\['auto', 'on', 'off'\]"):
        sdpa_cudnn_allowed("sometimes", "cuda", shapes_vary=True)
    with pytest.raises(ValueError, match="train.sdpa_cudnn"):
        TrainConfig(sdpa_cudnn="yes")
    with pytest.raises(ValueError, match="eval.sdpa_cudnn"):
        EvalConfig(sdpa_cudnn="no")


def test_context_disables_only_cudnn_and_restores():
    flags = torch.backends.cuda
    assert flags.cudnn_sdp_enabled() and flags.flash_sdp_enabled()
    with sdpa_cudnn_context(False):
        assert not flags.cudnn_sdp_enabled()
        assert flags.flash_sdp_enabled() and flags.mem_efficient_sdp_enabled() and flags.math_sdp_enabled()
        with sdpa_context("cudnn"):  # a kernel forced inside still runs
            assert flags.cudnn_sdp_enabled() and not flags.flash_sdp_enabled()
        assert not flags.cudnn_sdp_enabled()
    assert flags.cudnn_sdp_enabled()
    for allowed in (True, None):
        with sdpa_cudnn_context(allowed):
            assert flags.cudnn_sdp_enabled()
    with sdpa_context("math"):  # an outer choice of kernels is kept: nothing else comes back on
        with sdpa_cudnn_context(False):
            assert not (flags.flash_sdp_enabled() or flags.mem_efficient_sdp_enabled() or flags.cudnn_sdp_enabled())
        assert flags.math_sdp_enabled() and not flags.cudnn_sdp_enabled()
    assert flags.cudnn_sdp_enabled() and flags.flash_sdp_enabled()


def test_policy_is_not_part_of_a_runs_identity():
    settings = {"steps": 10, "sdpa_cudnn": "off", "threads": 1}
    assert identity_settings(settings) == {"steps": 10}


@pytest.mark.parametrize("mixed,cudnn_during_training", [(True, False), (False, True)])
def test_training_loop_applies_the_policy(monkeypatch, mixed, cudnn_during_training):
    """On the CPU, with the policy answering as on a GPU: every training forward runs with
    cuDNN attention off exactly when the lengths vary; the flag is restored after."""
    import harness.train as train_module

    seen_calls = []
    monkeypatch.setattr(train_module, "sdpa_cudnn_allowed",
                        lambda choice, device, shapes_vary: seen_calls.append((choice, shapes_vary))
                        or sdpa_cudnn_allowed(choice, "cuda", shapes_vary))
    model = create_arch("transformer", vocab_size=17, d_model=16, n_layers=1, n_heads=2, pos_encoding="rope")
    flags = []
    model.register_forward_pre_hook(lambda *_: flags.append(torch.backends.cuda.cudnn_sdp_enabled()))
    task = get_task("induction_heads", vocab=16)
    cfg = TrainConfig(steps=4, batch_size=2, seq_len=32, warmup_steps=1, mixed_length=mixed, eval_every=0)
    result = train(model, task, cfg, "cpu", progress=False)
    assert seen_calls == [("auto", mixed)]
    assert flags and all(f is cudnn_during_training for f in flags)
    assert result.sdpa_cudnn is cudnn_during_training
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_training_on_cpu_records_no_cudnn_choice():
    model = create_arch("transformer", vocab_size=17, d_model=16, n_layers=1, n_heads=2)
    cfg = TrainConfig(steps=2, batch_size=2, seq_len=16, warmup_steps=1, mixed_length=True, eval_every=0)
    assert train(model, get_task("induction_heads", vocab=16), cfg, "cpu", progress=False).sdpa_cudnn is None


@pytest.mark.gpu
def test_sdpa_leaves_cudnn_inside_the_context():
    """What SDPA would dispatch to, asked through torch's own chooser (no timing)."""
    from torch.nn.attention import SDPBackend

    q = torch.randn(2, 8, 256, 64, device="cuda", dtype=torch.bfloat16)
    with sdpa_cudnn_context(False):
        choice = SDPBackend(torch._fused_sdp_choice(q, q, q, is_causal=True))
        assert choice != SDPBackend.CUDNN_ATTENTION
        assert choice == SDPBackend.FLASH_ATTENTION
    with sdpa_context("cudnn"):  # cuDNN itself can take this case here (so the test means something)
        assert SDPBackend(torch._fused_sdp_choice(q, q, q, is_causal=True)) == SDPBackend.CUDNN_ATTENTION


def test_extrapolation_evaluates_without_cudnn_and_says_so(tmp_path, monkeypatch):
    """Each evaluation length is a new shape: with the policy answering as on a GPU, the
    model sees cuDNN attention off while it is evaluated, and the rows say which applied."""
    from harness import extrapolate
    from tests.apps import EXTRAP_SMOKE, compose

    monkeypatch.setattr(extrapolate, "sdpa_cudnn_allowed",
                        lambda choice, device, shapes_vary: sdpa_cudnn_allowed(choice, "cuda", shapes_vary))
    experiment = extrapolate.Experiment(extrapolate._as_schema(compose(
        "extrapolate", *EXTRAP_SMOKE, "arch=transformer", f"results_dir={tmp_path}", "checkpoint_dir=null")))
    flags = []
    experiment.model.register_forward_pre_hook(lambda *_: flags.append(torch.backends.cuda.cudnn_sdp_enabled()))
    row = experiment.evaluate_at(32, None, TrainResult(sdpa_cudnn=True))
    assert row["status"] == "ok" and flags and not any(flags)
    assert (row["eval_sdpa_cudnn"], row["train_sdpa_cudnn"]) == (False, True)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.undo()
    on_cpu = experiment.row(32, None, TrainResult())
    assert (on_cpu["eval_sdpa_cudnn"], on_cpu["train_sdpa_cudnn"]) == (None, None)
