"""PolyStep ask/tell semantics, options, errors and bit-identical checkpoint/resume."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch

from polystep_neuro.optim import NonFiniteCostError, PolyStep, StateMismatchError, Subspace
from polystep_neuro.optim.testfunctions import rosenbrock


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: OpenMP only adds barrier waits (ms each on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sphere(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(-1)


def test_shapes_dtype_and_block_major_order() -> None:
    x0 = torch.arange(5, dtype=torch.float32)
    opt = PolyStep(x0, block_dim=2, probe_radius=0.3, num_probe=2, seed=0)
    # 5 coordinates -> 3 blocks (last padded), orthoplex V = 4, K = 2 probes -> N = 24.
    assert (opt.num_blocks, opt.num_vertices, opt.num_candidates) == (3, 4, 24)
    cand = opt.ask()
    assert cand.shape == (24, 5) and cand.dtype == torch.float32
    diff = (cand - x0).view(3, 4, 2, 5)  # (block i, vertex v, probe k, coordinate)
    for i in range(3):
        outside = [c for c in range(5) if c // 2 != i]
        assert diff[i][..., outside].abs().max() == 0  # only block i moves
    dist = diff[:2].norm(dim=-1)  # probe k at probe_radius * k / (K + 1)
    torch.testing.assert_close(dist[..., 0], torch.full((2, 4), 0.1))
    torch.testing.assert_close(dist[..., 1], torch.full((2, 4), 0.2))
    # Block 2 = coordinate 4 + one padding coordinate: only the real part reaches x.
    assert (diff[2].norm(dim=-1) <= torch.tensor([0.1, 0.2]) + 1e-6).all()
    # Vertices of one block: a rotated orthoplex, opposite pairs v and v + 2.
    torch.testing.assert_close(diff[0, 0, 0, :2], -diff[0, 2, 0, :2])
    assert abs(float(diff[0, 0, 0, :2] @ diff[0, 1, 0, :2])) < 1e-6


def test_update_is_weighted_mean_of_vertices() -> None:
    x0 = torch.zeros(2, dtype=torch.float64)
    opt = PolyStep(x0, block_dim=2, step_radius=0.5, epsilon=0.01, seed=3)
    cand = opt.ask()
    costs = torch.tensor([5.0, 0.0, 5.0, 5.0], dtype=torch.float64)  # vertex 1 is best
    opt.tell(costs)
    direction = cand[1] / cand[1].norm()
    # epsilon -> 0: the whole weight on vertex 1, so the move is step_radius * d_1.
    torch.testing.assert_close(opt.x, 0.5 * direction, atol=1e-6, rtol=0)
    assert opt.last_weights[0, 1] > 0.999


def test_all_blocks_update_from_one_batch_on_linear_cost() -> None:
    g = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25], dtype=torch.float64)
    opt = PolyStep(torch.zeros(6, dtype=torch.float64), step_radius=0.1, seed=0)
    opt.step(lambda x: x @ g)
    moved = opt.x
    for i in range(3):  # every block moved, each against its part of the gradient
        block = slice(2 * i, 2 * i + 2)
        assert moved[block].norm() > 0.02
        assert float(moved[block] @ g[block]) < 0


def test_sphere_descends_with_both_solvers_and_numpy_costs() -> None:
    for solver in ("softmax", "sinkhorn"):
        x0 = np.full(8, 2.0)
        opt = PolyStep(x0, step_radius=0.1, probe_radius=0.2, epsilon=0.3, solver=solver, seed=1)
        assert opt.x.dtype == torch.float64
        for _ in range(60):
            opt.step(lambda x: sphere(x).numpy().tolist())  # list costs are accepted
        assert float(sphere(opt.x)) < 0.1 * 32, solver


def test_step_returns_costs() -> None:
    opt = PolyStep(torch.ones(4), seed=0)
    costs = opt.step(sphere)
    assert costs.shape == (8,) and opt.steps == 1


def test_momentum_accelerates_on_rosenbrock() -> None:
    # Momentum 0.9 at step 0.01 vs no momentum at 0.01, 0.03 and 0.1 (0.1 = its terminal
    # speed 0.01 / (1 - 0.9)): heavy ball follows the curved valley far better.
    # Measured: 0.031 vs 3.13, 1.32, 3.09.
    x0 = torch.full((6,), -1.0, dtype=torch.float64)

    def final(step_radius: float, momentum: float) -> float:
        opt = PolyStep(
            x0, step_radius=step_radius, probe_radius=0.01, epsilon=0.3, momentum=momentum, seed=0
        )
        for _ in range(300):
            opt.step(rosenbrock)
        return float(rosenbrock(opt.x))

    with_momentum = final(0.01, 0.9)
    assert with_momentum < 0.1
    for step_radius in (0.01, 0.03, 0.1):
        assert with_momentum < 0.1 * final(step_radius, 0.0), step_radius


def test_keep_best_tracks_best_candidate() -> None:
    opt = PolyStep(torch.full((4,), 3.0, dtype=torch.float64), keep_best=True, seed=0)
    seen = []
    for _ in range(5):
        cand = opt.ask()
        costs = sphere(cand)
        seen.append((float(costs.min()), cand[int(costs.argmin())].clone()))
        opt.tell(costs)
    best_cost, best_x = min(seen, key=lambda item: item[0])
    assert opt.best_cost == best_cost
    assert torch.equal(opt.best_x, best_x)


def test_non_finite_costs_are_worst_and_logged(caplog) -> None:
    opt = PolyStep(torch.zeros(2, dtype=torch.float64), epsilon=0.1, seed=0)
    opt.ask()
    costs = torch.tensor([1.0, float("nan"), 2.0, float("inf")], dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="polystep_neuro.optim.polystep"):
        opt.tell(costs)
    assert "2 of 4 costs were non-finite" in caplog.text
    w = opt.last_weights[0]
    assert w[1] < w[2] and w[3] < w[2] and w[0] > 0.9  # non-finite rank below the worst


def test_all_non_finite_raises() -> None:
    opt = PolyStep(torch.zeros(2), seed=0)
    opt.ask()
    with pytest.raises(NonFiniteCostError, match="all 4 costs were non-finite"):
        opt.tell([float("nan")] * 4)
    assert issubclass(NonFiniteCostError, ValueError)


def test_cost_shape_and_protocol_errors() -> None:
    opt = PolyStep(torch.zeros(4), seed=0)
    with pytest.raises(RuntimeError, match=r"tell\(\) called without a pending ask\(\)"):
        opt.tell(torch.zeros(8))
    opt.ask()
    with pytest.raises(ValueError, match=r"costs must have shape \(8,\).*got \(7,\)"):
        opt.tell(torch.zeros(7))
    with pytest.raises(ValueError, match=r"costs must have shape \(8,\).*got \(2, 4\)"):
        opt.tell(torch.zeros(2, 4))
    opt.tell(torch.zeros(8, 1))  # a column of costs is accepted
    with pytest.raises(RuntimeError, match="call ask"):
        opt.tell(torch.zeros(8))  # each ask is told once


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(step_radius=0.0), "step_radius must be positive"),
        (dict(probe_radius=-1.0), "probe_radius must be positive"),
        (dict(epsilon=0), "epsilon must be positive"),
        (dict(block_dim=0), "block_dim must be a positive integer"),
        (dict(block_dim=2.0), "block_dim must be a positive integer"),
        (dict(num_probe=0), "num_probe must be a positive integer"),
        (dict(polytope="sphere"), "polytope must be one of"),
        (dict(solver="adam"), "solver must be one of"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (dict(subspace=32), "subspace must be a Subspace"),
        (dict(subspace=Subspace(sizes=[3], rank=2)), "subspace sizes sum to 3 but x0"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(step_radius=lambda t: 0.1 - 0.2 * t), None),  # fine at step 0
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    if match is None:
        opt = PolyStep(torch.zeros(4), **kwargs)
        opt.step(sphere)  # step 0 uses 0.1; step 1 would be negative
        opt.ask()
        with pytest.raises(ValueError, match="step_radius must be positive, schedule gave"):
            opt.tell(torch.zeros(8))
        return
    with pytest.raises(ValueError, match=match):
        PolyStep(torch.zeros(4), **kwargs)


@pytest.mark.parametrize(
    ("x0", "match"),
    [
        (torch.zeros(2, 2), "x0 must be a non-empty 1-D vector"),
        (torch.zeros(0), "x0 must be a non-empty 1-D vector"),
        (torch.tensor([0.0, float("nan")]), "x0 contains non-finite values"),
    ],
)
def test_bad_x0(x0, match) -> None:
    with pytest.raises(ValueError, match=match):
        PolyStep(x0)


def _make(subspace: bool, x0: torch.Tensor) -> PolyStep:
    spec = Subspace(sizes=[30, 4, 16], rank=5, absorb_interval=3) if subspace else None
    return PolyStep(
        x0,
        step_radius=0.05,
        probe_radius=0.1,
        epsilon=0.3,
        num_probe=2,
        momentum=0.8,
        keep_best=True,
        subspace=spec,
        seed=11,
    )


def _cost(x: torch.Tensor) -> torch.Tensor:
    return rosenbrock(x / 3)


@pytest.mark.parametrize("subspace", [False, True], ids=["full", "subspace"])
@pytest.mark.parametrize("mid_ask", [False, True], ids=["between-steps", "mid-ask"])
def test_checkpoint_resume_is_bit_identical(subspace: bool, mid_ask: bool) -> None:
    x0 = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    total, cut = 10, 4  # absorbs happen at steps 3, 6 and 9 in the subspace case

    reference = _make(subspace, x0)
    ref_traj = []
    for _ in range(total):
        reference.step(_cost)
        ref_traj.append(reference.x)

    first = _make(subspace, x0)
    for _ in range(cut):
        first.step(_cost)
    if mid_ask:
        pending = first.ask()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)  # must survive serialisation
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    del first

    resumed = _make(subspace, torch.zeros(50, dtype=torch.float64))  # a NEW optimiser
    resumed.load_state_dict(state)
    assert resumed.steps == cut
    if mid_ask:
        resumed.tell(_cost(pending))  # the pending batch is answered after the restore
    traj = ref_traj[:cut] + ([resumed.x] if mid_ask else [])
    while len(traj) < total:
        resumed.step(_cost)
        traj.append(resumed.x)
    for step, (a, b) in enumerate(zip(ref_traj, traj, strict=True)):
        assert torch.equal(a, b), f"trajectories diverge at step {step + 1}"
    assert torch.equal(resumed.z, reference.z)
    assert torch.equal(resumed.best_x, reference.best_x)
    assert resumed.best_cost == reference.best_cost
    assert float(_cost(reference.x)) < float(_cost(x0))  # the run did optimise


def test_load_state_dict_rejects_mismatched_optimiser() -> None:
    state = PolyStep(torch.zeros(6), block_dim=2).state_dict()
    with pytest.raises(StateMismatchError, match="does not match this optimiser.*block_dim") as exc:
        PolyStep(torch.zeros(6), block_dim=3).load_state_dict(state)
    assert exc.value.keys == ("block_dim",)  # what a caller reads to name the setting


def test_a_state_saved_before_the_shaping_was_recorded_resumes_as_shifted_costs() -> None:
    # States written before the cost shaping joined the header all shifted their costs: they
    # load into a "shift" optimiser and are refused, by that name, by a ranking one.
    state = PolyStep(torch.zeros(6), shaping="shift").state_dict()
    assert state["config"]["shaping"] == "shift"
    del state["config"]["shaping"]
    PolyStep(torch.zeros(6), shaping="shift").load_state_dict(state)
    with pytest.raises(StateMismatchError) as exc:
        PolyStep(torch.zeros(6), shaping="rank").load_state_dict(state)
    assert exc.value.keys == ("shaping",)


def test_subspace_candidates_are_full_space_and_absorb_keeps_point() -> None:
    sizes = [200, 8, 40]
    x0 = torch.randn(248, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    opt = PolyStep(x0, subspace=Subspace(sizes=sizes, rank=6, absorb_interval=2), seed=0)
    assert opt.dim == 6 + 6 + 6 and opt.num_candidates == 9 * 4
    assert torch.equal(opt.x, x0)  # z starts at 0: theta = theta0 exactly
    cand = opt.ask()
    assert cand.shape == (36, 248)
    opt.tell(sphere(cand))
    before = opt.x
    opt.step(sphere)  # second step triggers an absorb
    assert opt.z.abs().sum() == 0  # every tensor is low-rank here: z reset to 0
    after_absorb = opt.x
    assert float(sphere(after_absorb)) < float(sphere(before))


def test_generator_not_global_rng() -> None:
    torch.manual_seed(0)
    a = PolyStep(torch.zeros(6), seed=4).ask()
    torch.manual_seed(123)
    torch.randn(10)
    b = PolyStep(torch.zeros(6), seed=4).ask()
    assert torch.equal(a, b)
    assert not torch.equal(a, PolyStep(torch.zeros(6), seed=5).ask())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_end_to_end() -> None:
    sizes = [300, 10, 50]
    x0 = torch.full((360,), 1.0, device="cuda")
    opt = PolyStep(
        x0, subspace=Subspace(sizes=sizes, rank=8, absorb_interval=5), keep_best=True, seed=0
    )
    start = float(sphere(x0))
    for _ in range(30):
        cand = opt.ask()
        assert cand.device.type == "cuda" and cand.shape == (opt.num_candidates, 360)
        opt.tell(sphere(cand))
    assert opt.x.device.type == "cuda" and opt.best_x.device.type == "cuda"
    assert float(sphere(opt.x)) < start
    state = opt.state_dict()
    twin = PolyStep(x0, subspace=Subspace(sizes=sizes, rank=8, absorb_interval=5), seed=0)
    twin.load_state_dict(state)
    for _ in range(3):
        opt.step(sphere)
        twin.step(sphere)
    assert torch.equal(opt.x, twin.x)


# --------------------------------------------------------------------- the recipe in units


def test_for_units_defaults_are_the_adaptation_recipes_settings() -> None:
    """A black-box user gets the values the adaptation recipe runs with; the two cannot drift
    apart silently."""
    import inspect

    from polystep_neuro.run.optimizers import Settings

    defaults = inspect.signature(PolyStep.for_units).parameters
    for name, value in PolyStep.RECIPE.items():
        assert defaults[name].default == value == getattr(Settings(), name), name
    # The one call a user needs: a start and a length of run.
    opt = PolyStep.for_units(torch.zeros(10), total_steps=5)
    assert opt.num_candidates == 20 and opt.update == "adam"
    assert PolyStep.for_units(torch.zeros(10), total_steps=5, keep_best=True).keep_best
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['keep_bset'\]"):
        PolyStep.for_units(torch.zeros(10), total_steps=5, keep_bset=True)


def test_for_units_unit_is_one_probe_per_parameter_in_the_callers_coordinates() -> None:
    """``unit=u`` probes every parameter by u (RMS), and on a problem measured in u's it is
    the ``unit=1`` run with every point times u."""
    target = torch.linspace(-3, 3, 300, dtype=torch.float64)

    def cost(x: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).sum(-1)

    u, x0, sizes = 0.25, torch.zeros(300, dtype=torch.float64), [200, 90, 10]
    plain = PolyStep.for_units(x0, sizes=sizes, total_steps=20, seed=3, rank=16, unit=1.0)
    scaled = PolyStep.for_units(x0, sizes=sizes, total_steps=20, seed=3, rank=16, unit=u)
    probes = scaled.ask()
    rms = (probes - x0).square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, u), rtol=0.2, atol=0)
    scaled.tell(cost(probes / u))
    plain.tell(cost(plain.ask()))
    for _ in range(19):
        a, b = plain.ask(), scaled.ask()
        torch.testing.assert_close(b, a * u, rtol=1e-9, atol=1e-12)
        plain.tell(cost(a))
        scaled.tell(cost(b / u))
    torch.testing.assert_close(scaled.x, plain.x * u, rtol=1e-9, atol=1e-12)
    assert float(cost(plain.x[None])[0]) < 0.5 * float(cost(x0[None])[0])
    with pytest.raises(ValueError, match="unit must be a positive number, got -1"):
        PolyStep.for_units(x0, total_steps=2, unit=-1)
    with pytest.raises(ValueError, match="rank_rule 'equal' gives 2: use rank_rule='joint'"):
        PolyStep.for_units(x0, sizes=sizes, total_steps=2, rank=16, rank_rule="equal", unit=u)


@pytest.mark.parametrize("step_adapt", [0.05, 0.1, 0.2])
def test_step_adapt_settles_a_noisy_quadratic_instead_of_diverging(step_adapt: float) -> None:
    """Moves along one steady direction agree by sqrt(n) spreads; uncounted, the step grew by
    exp(step_adapt * sqrt(n)) a step and a noisy 50-D quadratic diverged (step_adapt 0.1:
    cost 380 -> 26,000; 0.2: 79,000).  Capped at one spread, it converges at each rate."""
    gen = torch.Generator().manual_seed(0)
    curvature = torch.logspace(0, 2, 50, dtype=torch.float64)
    target = torch.rand(50, generator=gen, dtype=torch.float64) * 2 - 1

    def noisy(x: torch.Tensor) -> torch.Tensor:
        exact = ((x - target) ** 2 * curvature).sum(-1)
        return exact + 0.1 * torch.randn(exact.shape, generator=gen, dtype=x.dtype)

    x0 = torch.zeros(50, dtype=torch.float64)
    opt = PolyStep.for_units(x0, total_steps=200, seed=0, unit=0.1, step_adapt=step_adapt)
    for _ in range(200):
        opt.tell(noisy(opt.ask()))
    start, final = float(noisy(x0[None])[0]), float(((opt.x - target) ** 2 * curvature).sum())
    assert final < start / 1000, f"step_adapt {step_adapt}: {start:.4g} -> {final:.4g}"
