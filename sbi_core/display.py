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

A name written into a CSV file is a cell that a spreadsheet may evaluate: ``=HYPERLINK(...)``
as a parameter name would run as a formula when the CSV is opened. Every CSV writer passes
its text cells (never its numbers) through :func:`spreadsheet_safe`, which prefixes ``'`` to
a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (and to one
starting with ``'``, so that :func:`from_spreadsheet_safe` gives every name back exactly).
The explorer's CSV download applies the same rule (``csvText`` in ``explorer.js``).

HTML needs no extra step here: the explorer inserts every string with ``textContent``
(never ``innerHTML``) and the server answers JSON.

Example::

    >>> shown("theta\\x1b[31m_1")
    'theta\\\\x1b[31m_1'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["shown", "shown_text", "shown_names", "spreadsheet_safe", "from_spreadsheet_safe",
           "LABEL_LIMIT", "MESSAGE_LIMIT"]

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


#: First characters that make a spreadsheet read a cell as a formula (OWASP's list), plus the
#: quote that :func:`spreadsheet_safe` adds, so that the rule can be undone exactly.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_safe(cell: str) -> str:
    """A text cell for a CSV file that a spreadsheet shows as text, never runs as a formula:
    ``'`` prefixed when it starts with one of :data:`FORMULA_START`, unchanged otherwise.
    Only for text (names); numbers are written as they are (``-1.5`` stays ``-1.5``).

    >>> spreadsheet_safe("=HYPERLINK(\"http://x\")")
    '\'=HYPERLINK("http://x")'
    """
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def from_spreadsheet_safe(cell: str) -> str:
    """The text :func:`spreadsheet_safe` was given (one leading ``'`` removed)."""
    return cell[1:] if cell.startswith("'") else cell
