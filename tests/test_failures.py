"""Failing simulations: bisection finds exactly the failing rows with few calls, reported
failures are not rerun, a batch-only failure is kept and warned about, and invalid
columns are explained in simulate's provenance and in fit's error."""

import math

import pytest
import torch

from sbi_core import Problem, box_uniform, fit, simulate
from sbi_core.failures import RowFailures, describe_invalid, isolate_failures


class Counting:
    """Batched simulator raising when the batch holds a row whose id is in ``bad``."""

    def __init__(self, bad=(), nan=()):
        self.bad, self.nan, self.calls = set(bad), set(nan), 0

    def __call__(self, theta):
        self.calls += 1
        ids = theta[:, 0].long().tolist()
        hit = self.bad.intersection(ids)
        if hit:
            raise RuntimeError(f"row id {min(hit)} diverged")
        x = theta + 0.01 * torch.randn_like(theta)
        x[[i in self.nan for i in ids]] = float("nan")
        return x


def _theta(n):
    return torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], 1)


@pytest.mark.parametrize("bad", [[0], [5, 6, 200], [17, 99, 100, 101, 255]])
def test_bisection_finds_exactly_the_failing_rows_with_few_calls(bad):
    n = 256
    sim = Counting(bad)
    res = isolate_failures(sim, _theta(n), (2,), seed=3)
    assert torch.equal(~res.valid, torch.isin(torch.arange(n), torch.tensor(bad)))
    assert torch.isnan(res.x[~res.valid]).all() and torch.isfinite(res.x[res.valid]).all()
    # each failing row costs at most 2 calls per level of the bisection tree
    assert res.calls == sim.calls <= 1 + 2 * len(bad) * math.ceil(math.log2(n))
    assert res.calls < n / 4  # the old row-by-row rescue made n + 1 calls
    assert res.first_error == f"RuntimeError: row id {min(bad)} diverged"
    assert res.batch_error is None


def test_nan_rows_and_reported_failures_are_not_rerun():
    sim = Counting(nan=[3, 4])
    res = isolate_failures(sim, _theta(10), (2,), seed=0)
    assert res.calls == 1 and (~res.valid).nonzero().flatten().tolist() == [3, 4]
    assert res.first_error == "the simulator returned NaN or inf"

    def reporting(theta):
        failed = theta[:, 0] > 6
        raise RowFailures(theta * 2, failed, "solver did not converge")

    res = isolate_failures(reporting, _theta(10), (2,), seed=0)
    assert res.calls == 1 and torch.equal(res.valid, torch.arange(10) <= 6)
    assert torch.equal(res.x[res.valid], 2 * _theta(10)[:7])
    assert "solver did not converge" in res.first_error


def test_sub_batches_are_seeded_deterministically_for_any_workers():
    def noisy(theta):
        if bool((theta[:, 0] < -0.8).any()):
            raise RuntimeError("unstable")
        return theta + torch.randn_like(theta)

    p = Problem(box_uniform([-1, -1], [1, 1]), noisy, x_shape=(2,), validate=False)
    a = simulate(p, 600, seed=5, workers=1, chunk_size=150, progress=False)
    b = simulate(p, 600, seed=5, workers=2, chunk_size=150, progress=False)
    assert torch.equal(a.valid, b.valid) and torch.equal(a.x[a.valid], b.x[b.valid])
    assert torch.isnan(a.x[~a.valid]).all() and torch.isnan(b.x[~b.valid]).all()
    assert torch.equal(~a.valid, a.theta[:, 0] < -0.8) and a.num_invalid > 0


def test_batch_only_failure_is_kept_and_warned():
    def breaks_on_big_batches(theta):
        if theta.shape[0] > 16:
            raise MemoryError("batch too large for the solver workspace")
        return theta * 3

    p = Problem(box_uniform([-1, -1], [1, 1]), breaks_on_big_batches, x_shape=(2,),
                validate=False)
    with pytest.warns(UserWarning, match="broken for batches.*batch too large"):
        sims = simulate(p, 100, seed=0, chunk_size=50, progress=False)
    assert sims.num_invalid == 0 and torch.allclose(sims.x, 3 * sims.theta)
    assert "batch too large" in sims.provenance["batch_error"]
    assert "rows all succeeded in smaller batches" in sims.provenance["first_error"]


