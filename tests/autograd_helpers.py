"""Helpers for tests that look at the autograd graph behind a tensor."""

from __future__ import annotations

import torch


def autograd_nodes(t: torch.Tensor) -> list:
    """The autograd nodes behind ``t`` (each once, depth first from ``t.grad_fn``)."""
    seen, stack = [], [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.append(fn)
            stack.extend(f for f, _ in fn.next_functions)
    return seen
