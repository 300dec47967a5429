"""PolyStep's update rules (optim.moves): what each does to a direction, and that PolyStep
with each of them (and each cost shaping) still descends and resumes bit-identically."""

from __future__ import annotations

import io

import pytest
import torch

from polystep_neuro.optim import PolyStep, Subspace, moves


def test_adam_moves_every_parameter_alike_whatever_its_share() -> None:
    direction = torch.tensor([1e-3, 1.0, -1e3], dtype=torch.float64)
    first = second = torch.zeros(3, dtype=torch.float64)
    for t in range(1, 6):
        first, second, unit = moves.adam(first, second, direction, 0.9, t)
    torch.testing.assert_close(unit, torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64),
                               rtol=1e-4, atol=0)  # fmt: skip


def test_adan_moves_a_steady_direction_one_unit_per_step() -> None:
    direction = torch.tensor([2.0, -0.01], dtype=torch.float64)
    first = diff = second = torch.zeros(2, dtype=torch.float64)
    last = None
    for t in range(1, 4):
        first, diff, second, unit = moves.adan(first, diff, second, last, direction, t)
        last = direction
    torch.testing.assert_close(unit, torch.tensor([1.0, -1.0], dtype=torch.float64), rtol=1e-5,
                               atol=0)  # fmt: skip


def test_torque_damps_a_move_that_turns_back() -> None:
    velocity = torch.tensor([1.0, 0.0])
    back, along = torch.tensor([-0.5, 0.0]), torch.tensor([0.5, 0.0])
    assert torch.equal(moves.torque(velocity, back, 0.9), 0.9 * velocity)  # fully damped
    assert torch.equal(moves.torque(velocity, along, 0.9), moves.heavy_ball(velocity, along, 0.9))


OPTIONS = [
    {"update": "adam"},
    {"update": "adan"},
    {"update": "torque"},
    {"shaping": "rank"},
    {"shaping": "tensor"},
    {"average": 0.2},
]


def _make(options: dict, x0: torch.Tensor) -> PolyStep:
    step = 0.05 if options.get("update") in ("adam", "adan") else 0.01
    return PolyStep(
        x0, step_radius=step, probe_radius=0.2, epsilon=0.5, momentum=0.9, step_adapt=0.05,
        subspace=Subspace(sizes=[30, 4, 16], rank=6, absorb_interval=1), seed=5, **options,
    )  # fmt: skip


def _sphere(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(-1)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_each_option_descends_and_resumes_bit_identically(options: dict) -> None:
    x0 = torch.linspace(-1, 1, 50, dtype=torch.float64)
    whole = _make(options, x0)
    for _ in range(40):
        whole.step(_sphere)
    assert float(_sphere(whole.x)) < 0.5 * float(_sphere(x0))  # it optimises
    first = _make(options, x0)
    for _ in range(15):
        first.step(_sphere)
    pending = first.ask()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = _make(options, torch.zeros(50, dtype=torch.float64))
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    resumed.tell(_sphere(pending))
    for _ in range(24):
        resumed.step(_sphere)
    assert torch.equal(resumed.x, whole.x)


def test_a_state_of_another_update_rule_is_refused() -> None:
    state = _make({"update": "adam"}, torch.zeros(50)).state_dict()
    with pytest.raises(ValueError, match="does not match this optimiser.*update"):
        _make({}, torch.zeros(50)).load_state_dict(state)
    with pytest.raises(ValueError, match="update must be one of"):
        PolyStep(torch.zeros(4), update="lion")
    with pytest.raises(ValueError, match="shaping must be one of"):
        PolyStep(torch.zeros(4), shaping="zscore")


def test_the_running_average_smooths_the_noise_out_of_what_x_reports() -> None:
    """Averaging changes only what ``x`` reports: the probed points (``z``) are the same
    run's, and on a noisy sphere, once the run hovers, their average sits much closer to
    the minimum than the last probed point."""
    x0 = torch.linspace(-1, 1, 50, dtype=torch.float64)
    space = Subspace(sizes=[30, 4, 16], rank=6, absorb_interval=1)
    plain, averaged = (
        PolyStep(x0, step_radius=0.05, probe_radius=0.2, epsilon=0.5, momentum=0.9,
                 update="adam", subspace=space, seed=5, average=average)
        for average in (0.0, 0.3)
    )  # fmt: skip
    noises = [torch.Generator().manual_seed(3) for _ in range(2)]

    def noisy(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return _sphere(x) + 0.1 * torch.randn(x.shape[0], generator=gen, dtype=x.dtype)

    for _ in range(200):
        plain.step(lambda x: noisy(x, noises[0]))
        averaged.step(lambda x: noisy(x, noises[1]))
    assert torch.equal(plain.z, averaged.z)
    assert float(_sphere(averaged.x)) < 0.3 * float(_sphere(plain.x))  # 0.14 against 0.60
    with pytest.raises(ValueError, match="average must be in"):
        PolyStep(torch.zeros(4), average=1.5)


def test_a_run_resumed_with_averaging_starts_its_mean_at_the_resumed_point() -> None:
    """A state saved without averaging holds no mean: resumed with ``average``, the mean
    starts at the point the run had reached, not at the run's start."""
    x0 = torch.linspace(-1, 1, 50, dtype=torch.float64)
    plain = _make({}, x0)
    for _ in range(10):
        plain.step(_sphere)
    state = plain.state_dict()
    assert state["average"] is None  # nothing kept that nothing reads
    averaged = _make({"average": 0.5}, torch.zeros(50, dtype=torch.float64))
    averaged.load_state_dict(state)
    assert torch.equal(averaged.x, plain.x) and not torch.equal(averaged.x, x0)
    averaged.step(_sphere)
    assert float(_sphere(averaged.x)) < float(_sphere(x0))