def test_invalid_columns_explained_in_simulate_and_fit():
    def mostly_nan(theta):
        x = torch.cat([theta, theta ** 2, theta.sum(1, keepdim=True).expand(-1, 4)], 1)
        x[theta[:, 0] > -0.8, 7] = float("nan")  # column 7 fails for 90% of the prior
        return x

    names = ["a", "b", "a2", "b2", "s1", "s2", "s3", "ratio_mean"]
    p = Problem(box_uniform([-1, -1], [1, 1]), mostly_nan, x_shape=(8,), x_names=names)
    sims = simulate(p, 40, seed=1, progress=False)
    n_bad = sims.num_invalid
    assert 30 < n_bad < 40
    expected = f"column 7 (ratio_mean) is NaN in {n_bad} of 40 rows"
    assert sims.provenance["invalid_columns"] == expected
    with pytest.raises(ValueError, match=r"Only \d+ of 40 simulations are valid \(column 7 "
                                         r"\(ratio_mean\) is NaN in \d+ of 40 rows\).*too few"):
        with pytest.warns(UserWarning, match="column 7"):
            fit(p, sims, seed=0, max_epochs=1, progress=False)


def test_describe_invalid_counts_nan_and_inf_most_affected_first():
    x = torch.zeros(4000, 3)
    x[:3996, 2] = float("nan")
    x[:2, 0] = float("inf")
    assert describe_invalid(x) == ("column 2 is NaN in 3,996 of 4,000 rows; "
                                   "column 0 is inf in 2 of 4,000 rows")
    assert describe_invalid(torch.zeros(5, 2)) == ""


def test_empty_simulation_file_gives_clear_error(tmp_path):
    import numpy as np

    from sbi_core import SimulationSet

    np.savez(tmp_path / "e.npz", theta=np.zeros((0, 2)), x=np.zeros((0, 3)))
    with pytest.raises(ValueError, match="have 0 rows|holds no simulations"):
        SimulationSet.load(tmp_path / "e.npz")


def test_dense_failures_cost_about_as_much_as_row_by_row():
    n = 256
    bad = list(range(0, n, 2))  # half of the rows fail
    sim = Counting(bad)
    res = isolate_failures(sim, _theta(n), (2,), seed=0)
    assert torch.equal(~res.valid, torch.isin(torch.arange(n), torch.tensor(bad)))
    assert res.calls <= n + 64  # plain bisection would make about 2n calls


def test_zarr_store_reports_invalid_columns_and_batch_errors(tmp_path):
    """The store path tells the same story as the in-memory path: which columns are NaN and
    how often (summed over chunks), and a batch-only failure."""

    def nan_in_column_1_and_big_batches_fail(theta):
        if theta.shape[0] > 16:
            raise MemoryError("batch too large for the solver workspace")
        x = torch.cat([theta, theta.sum(1, keepdim=True)], 1)
        x[theta[:, 0] > 0.5, 1] = float("nan")
        return x

    p = Problem(box_uniform([-1, -1], [1, 1]), nan_in_column_1_and_big_batches_fail,
                x_shape=(3,), x_names=["a", "b", "s"], validate=False)
    store = tmp_path / "s.zarr"
    with pytest.warns(UserWarning, match="broken for batches.*batch too large"):
        sims = simulate(p, 60, seed=0, chunk_size=20, store=store, progress=False)
    n_bad = sims.num_invalid
    assert 0 < n_bad < 60
    assert sims.provenance["invalid_columns"] == f"column 1 (b) is NaN in {n_bad} of 60 rows"
    assert "batch too large" in sims.provenance["batch_error"]
    with pytest.warns(UserWarning, match="broken for batches"):
        memory = simulate(p, 60, seed=0, chunk_size=20, progress=False)
    assert memory.provenance["invalid_columns"] == sims.provenance["invalid_columns"]
