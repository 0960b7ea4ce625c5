"""nflows flows (maf, nsf) start from the caller's random weights; their permutations stay fixed.

Until 2026-12-01 ``build_flow`` built the whole nflows flow under
``torch.manual_seed(permutation_seed)``, so every maf / nsf started from the same weights
whatever the run's seed, and the members of a maf ensemble started identical.
"""

import torch
from nflows.transforms.permutations import RandomPermutation

from estimators.ensemble import EnsembleEstimator
from estimators.flows import build_flow


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _perms(module: torch.nn.Module) -> list[list[int]]:
    return [m._permutation.tolist() for m in module.modules() if hasattr(m, "_permutation")]


def test_maf_and_nsf_weights_follow_the_seed_and_permutations_do_not():
    for kind in ("maf", "nsf"):
        torch.manual_seed(1)
        a = build_flow(kind, 3, 4)
        torch.manual_seed(2)
        b = build_flow(kind, 3, 4)
        torch.manual_seed(1)
        c = build_flow(kind, 3, 4)
        assert not all(torch.equal(x, y) for x, y in zip(_params(a), _params(b))), kind
        assert all(torch.equal(x, y) for x, y in zip(_params(a), _params(c))), kind
        assert _perms(a) == _perms(b)


def test_building_a_flow_draws_its_weights_from_the_callers_random_stream():
    torch.manual_seed(5)
    expected = (torch.rand(1), torch.rand(1))
    torch.manual_seed(5)
    first = torch.rand(1)
    build_flow("maf", 2, 3)
    after = torch.rand(1)
    assert torch.equal(first, expected[0])
    assert not torch.equal(after, expected[1])  # the build drew from the caller's stream


def test_a_saved_maf_state_with_other_permutations_loads_them():
    # models saved before the change hold RandomPermutation buffers under the same keys
    torch.manual_seed(0)
    new = build_flow("maf", 3, 2)
    old_state = {k: v.clone() for k, v in new.state_dict().items()}
    perm_keys = [k for k in old_state if k.endswith("_permutation")]
    assert perm_keys
    old_state[perm_keys[0]] = torch.tensor([2, 1, 0])
    assert RandomPermutation(3).state_dict().keys() == {"_permutation"}
    new.load_state_dict(old_state)
    assert _perms(new)[0] == [2, 1, 0]


def test_maf_ensemble_members_start_from_different_weights():
    torch.manual_seed(0)
    cfg = {"theta_dim": 2, "x_shape": (3,), "flow": "maf", "ensemble": 3,
           "hidden_features": 8, "num_transforms": 2}
    ens = EnsembleEstimator(cfg)
    first = [_params(m.density) for m in ens.members]
    for other in first[1:]:
        assert not all(torch.equal(x, y) for x, y in zip(first[0], other))
