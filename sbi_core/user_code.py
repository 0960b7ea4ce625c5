"""Names of user code for display: files imported by ``--problem`` / ``--embedding``.

A ``.py`` file named on the command line is imported under a private module name
(:data:`FILE_MODULE_PREFIX` + the file's stem). Model files record user classes (a prior, an
embedding network) by name, for display only; :func:`class_label` writes such a class as
``file.py:Class`` (the form the command line takes back) instead of the private module name.
"""

from __future__ import annotations

__all__ = ["FILE_MODULE_PREFIX", "class_label"]

FILE_MODULE_PREFIX = "_sbi_core_user_"


def class_label(cls: type) -> str:
    """``module.Class``, or ``file.py:Class`` for a class from a file imported by path."""
    module = cls.__module__
    if module.startswith(FILE_MODULE_PREFIX):
        return f"{module[len(FILE_MODULE_PREFIX):]}.py:{cls.__qualname__}"
    return f"{module}.{cls.__qualname__}"
