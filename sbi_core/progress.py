"""One rule for progress bars: shown on a terminal, silent in logs, CI and notebooks' pipes.

:func:`show_progress` decides; :func:`progress_bar` is ``tqdm`` with that decision. Every
``progress`` argument of sbi-core (``simulate``, ``fit``, MCMC, ``diagnose``, ...) takes

- ``True`` / ``False``: show / hide, whatever the environment says;
- ``None`` (default): the environment variable ``SBI_CORE_PROGRESS`` (``1`` / ``0``,
  also ``true`` / ``false``, ``on`` / ``off``) if set, else show only when standard error
  is a terminal (so redirected output and log files carry no bar refreshes).

Example::

    for chunk in progress_bar(chunks, progress=None, desc="simulating", unit="chunk"):
        ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["show_progress", "progress_bar", "ENV_VAR"]

ENV_VAR = "SBI_CORE_PROGRESS"
_ON, _OFF = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def show_progress(progress: bool | None = None) -> bool:
    """Whether to show a progress bar (see the module docstring for the rule)."""
    if progress is not None:
        return bool(progress)
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in _ON:
        return True
    if env in _OFF:
        return False
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, progress: bool | None = None,
                 **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless :func:`show_progress` says otherwise.

    ``leave`` defaults to False (the bar disappears when done).
    """
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=not show_progress(progress), **kwargs)
