"""benchmarks/npe_stop_replay.py replays the training loop's stall rule on a recorded
validation curve: for the NPE default's settings (cosine, stall_decay=0, min_delta 0.003,
patience 40, overfit_rise 0.05 after 25) it must stop at the loop's epoch and return the
loop's best epoch, or the replayed rules would not be the loop's."""

import sys
from pathlib import Path

import pytest
from test_training_schedule import Line, _data

from sbi_core import training
from sbi_core.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from npe_stop_replay import replay_stop  # noqa: E402

RULE = {"lr_schedule": "cosine", "schedule_epochs": 300, "stall_decay": 0.0,
        "min_delta": 0.003, "stop_after_epochs": 40, "overfit_rise": 0.05,
        "overfit_epochs": 25}


def _curves() -> dict[str, list[float]]:
    """Shapes seen on sir at 10,000 simulations: a best epoch followed by a rising loss
    (seed 0: the overfit rule ends it), gains below min_delta that never reset the patience
    (seeds 1-2: the stall ends it at a new best), and a plateau before a late gain."""
    falling = [-1.0 - 0.01 * e for e in range(60)]
    rising = falling + [falling[-1] + 0.004 * e for e in range(1, 60)]
    creeping = falling + [falling[-1] - 0.0005 * e for e in range(1, 80)]
    plateau = falling[:20] + [falling[19] + 0.001 * (e % 3) for e in range(35)] + \
        [falling[19] - 0.01 * e for e in range(1, 30)] + [falling[19] - 0.29] * 60
    return {"rising": rising, "creeping": creeping, "plateau": plateau}


@pytest.mark.parametrize("shape", ["rising", "creeping", "plateau"])
def test_replay_stops_where_the_loop_stops(monkeypatch, shape):
    curve = _curves()[shape]
    scripted = iter(curve)
    monkeypatch.setattr(training, "_evaluate_batches", lambda *a, **k: next(scripted))
    theta, x = _data(200)
    hist = train(Line(), theta, x, progress=False, batch_size=100, **RULE)
    stop, best = replay_stop(curve, stop_after=40, min_delta=0.003, overfit_rise=0.05,
                             overfit_epochs=25)
    assert hist.stopped == "converged"
    assert (hist.epochs, hist.best_epoch) == (stop + 1, best)
    expected = {"rising": (84, 59), "creeping": (99, 99), "plateau": (123, 83)}[shape]
    assert (stop, best) == expected
