"""A small fingerprint of the parameters a model was trained on, so that diagnostics can tell
when their "held-out" test pairs are in fact training simulations (calibration measured on the
training set looks better than it is).

The model stores the 64-bit hashes (blake2b of the float32 bytes) of its first
:data:`SKETCH_ROWS` training parameter rows, in the order of the simulations; ``diagnose``
takes its test pairs from the first valid rows of the simulations it is given, so passing the
training simulations back matches row for row. Plain integers: saved in the model's history.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

__all__ = ["SKETCH_ROWS", "theta_sketch", "training_overlap"]

#: Training rows fingerprinted per model (2 KB in the model file).
SKETCH_ROWS = 256


def _row_hashes(theta: Tensor) -> list[int]:
    """63-bit hashes of the rows of ``theta`` ``(N, D)`` (float32 bytes)."""
    rows = np.ascontiguousarray(theta.detach().to("cpu", torch.float32).numpy())
    return [int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little")
            >> 1 for r in rows]


def theta_sketch(theta: Tensor) -> list[int]:
    """Hashes of the first :data:`SKETCH_ROWS` rows of the training ``theta`` ``(N, D)``."""
    return _row_hashes(theta[:SKETCH_ROWS])


def training_overlap(sketch: list[int] | None, theta: Tensor) -> int:
    """How many rows of ``theta`` ``(M, D)`` are among the fingerprinted training rows."""
    if not sketch:
        return 0
    known = set(int(h) for h in sketch)
    return sum(h in known for h in _row_hashes(theta))
