import numpy as np
import pytest
import torch

from sbi_core import Problem, SimulationSet, box_uniform, simulate
from simulators import from_numpy, per_sample


def _flaky(theta):
    """Returns NaN where theta_1 > 0.5 and raises for a batch containing theta_1 < -0.9."""
    if bool((theta[:, 0] < -0.9).any()):
        raise RuntimeError("solver failed")
    x = theta + 0.1 * torch.randn_like(theta)
    x[theta[:, 0] > 0.5] = float("nan")
    return x


def _problem(sim=None):
    return Problem(box_uniform([-1, -1], [1, 1]), sim or (lambda t: t + 0.1 * torch.randn_like(t)),
                   name="toy", x_shape=(2,), validate=False)


def test_same_seed_same_data_for_any_number_of_workers():
    p = _problem()
    a = simulate(p, 2500, seed=3, workers=1, chunk_size=500, progress=False)
    b = simulate(p, 2500, seed=3, workers=2, chunk_size=500, progress=False)
    assert torch.equal(a.theta, b.theta) and torch.equal(a.x, b.x)
    c = simulate(p, 2500, seed=4, workers=2, chunk_size=500, progress=False)
    assert not torch.equal(a.theta, c.theta)


def test_failures_are_recorded_not_fatal():
    sims = simulate(_problem(_flaky), 2000, seed=0, workers=2, chunk_size=250, progress=False)
    assert len(sims) == 2000
    bad_expected = (sims.theta[:, 0] > 0.5) | (sims.theta[:, 0] < -0.9)
    assert torch.equal(~sims.valid, bad_expected)
    assert sims.num_invalid == int(bad_expected.sum()) > 0
    assert "solver failed" in sims.provenance["first_error"]
    with pytest.warns(UserWarning, match="Excluding"):
        theta, x = sims.training_data()
    assert theta.shape[0] == 2000 - sims.num_invalid and torch.isfinite(x).all()


def test_all_invalid_gives_clear_error():
    p = _problem(lambda t: torch.full_like(t, float("nan")))
    sims = simulate(p, 100, seed=0, progress=False)
    with pytest.raises(ValueError, match="All 100 simulations are invalid"):
        sims.training_data()


def test_adapters_numpy_and_per_sample():
    def np_sim(theta):
        return theta * 2.0 + np.random.normal(size=theta.shape) * 0.01

    def one(theta):
        return torch.stack([theta.sum(), theta.prod()])

    p1 = Problem(box_uniform([0, 0], [1, 1]), from_numpy(np_sim))
    p2 = Problem(box_uniform([0, 0], [1, 1]), per_sample(one))
    s1 = simulate(p1, 300, seed=1, progress=False)
    s2 = simulate(p2, 300, seed=1, progress=False)
    assert s1.x.dtype == torch.float32 and s1.x.shape == (300, 2)
    assert torch.allclose(s1.x, 2 * s1.theta, atol=0.1)
    assert torch.allclose(s2.x[:, 0], s2.theta.sum(1), atol=1e-6)
    again = simulate(p1, 300, seed=1, workers=2, chunk_size=100, progress=False)
    s1b = simulate(p1, 300, seed=1, chunk_size=100, progress=False)
    assert torch.equal(again.x, s1b.x)  # numpy RNG seeded per chunk too


def test_simulation_set_save_load_roundtrip(tmp_path):
    sims = simulate(_problem(_flaky), 500, seed=0, progress=False)
    path = sims.save(tmp_path / "sims.pt")
    back = SimulationSet.load(path)
    assert torch.equal(back.theta, sims.theta) and torch.equal(back.valid, sims.valid)
    assert back.provenance["first_error"] == sims.provenance["first_error"]
    npz = sims.save(tmp_path / "sims.npz")
    back2 = SimulationSet.load(npz)
    assert torch.equal(back2.valid, sims.valid)


def test_foreign_simulation_files_are_rejected(tmp_path):
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="lacks arrays"):
        SimulationSet.load(tmp_path / "bad.npz")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an sbi-core simulation file"):
        SimulationSet.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        SimulationSet.load(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="3 rows but x has 2"):
        SimulationSet.from_arrays(np.zeros((3, 1)), np.zeros((2, 1)))
