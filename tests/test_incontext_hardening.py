"""The in-context method on a scientist's own problem (hardening, wave 14): inputs that used
to give silently wrong posteriors or raw torch errors now get the documented behaviour.

- contexts below the pretrained minimum (8 simulations) are refused: with 2-3 simulations
  the plain network's 90% intervals held the true parameter only 47-70% of the time
  (benchmarks/incontext_small_contexts.py);
- exact copies of simulations are dropped (the posterior equals the one without them);
- a parameter constant over the context is refused (it gave a point mass);
- ``finetune_steps`` with the default ``variant="auto"`` no longer crashes when the stack
  would win; ``device=`` without that device and ``num_threads=`` behave as for NPE;
- a foreign ``weights=`` file and tampered model files get a clear error.
"""

import math
import warnings
from pathlib import Path

import pytest
import torch

import estimators.incontext_method as icm
from estimators.incontext_method import WEIGHTS_PATH, InContextRangeError
from estimators.incontext_prior import N_MIN
from sbi_core import Problem, fit, simulate
from sbi_core.priors import box_uniform
from sbi_core.serialization import ModelFileError, load, save


def linear_2d() -> Problem:
    """theta ~ U(0, 1)^2, x = theta + 0.1 eps."""
    return Problem(box_uniform([0.0, 0.0], [1.0, 1.0]),
                   lambda t: t + 0.1 * torch.randn_like(t), x_shape=(2,), name="lin2d",
                   param_names=["a", "b"])


def test_contexts_below_the_pretrained_minimum_are_refused():
    problem = linear_2d()
    sims = simulate(problem, 40, seed=0, progress=False)
    assert torch.load(WEIGHTS_PATH, weights_only=True)["meta"]["train_args"]["n_min"] == N_MIN
    with pytest.raises(InContextRangeError, match="pretrained on contexts of 8 to 1000"):
        fit(problem, (sims.theta[:5], sims.x[:5]), method="incontext", detector=False)
    with pytest.raises(ValueError, match="context_size must be at least 8"):
        fit(problem, sims, method="incontext", detector=False, context_size=4)
    post = fit(problem, (sims.theta[:N_MIN], sims.x[:N_MIN]), method="incontext",
               detector=False)
    assert post.history["context_size"] == N_MIN


def test_exact_copies_of_simulations_are_dropped():
    problem = linear_2d()
    sims = simulate(problem, 120, seed=0, progress=False)
    once = fit(problem, sims, method="incontext", detector=False)
    with pytest.warns(UserWarning, match="120 of 240 simulations are exact copies"):
        twice = fit(problem, (torch.cat([sims.theta, sims.theta]), torch.cat([sims.x, sims.x])),
                    method="incontext", detector=False)
    assert twice.history["duplicates_dropped"] == 120
    assert twice.history["context_size"] == 120
    assert twice.history["variant"] == once.history["variant"]
    x_o = torch.tensor([0.4, 0.6])
    theta = once.sample((20,), x=x_o, seed=0)
    assert torch.equal(twice.log_prob(theta, x=x_o), once.log_prob(theta, x=x_o))


def test_a_parameter_constant_over_the_context_is_refused():
    problem = linear_2d()
    theta = problem.prior.sample((60,))
    theta[:, 1] = 0.6  # e.g. simulated at a fixed value of b
    x = problem.simulator(theta)
    with pytest.raises(ValueError, match=r"'b' = 0\.6 take one value in all 60 simulations"):
        fit(problem, (theta, x), method="incontext", detector=False)


def test_finetuning_with_the_default_variant_keeps_one_candidate():
    problem = linear_2d()
    sims = simulate(problem, 300, seed=0, progress=False)
    # on these simulations "auto" picks the stack (the case that crashed with finetune_steps)
    assert fit(problem, sims, method="incontext", detector=False,
               variant="auto").history["variant"].startswith("stack(")
    tuned = fit(problem, sims, method="incontext", detector=False, finetune_steps=2)
    assert not tuned.history["variant"].startswith("stack(")
    assert len(tuned.history["finetune_losses"]) == 2
    assert torch.isfinite(tuned.sample((5,), x=torch.tensor([0.5, 0.5]), seed=0)).all()


