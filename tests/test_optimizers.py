"""The adaptation recipe: probe sizes from magnitudes and device resolution, PolyStep's
self-tuning step, parameter-space momentum across subspace redraws, the baselines' exact
state, and the settings' errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from polystep_neuro.core.errors import PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.optim import REGISTRY, PolyStep, Subspace, optimizer_class
from polystep_neuro.optim.baselines import SPSA, OpenAIES, RandomSearch, SepCMAES
from polystep_neuro.run.optimizers import (
    OPTIMIZERS,
    AskTell,
    Settings,
    make_layout,
    make_optimizer,
    polystep_candidates,
    probe_sizes,
)
from polystep_neuro.run.params import ParamVector, typical_scale
from simulators import fixed_point

WRITABLE = ("fc0.weight", "fc1.weight", "lif1.v_bias")


def _fixed_spec() -> NetworkSpec:
    spec = NetworkSpec.random([64, 96, 10], 8, seed=3, weight_gain=1.0, writable=WRITABLE)
    return fixed_point.calibrate(spec)


def _probe_moves(spec: NetworkSpec, settings: Settings) -> dict[str, torch.Tensor]:
    """Per tensor, the RMS change (float units) of the parameters each probe moves."""
    layout = make_layout(spec, settings)
    opt = make_optimizer(settings, layout, layout.flatten(spec), total_steps=10)
    start = layout.unflatten(opt.x.reshape(1, -1))
    moved = layout.unflatten(opt.ask())
    out = {}
    for name in layout.names:
        delta = (moved[name] - start[name]).reshape(moved[name].shape[0], -1).double()
        touched = delta != 0
        rms = (delta.pow(2).sum(1) / touched.sum(1).clamp_min(1)).sqrt()
        out[name] = rms[touched.any(1)]  # the candidates that probe this tensor
    return out


def test_a_probe_is_never_smaller_than_the_fixed_point_step() -> None:
    spec = _fixed_spec()
    tiny = Settings(probe=1e-6, seed=0)  # a magnitude rule alone would probe below resolution
    for name, rms in _probe_moves(spec, tiny).items():
        step = fixed_point.resolution(spec, name)
        assert step > 0
        assert rms.numel() > 0
        # At least min_probe_steps resolution steps per moved parameter (RMS over the
        # candidates: the recipe's joint subspace gives each tensor a random share of a probe).
        assert float(rms.square().mean().sqrt()) >= 0.9 * tiny.min_probe_steps * step, name
    # Searched per tensor, every single probe moves its tensor by that much.
    per_tensor = Settings(probe=1e-6, seed=0, rank_rule="equal")
    for name, rms in _probe_moves(spec, per_tensor).items():
        assert float(rms.min()) >= 0.9 * per_tensor.min_probe_steps * fixed_point.resolution(
            spec, name
        ), name
    # And the device integers really change: most quantised weights of a probed candidate.
    layout = make_layout(spec, tiny)
    opt = make_optimizer(tiny, layout, layout.flatten(spec), total_steps=10)
    cands = layout.unflatten(opt.ask())["fc1.weight"]
    layer = spec.layers[1]
    base = fixed_point.quantize_weight(torch.as_tensor(layer.weight), layer)
    changed = (fixed_point.quantize_weight(cands, layer) != base).double().mean(dim=(1, 2))
    probed = changed[changed > 0]
    assert float(probed.median()) > 0.5  # measured: most integers move by >= one step


def test_probe_sizes_follow_each_tensors_magnitude_on_a_float_device() -> None:
    spec = NetworkSpec.random([64, 96, 10], 8, seed=3, weight_gain=1.0, writable=WRITABLE)
    settings = Settings(probe=0.5, seed=0)
    sizes = probe_sizes(spec, WRITABLE, settings)
    assert sizes == [0.5 * typical_scale(spec, n) for n in WRITABLE]
    for name, rms in _probe_moves(spec, settings).items():
        want = sizes[WRITABLE.index(name)]
        # Low-rank tensors: the RMS over a random direction, so within sampling spread.
        assert float(rms.mean()) == pytest.approx(want, rel=0.25), name


def test_the_baselines_evaluate_as_many_sets_per_step_as_polystep() -> None:
    spec = _fixed_spec()
    counts = {}
    for name in OPTIMIZERS:
        settings = Settings(optimizer=name, seed=0)
        layout = make_layout(spec, settings)
        opt = make_optimizer(settings, layout, layout.flatten(spec), total_steps=10)
        assert isinstance(opt, AskTell)
        counts[name] = opt.ask().shape[0]
    layout = make_layout(spec, Settings())
    n = polystep_candidates(layout, Settings())
    # fc0.weight and fc1.weight at rank 64 (64 + 64) and lif1.v_bias in full (10): 69 blocks.
    assert n == 4 * math.ceil((64 + 64 + 10) / 2) == counts["polystep"]
    assert counts["sep-cma"] == counts["openai-es"] == n
    assert counts["spsa"] == 2


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_registered_optimizer_reports_its_own_candidate_count(name: str) -> None:
    """The count asked of the class before building it is what the built optimiser asks."""
    spec = _fixed_spec()
    settings = Settings(optimizer=name, seed=0, popsize=None if name != "openai-es" else 31)
    cls = optimizer_class(name)
    assert cls is REGISTRY[name] and cls.name == name
    layout = make_layout(spec, settings)
    opt = make_optimizer(settings, layout, layout.flatten(spec), total_steps=10)
    assert type(opt) is cls
    expected = cls.candidates_for(layout.sizes, **settings.options_for(cls, layout.sizes))
    assert opt.num_candidates == expected == opt.ask().shape[0]
    if name == "openai-es":
        assert expected == 32  # antithetic pairs: an odd population is rounded up
    with pytest.raises(RuntimeError, match=r"call ask\(\) first"):
        make_optimizer(settings, layout, layout.flatten(spec), total_steps=10).tell([0.0])
    with pytest.raises(ValueError, match=rf"costs must have shape \({expected},\)"):
        opt.tell(torch.zeros(expected + 1))


def test_an_unknown_optimizer_name_lists_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="unknown optimizer 'adam'; choose one of polystep, sep"):
        optimizer_class("adam")


def test_polystep_unit_gains_undo_its_subspace_spread() -> None:
    # rank-64 tensors move each parameter by 1/sqrt(64) per unit of z; tensors kept in full
    # (10 <= 64) move each of a block's two coordinates by 1/sqrt(2).
    gains = PolyStep.unit_gains([6144, 10], rank=64, rank_rule="equal")
    assert gains == [8.0, math.sqrt(2)]
    assert PolyStep.candidates_for([6144, 10], rank=64) == 4 * math.ceil((64 + 10) / 2)


def test_the_joint_rule_searches_every_tensor_with_every_direction() -> None:
    # The recipe's default: one subspace over both tensors with the 64 + 10 coordinates the
    # equal rule gives them (as many candidates), so a probe moves both tensors, each
    # parameter by one unit (RMS) once the gains are applied.
    sizes = [6144, 10]
    assert Settings().rank_rule == "joint"
    gains = PolyStep.unit_gains(sizes, rank=64, rank_rule="joint")
    assert gains == [math.sqrt(74)] * 2
    assert PolyStep.candidates_for(sizes, rank=64, rank_rule="joint") == PolyStep.candidates_for(
        sizes, rank=64, rank_rule="equal"
    )
    x0 = torch.zeros(sum(sizes), dtype=torch.float64)
    opt = PolyStep.for_units(
        x0, sizes=sizes, total_steps=10, seed=0, **Settings().options_for(PolyStep, sizes)
    )
    moved = (opt.ask() - x0) * gains[0]  # in parameter units
    weights, bias = moved[:, :6144], moved[:, 6144:]
    assert bool((weights != 0).all()) and bool((bias != 0).all())  # every set moves both
    rms = moved.square().mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=0.05, rtol=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": "adam"}, "unknown optimizer 'adam'; choose one of polystep, sep-cma"),
        ({"probe": 0}, "probe must be a positive number, got 0"),
        ({"step": -1.0}, "step must be a positive number, got -1.0"),
        ({"final_step": 2.0}, r"final_step must be in \(0, 1\]"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"rank": 0}, "rank must be a positive integer"),
        ({"popsize": 1}, "popsize must be at least 2"),
    ],
)
def test_bad_settings_are_one_clear_error(change, message) -> None:
    with pytest.raises(PolystepError, match=message):
        Settings(**change)


def test_explicit_scales_are_checked() -> None:
    spec = _fixed_spec()
    with pytest.raises(SpecError, match="scales must be 3 positive numbers"):
        ParamVector(spec, WRITABLE, scales=[1.0, 0.0, 1.0])
    layout = ParamVector(spec, WRITABLE, scales=[2.0, 3.0, 4.0])
    x = layout.flatten(spec)
    back = layout.unflatten(x.reshape(1, -1))
    np.testing.assert_allclose(back["fc1.weight"][0].numpy(), spec.layers[1].weight, rtol=1e-6)


# --------------------------------------------------------------------- PolyStep's new parts
def test_momentum_lives_in_parameter_space_and_survives_subspace_redraws() -> None:
    x0 = torch.randn(300, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    opt = PolyStep(
        x0, step_radius=0.05, probe_radius=0.1, momentum=0.9,
        subspace=Subspace(sizes=[200, 100], rank=[16, 200], absorb_interval=1), seed=1,
    )  # fmt: skip
    previous = opt.x
    for _ in range(3):
        opt.step(lambda X: (X * X).sum(-1))
    moved = opt.x - previous
    velocity = opt.state_dict()["velocity"]
    assert velocity.shape == x0.shape and float(velocity.norm()) > 0
    # The point is exactly representable after each redraw: lift(z) is x.
    torch.testing.assert_close(opt._map.lift(opt.z), opt.x, rtol=0, atol=1e-12)
    # The move is not confined to the current rank-16 subspace (momentum carries old ones).
    basis = opt._map.basis(0)
    residual = moved[:200] - basis @ torch.linalg.lstsq(basis, moved[:200]).solution
    assert float(residual.norm()) > 0.1 * float(moved[:200].norm())


def test_step_grows_while_moves_agree_and_shrinks_when_they_turn_back() -> None:
    # A constant slope: every step points the same way -> the step lengthens.
    slope = PolyStep(torch.zeros(50), step_radius=0.01, probe_radius=0.1, step_adapt=0.05)
    for _ in range(30):
        slope.step(lambda X: X.sum(-1))
    assert slope.step_scale > 3.0
    # At the bottom of a bowl with far too long steps: moves reverse -> the step shortens.
    bowl = PolyStep(torch.zeros(50), step_radius=1.0, probe_radius=0.1, step_adapt=0.05)
    for _ in range(30):
        bowl.step(lambda X: (X * X).sum(-1))
    assert bowl.step_scale < 0.5
    # Off: the multiplier stays 1.
    fixed = PolyStep(torch.zeros(50), step_radius=0.01, probe_radius=0.1)
    for _ in range(5):
        fixed.step(lambda X: X.sum(-1))
    assert fixed.step_scale == 1.0
    with pytest.raises(ValueError, match=r"step_adapt must be in \[0, 1\]"):
        PolyStep(torch.zeros(3), step_adapt=2.0)


# --------------------------------------------------------------------- baselines
def _ellipsoid(x: torch.Tensor) -> torch.Tensor:
    w = 10 ** (2 * torch.arange(x.shape[-1], dtype=x.dtype) / (x.shape[-1] - 1))
    return (w * x * x).sum(-1)


def test_sep_cma_es_solves_an_ill_conditioned_ellipsoid() -> None:
    opt = SepCMAES(torch.ones(20, dtype=torch.float64), sigma=0.5, popsize=12, seed=0)
    start = float(_ellipsoid(opt.x))
    for _ in range(600):
        opt.tell(_ellipsoid(opt.ask()))
    # measured: 1e-20 after 600 steps (pycma's sep-CMA-ES reaches the same order)
    assert float(_ellipsoid(opt.x)) < 1e-12 * start


@pytest.mark.parametrize(
    "make",
    [
        lambda x: SepCMAES(x, sigma=0.3, popsize=8, seed=2),
        lambda x: OpenAIES(x, sigma=0.3, lr=0.05, popsize=8, seed=2),
        lambda x: SPSA(x, a=0.1, c=0.1, seed=2),
        lambda x: RandomSearch(x, sigma=0.3, popsize=8, seed=2),
    ],
)
def test_baselines_resume_bit_identically(make) -> None:
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64)
    whole = make(x0)
    for _ in range(6):
        whole.tell(_ellipsoid(whole.ask()))
    first = make(x0)
    for _ in range(3):
        first.tell(_ellipsoid(first.ask()))
    state = first.state_dict()
    second = make(x0)
    second.load_state_dict(state)
    for _ in range(3):
        second.tell(_ellipsoid(second.ask()))
    assert torch.equal(second.x, whole.x)
    with pytest.raises(ValueError, match="state_dict is of a"):
        (SPSA if not isinstance(first, SPSA) else SepCMAES)(x0, 0.1, 4).load_state_dict(state)


@pytest.mark.parametrize("rank_rule", ["joint", "equal"])
@pytest.mark.parametrize("update", ["adam", "adan"])
def test_normalised_updates_move_step_probe_units_whatever_the_gains(
    update: str, rank_rule: str
) -> None:
    # x is in probe units times the subspace gains (sqrt(74) joint; 8 and sqrt(2) per
    # tensor), so Adam's per-parameter unit move must be divided by them: its first move is
    # +-1 per parameter of x before that, which was `step` times the gain in probe units.
    sizes = [6144, 10]
    settings = Settings(update=update, rank_rule=rank_rule, step=0.1, step_adapt=0.0)
    options = settings.options_for(PolyStep, sizes)
    gains = PolyStep.unit_gains(sizes, **options)
    x0 = torch.zeros(sum(sizes), dtype=torch.float64)
    opt = PolyStep.for_units(x0, sizes=sizes, total_steps=10, seed=0, **options)
    candidates = opt.ask()
    target = torch.linspace(-1.0, 1.0, sum(sizes), dtype=torch.float64)
    opt.tell((candidates - target).square().sum(dim=1))
    per_param = torch.cat(
        [torch.full((n,), g, dtype=torch.float64) for n, g in zip(sizes, gains, strict=True)]
    )
    moved = ((opt.x - x0) * per_param).abs()  # in probe units
    assert float(moved.max()) <= 0.1 + 1e-9
    assert float(moved.median()) > 0.05  # a full step for most parameters, not 1/gain of one


def test_auto_moves_weights_with_adam_and_neuron_parameters_with_heavy_ball() -> None:
    # The default: Adam's per-parameter normalisation wherever a weight matrix moves (it kept
    # clean accuracy on the zoo's every-weight tasks), heavy-ball where only biases and
    # thresholds do (the drifted-only and label-free recipes); a named rule is kept.
    spec = NetworkSpec.random([12, 8, 4], 4, seed=0, writable="all")
    assert Settings().update == "auto"
    built, shaped = {}, {}
    for names in (("fc1.weight",), ("fc0.weight", "lif0.v_bias"), ("lif0.v_bias", "lif0.vth")):
        settings = Settings(seed=0, rank=4)
        layout = make_layout(spec, settings, names)
        optimizer = make_optimizer(settings, layout, layout.flatten(spec), 5)
        built[names], shaped[names] = optimizer.update, optimizer.shaping
    assert list(built.values()) == ["adam", "adam", "heavy-ball"]
    # and the costs ranked where the update is Adam (lower loss on the zoo's weight tasks),
    # shifted by their minimum with heavy-ball (ranks did not help its hidden-bias tasks)
    assert Settings().shaping == "auto"
    assert [shaped[n] for n in built] == ["rank", "rank", "shift"]
    kept = Settings(rank=4, shaping="shift")
    layout = make_layout(spec, kept, ("fc1.weight",))
    assert make_optimizer(kept, layout, layout.flatten(spec), 5).shaping == "shift"
    with pytest.raises(PolystepError, match="shaping must be one of auto, shift, rank, tensor"):
        Settings(shaping="zscore")
    layout = make_layout(spec, Settings(rank=4), ("fc1.weight",))
    averaged = make_optimizer(Settings(rank=4, average=0.2), layout, layout.flatten(spec), 5)
    assert averaged.average == 0.2  # opt-in: the default reports the last point
    assert make_optimizer(Settings(rank=4), layout, layout.flatten(spec), 5).average == 0.0
    named = make_optimizer(Settings(rank=4, update="heavy-ball"), layout, layout.flatten(spec), 5)
    assert named.update == "heavy-ball"
    with pytest.raises(PolystepError, match="update must be one of auto, heavy-ball, torque"):
        Settings(update="nesterov")


def test_a_setting_the_chosen_optimizer_would_ignore_is_refused() -> None:
    """pn.adapt(model, train=..., lr=50.0, popsize=7) ran PolyStep unchanged: the baselines'
    settings were taken and ignored.  Each optimizer now refuses the others' settings when
    they differ from their defaults; those that size every population (rank, ...) stay."""
    with pytest.raises(PolystepError) as raised:
        Settings(lr=50.0, popsize=7)
    assert str(raised.value) == (
        "lr, popsize are not settings of polystep, which would ignore them (openai-es / "
        "sep-cma take them): drop them or choose the optimizer"
    )
    with pytest.raises(PolystepError, match=r"^step is not a setting of sep-cma, which would "
                       r"ignore it \(polystep takes it\)"):  # fmt: skip
        Settings(optimizer="sep-cma", step=0.3)
    with pytest.raises(PolystepError, match="^popsize is not a setting of spsa"):
        Settings(optimizer="spsa", popsize=4)
    kept = Settings(optimizer="openai-es", lr=0.2, popsize=8, rank=8)  # its own, and the rank
    assert (kept.lr, kept.popsize, kept.rank) == (0.2, 8, 8)
    assert Settings(optimizer="sep-cma").step == Settings().step  # defaults are never refused


def test_a_polystep_state_given_to_a_baseline_is_named() -> None:
    """It read "state_dict is of a None, not a OpenAIES"."""
    x0 = torch.zeros(6)
    with pytest.raises(ValueError, match="^state_dict is of a PolyStep, not a OpenAIES$"):
        OpenAIES(x0, 0.1, 0.1, 4).load_state_dict(PolyStep(x0).state_dict())
