"""Showing strings read from files safely: escaped control characters, bounded length.

Model files, simulation files, zarr stores, report cards and server requests carry strings
that someone else may have written: problem and parameter names, recorded problem
references, an external program's error output. Printed raw, a terminal escape sequence
(``\\x1b[2J``), a carriage return or a bidirectional override in such a string can rewrite
what the terminal shows, and a 100 kB "name" buries the message it is part of. Every place
that shows such a string passes it through one of these functions:

- :func:`shown` for a value inside a message: one line, every non-printable character
  escaped the way Python writes it in a string literal (``\\x1b``, ``\\r``, ``\\u202e``),
  at most ``limit`` characters (the rest is counted, not shown);
- :func:`shown_text` for a whole message or report: the same, but line breaks stay.

HTML needs no extra step here: the explorer inserts every string with ``textContent``
(never ``innerHTML``) and the server answers JSON.

Example::

    >>> shown("theta\\x1b[31m_1")
    'theta\\\\x1b[31m_1'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["shown", "shown_text", "shown_names", "LABEL_LIMIT", "MESSAGE_LIMIT"]

#: Longest name / reference shown inside a message (characters, after escaping).
LABEL_LIMIT = 200
#: Longest whole message or report shown (characters, after escaping).
MESSAGE_LIMIT = 20_000


def _escape(char: str) -> str:
    """``char`` as Python escapes it in a string literal (``\\x1b``, ``\\u202e``)."""
    return char.encode("unicode_escape").decode("ascii")


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit:,} more characters]"


def shown(value: Any, limit: int = LABEL_LIMIT) -> str:
    """``str(value)`` as one printable line: control and format characters (``\\n``,
    ``\\r``, ``\\x1b``, bidirectional overrides, ...) escaped, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return _bounded(text, limit)


def shown_text(value: Any, limit: int = MESSAGE_LIMIT) -> str:
    """Like :func:`shown` for a message or report of several lines: ``\\n`` stays a line
    break, every other non-printable character is escaped."""
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c == "\n" else _escape(c) for c in text)
    return _bounded(text, limit)


def shown_names(names: Iterable[Any], limit: int = LABEL_LIMIT) -> list[str]:
    """:func:`shown` of each name (parameter or column names read from a file)."""
    return [shown(n, limit) for n in names]