@pytest.mark.parametrize("steps, lr, match", [
    (-3, 1e-4, "finetune_steps must be a non-negative integer"),
    (2.5, 1e-4, "finetune_steps must be a non-negative integer"),
    (1, float("nan"), "finetune_lr must be a finite number > 0"),
])
def test_finetune_options_are_checked(steps, lr, match):
    problem = linear_2d()
    sims = simulate(problem, 30, seed=0, progress=False)
    with pytest.raises(ValueError, match=match):
        fit(problem, sims, method="incontext", detector=False, finetune_steps=steps,
            finetune_lr=lr)


@pytest.mark.parametrize("device, match", [
    ("cuda:99", r"device='cuda:99' was requested"),
    ("gpu", r"device='gpu' is not a torch device"),
])
def test_a_device_that_is_not_there_is_a_clear_error(device, match):
    problem = linear_2d()
    sims = simulate(problem, 30, seed=0, progress=False)
    with pytest.raises(ValueError, match=match):
        fit(problem, sims, method="incontext", detector=False, device=device)


def test_num_threads_applies_while_the_variant_is_chosen(monkeypatch):
    problem = linear_2d()
    sims = simulate(problem, 60, seed=0, progress=False)
    seen = []
    choose = icm.select_stack

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return choose(*args, **kwargs)

    monkeypatch.setattr(icm, "select_stack", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit(problem, sims, method="incontext", detector=False, num_threads=1)
        assert torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


def test_a_foreign_weights_file_gets_a_clear_error(tmp_path):
    problem = linear_2d()
    sims = simulate(problem, 30, seed=0, progress=False)
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    model = save(fit(problem, sims, method="incontext", detector=False, variant="plain"),
                 tmp_path / "model.pt")
    payload = torch.load(WEIGHTS_PATH, weights_only=True)
    payload["meta"] = {**payload["meta"], "config": {**payload["meta"]["config"], "d_model": 8}}
    mismatched = tmp_path / "mismatched.pt"
    torch.save(payload, mismatched)
    for path, match in ((text, "is not an sbi-core in-context weights file"),
                        (Path(model), "is not an sbi-core in-context weights file"),
                        (mismatched, "do not match its network config")):
        with pytest.raises(ValueError, match=match):
            fit(problem, sims, method="incontext", detector=False, weights=str(path))


def _tampered(src: Path, dst: Path, change) -> Path:
    payload = torch.load(src, weights_only=True)
    change(payload)
    torch.save(payload, dst)
    return dst


def test_tampered_model_files_are_refused_on_load(tmp_path):
    problem = linear_2d()
    sims = simulate(problem, 100, seed=0, progress=False)
    plain = save(fit(problem, sims, method="incontext", detector=False, variant="plain"),
                 tmp_path / "plain.pt")
    stack = save(fit(problem, sims, method="incontext", detector=False, variant="stack"),
                 tmp_path / "stack.pt")
    load(plain), load(stack)  # the untouched files load

    def neighbours(p):
        p["estimator_config"]["num_neighbors"] = 0

    def weights(p):
        p["state_dict"]["log_weights"][:] = math.nan

    def std(p):
        p["state_dict"]["theta_std"][:] = -1.0

    def bounds(p):
        p["state_dict"]["low"][:] = 2.0

    cases = [(plain, neighbours, "num_neighbors must be a positive integer"),
             (stack, weights, "mixture weights"),
             (plain, std, "'theta_std' has values <= 0"),
             (plain, bounds, "low > high")]
    for i, (src, change, match) in enumerate(cases):
        bad = _tampered(Path(src), tmp_path / f"bad{i}.pt", change)
        with warnings.catch_warnings(), pytest.raises(ModelFileError, match=match):
            warnings.simplefilter("ignore")
            load(bad)


@pytest.mark.parametrize("variant", ["auto", "nonlinear"])
def test_posterior_does_not_depend_on_the_units_of_theta_and_x(variant):
    """theta on a scale of 1e-10 (or x on one of 1e-10) used to be standardized with a floor of
    1e-8 on the spread: the posterior came out as the prior (std 0.287 for U(0, 1) against
    0.13 at unit scale). Now the posterior in other units is the same posterior rescaled."""
    x_o = torch.tensor([0.5, 0.5])
    out = {}
    for t_scale, x_scale in ((1.0, 1.0), (1e-10, 1.0), (1.0, 1e-10)):
        problem = Problem(box_uniform([0.0, 0.0], [t_scale, t_scale]),
                          lambda t, a=t_scale, b=x_scale: (t / a + 0.1 * torch.randn_like(t)) * b,
                          x_shape=(2,), name="units")
        sims = simulate(problem, 200, seed=0, progress=False)
        post = fit(problem, sims, method="incontext", detector=False, variant=variant)
        samples = post.sample((500,), x=x_o * x_scale, seed=0) / t_scale
        lp = post.log_prob(samples[:10] * t_scale, x=x_o * x_scale) + 2 * math.log(t_scale)
        out[(t_scale, x_scale)] = (post.history["variant"], samples, lp)
    ref_variant, ref, ref_lp = out[(1.0, 1.0)]
    assert 0.05 < float(ref.std(0).max()) < 0.2  # informative at unit scale
    for key, (chosen, samples, lp) in out.items():
        assert chosen == ref_variant, key
        assert torch.allclose(samples, ref, atol=2e-3), key
        assert torch.allclose(lp, ref_lp, atol=2e-2), key


def test_an_observation_far_outside_the_simulations_is_flagged_not_piled_on_a_bound():
    """With the range check relaxed, the residual variant's shift moved the posterior of
    x_o = 5 (simulations' x in about [-0.15, 1.15]) entirely above the prior's bound: every
    sample was exactly 1.0 and log_prob integrated to 0 over the prior, silently. Now the
    estimator refuses such an observation, a posterior with range_check="warn" warns, and
    "off" (the diagnostics' setting for their test observations) still samples; a moderately
    outside observation still gets a normalized density."""
    from sbi_core.posterior import ObservationError

    problem = Problem(box_uniform([0.0], [1.0]), lambda t: t + 0.05 * torch.randn_like(t),
                      x_shape=(1,), name="lin1d")
    sims = simulate(problem, 300, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False, variant="residual")
    grid = torch.linspace(0.0, 1.0, 20001)[:, None]
    for x_o in (5.0, -3.0):
        xs = torch.tensor([[x_o]])
        with pytest.raises(ObservationError, match="far outside the simulations"):
            post.estimator.sample(100, xs)
        with pytest.raises(ObservationError, match="variant='plain'"):
            post.estimator.log_prob(grid[:3, None], xs)
        post.range_check = "warn"
        with pytest.warns(UserWarning, match="samples pile up on the bound"):
            post.sample((100,), x=xs[0], seed=0)
        post.range_check = "off"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.isfinite(post.sample((100,), x=xs[0], seed=0)).all()
    dens = post.log_prob(grid, x=torch.tensor([1.3])).exp()
    assert abs(float(torch.trapezoid(dens, grid[:, 0])) - 1.0) < 0.01
    plain = fit(problem, sims, method="incontext", detector=False, variant="plain")
    assert torch.isfinite(plain.estimator.sample(100, torch.tensor([[5.0]]))).all()


def test_stack_components_do_not_share_the_neighbour_count_through_the_network():
    """The components of a stack share one network; each used to set
    ``net.config["num_neighbors"]`` before its call and the kernel read it after the query
    blocks, so a concurrent request for another component (``sbi-core serve`` computes in
    threads) could switch it mid-call. Simulated here deterministically: the first query
    block sets another count, as the other thread would."""
    problem = linear_2d()
    sims = simulate(problem, 200, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False, variant="stack",
               candidates=["plain-16", "residual-256"])
    assert len(post.estimator.components) == 2
    x_o = torch.tensor([0.4, 0.6])
    theta = post.sample((50,), x=x_o, seed=0)
    expected = post.log_prob(theta, x=x_o)
    net = post.estimator.components[0].net
    block = net.query_blocks[0]
    forward = block.forward

    def meddling(*args, **kwargs):
        net.config["num_neighbors"] = 1  # another thread's component
        return forward(*args, **kwargs)

    block.forward = meddling
    try:
        assert torch.allclose(post.log_prob(theta, x=x_o), expected, atol=1e-5)
    finally:
        del block.forward


def test_candidates_all_needing_more_simulations_fall_back_to_plain_with_a_warning():
    """``candidates=`` of regression variants only, with too few simulations for any of them,
    used ``plain-16`` silently before wave 14; now a warning names the pool and the fix."""
    import pytest

    from sbi_core import fit, simulate
    from simulators import get_problem

    problem = get_problem("two_moons")
    sims = simulate(problem, 30, seed=0, progress=False)  # nonlinear needs >= 50
    with pytest.warns(UserWarning, match=r"None of the in-context candidates.*nonlinear-16 >= 50"
                                         r".*using plain-16"):
        post = fit(problem, sims, method="incontext", detector=False,
                   candidates=["nonlinear-16"])
    assert post.history["variant"].startswith("plain-16")
