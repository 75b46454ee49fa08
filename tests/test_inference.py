"""The fast path and its safety nets: BatchNorm folding, precision, OOM fallback, time budget, TTA."""

import logging

import numpy as np
import pytest
import torch

from petseg.inference import (
    MIRRORS,
    FoldAverage,
    fold_batchnorm,
    foreground_probability,
    oom_ladder,
    resolve_precision,
    window_count,
)
from petseg.model import build_network
from petseg.settings import Settings

from conftest import TINY_NETWORK

CPU = torch.device("cpu")
REF = Settings(roi_size=(16, 16, 16), sw_batch_size=4, precision="fp32", fold_batchnorm=False, channels_last=False)


def trained_like(network_kwargs, seed=0):
    """A network whose BatchNorm has non-trivial statistics and affine parameters."""
    torch.manual_seed(seed)
    net = build_network(network_kwargs)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("num_res_units", [0, 1, 2])
def test_batchnorm_folding_keeps_the_outputs(num_res_units):
    kwargs = {**TINY_NETWORK, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": num_res_units}
    net = trained_like(kwargs)
    x = torch.randn(2, 2, 16, 16, 16)
    with torch.no_grad():
        expected = net(x)
        import copy

        folded = fold_batchnorm(copy.deepcopy(net))
        got = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_precision_resolution():
    assert resolve_precision("fp32", "cpu") is None
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("fp16", "cuda") == torch.float16
    assert resolve_precision("auto", "cpu") in (torch.bfloat16, None)
    with pytest.raises(ValueError, match="precision"):
        Settings(precision="int8")


def test_fast_path_agrees_with_fp32_reference():
    net = trained_like({**TINY_NETWORK, "channels": [4, 8, 16], "strides": [2, 2]})
    image = np.random.default_rng(0).normal(size=(2, 20, 18, 24)).astype(np.float32)
    ref = foreground_probability(image, FoldAverage([net], settings=REF), device=CPU)
    fast = Settings(roi_size=(16, 16, 16), sw_batch_size=4, precision="bf16")
    got = foreground_probability(image, FoldAverage([net], settings=fast), device=CPU)
    assert np.abs(got - ref).max() < 0.05  # bf16 keeps ~3 significant digits


class Counting(torch.nn.Module):
    """Logits from the PET channel; counts calls and window-batch sizes; each call takes
    ``seconds`` of a FakeClock's time."""

    def __init__(self, fail_above: int | None = None, clock: "FakeClock | None" = None, seconds: float = 0.0):
        super().__init__()
        self.batches, self.fail_above, self.clock, self.seconds = [], fail_above, clock, seconds

    def forward(self, x):
        self.batches.append(x.shape[0])
        if self.fail_above is not None and x.shape[0] > self.fail_above:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        if self.clock is not None:
            self.clock.now += self.seconds
        return torch.cat([-x[:, 1:2], x[:, 1:2]], dim=1)


class FakeClock:
    """Stands in for the ``time`` module in petseg.inference: time passes only when a network
    says so, so that the budget tests do not depend on how loaded the machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic


@pytest.fixture
def clock(monkeypatch):
    import petseg.inference

    fake = FakeClock()
    monkeypatch.setattr(petseg.inference, "time", fake)
    return fake


def test_window_count_matches_monai():
    net = Counting()
    image = np.zeros((2, 40, 16, 30), np.float32)
    settings = REF.with_overrides(sw_batch_size=1)
    foreground_probability(image, FoldAverage([net], settings=settings), device=CPU)
    assert len(net.batches) == window_count((40, 16, 30), settings) == 4 * 1 * 3


def test_out_of_memory_steps_down_the_window_batch(caplog):
    image = np.random.default_rng(1).normal(size=(2, 40, 40, 20)).astype(np.float32)
    expected = foreground_probability(image, FoldAverage([Counting()], settings=REF), device=CPU)
    flaky = Counting(fail_above=1)
    with caplog.at_level(logging.WARNING):
        got = foreground_probability(image, FoldAverage([flaky], settings=REF), device=CPU)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert "out of memory (window batch 4" in caplog.text and "retrying with window batch 2" in caplog.text
    assert flaky.batches[-1] == 1


def test_oom_ladder_ends_on_the_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert oom_ladder(8, cuda) == [
        (8, cuda, cuda),
        (4, cuda, cuda),
        (2, cuda, cuda),
        (1, cuda, cuda),
        (1, cuda, cpu),
        (1, cpu, cpu),
    ]
    assert oom_ladder(3, cpu) == [(3, cpu, cpu), (1, cpu, cpu)]


def test_out_of_memory_everywhere_is_raised_not_swallowed():
    image = np.zeros((2, 16, 16, 16), np.float32)
    settings = REF.with_overrides(sw_batch_size=1)
    with pytest.raises(torch.OutOfMemoryError):
        foreground_probability(image, FoldAverage([Counting(fail_above=0)], settings=settings), device=CPU)


def test_time_budget_drops_folds_but_finishes(caplog, clock):
    image = np.random.default_rng(2).normal(size=(2, 64, 16, 16)).astype(np.float32)
    settings = REF.with_overrides(sw_batch_size=1)
    folds = [Counting(clock=clock, seconds=0.03) for _ in range(4)]
    ensemble = FoldAverage(folds, settings=settings)
    calls = window_count(image.shape[1:], settings)
    # the first window batch (4 folds) plus room for about 1.5 folds over the rest
    deadline = clock.now + 4 * 0.03 + (calls - 1) * 0.03 * 1.5
    with caplog.at_level(logging.WARNING):
        out = foreground_probability(image, ensemble, device=CPU, deadline=deadline)
    assert out.shape == (64, 16, 16) and np.isfinite(out).all()
    assert "time budget: using 1 of 4 folds" in caplog.text
    assert len(folds[3].batches) < calls <= len(folds[0].batches)
    # the next study starts with every fold again
    foreground_probability(image, ensemble, device=CPU)
    assert len(folds[3].batches) >= calls


def test_time_budget_drops_mirroring_before_folds(caplog, clock):
    image = np.zeros((2, 48, 16, 16), np.float32)
    settings = REF.with_overrides(sw_batch_size=1, tta=True)
    folds = [Counting(clock=clock, seconds=0.02) for _ in range(2)]
    calls = window_count(image.shape[1:], settings)
    deadline = clock.now + calls * 0.02 * 2 * 6  # 6x what both folds need; 8 mirrorings need 8x
    with caplog.at_level(logging.WARNING):
        foreground_probability(image, FoldAverage(folds, settings=settings), device=CPU, deadline=deadline)
    assert "dropping test-time mirroring" in caplog.text
    assert "folds" not in caplog.text.split("dropping test-time mirroring")[1]


def test_tta_makes_the_ensemble_mirror_equivariant():
    net = trained_like({**TINY_NETWORK, "channels": [4, 8], "strides": [2]}, seed=3)
    settings = REF.with_overrides(tta=True)
    ensemble = FoldAverage([net], settings=settings)
    image = np.random.default_rng(3).normal(size=(2, 16, 16, 16)).astype(np.float32)  # exactly one window
    flipped = np.ascontiguousarray(image[:, ::-1, :, ::-1])
    a = foreground_probability(image, ensemble, device=CPU)
    b = foreground_probability(flipped, ensemble, device=CPU)
    np.testing.assert_allclose(b, a[::-1, :, ::-1], atol=1e-5)
    plain = FoldAverage([net], settings=REF)
    c = foreground_probability(image, plain, device=CPU)
    d = foreground_probability(flipped, plain, device=CPU)
    assert np.abs(d - c[::-1, :, ::-1]).max() > 1e-3  # without TTA the network is not equivariant
    assert len(MIRRORS) == 8


def test_compile_without_a_compiler_is_a_clear_refusal(monkeypatch):
    import petseg.inference
    from petseg.errors import ConfigError

    monkeypatch.setattr(petseg.inference.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="compile: needs a C/C.. compiler"):
        FoldAverage([build_network(TINY_NETWORK)], settings=REF.with_overrides(compile=True))


# --- fold disagreement ---------------------------------------------------------------------------


def _maps(folds, settings, image):
    from petseg.inference import ensemble_maps

    return ensemble_maps(image, FoldAverage(folds, settings=settings), device=CPU)


def test_identical_folds_have_zero_uncertainty_everywhere():
    net = trained_like(TINY_NETWORK)
    image = np.random.default_rng(0).normal(size=(2, 20, 24, 18)).astype(np.float32)
    settings = REF.with_overrides(uncertainty=True)
    maps = _maps([net, net, net], settings, image)
    assert maps.mean.shape == maps.variance.shape == (20, 24, 18) and maps.folds is None
    np.testing.assert_allclose(maps.std(), 0.0, atol=2e-4)


def test_uncertainty_is_the_std_of_the_folds_and_costs_nothing_when_off():
    folds = [trained_like(TINY_NETWORK, seed=s) for s in range(3)]
    image = np.random.default_rng(1).normal(size=(2, 16, 16, 16)).astype(np.float32)
    one = [_maps([f], REF, image).mean for f in folds]  # each fold alone
    settings = REF.with_overrides(uncertainty=True)
    maps = _maps(folds, settings, image)
    np.testing.assert_allclose(maps.mean, np.mean(one, axis=0), atol=1e-6)
    np.testing.assert_allclose(maps.std(), np.std(one, axis=0), atol=1e-4)
    assert np.std(one, axis=0).max() > 0.01  # the folds do disagree
    off = _maps(folds, REF, image)
    assert off.variance is None and off.folds is None  # off: no p^2 kept


@pytest.mark.parametrize("uncertainty", [False, True])
def test_fold_votes_keep_each_folds_own_probability(uncertainty):
    folds = [trained_like(TINY_NETWORK, seed=s) for s in range(3)]
    image = np.random.default_rng(2).normal(size=(2, 20, 16, 24)).astype(np.float32)
    one = [_maps([f], REF, image).mean for f in folds]
    settings = REF.with_overrides(fold_votes=True, uncertainty=uncertainty)
    maps = _maps(folds, settings, image)
    assert maps.folds.shape == (3, 20, 16, 24)
    np.testing.assert_allclose(maps.folds, np.stack(one), atol=1e-6)
    np.testing.assert_allclose(maps.mean, np.mean(one, axis=0), atol=1e-6)
    assert (maps.variance is not None) == uncertainty
