"""Estimators: NPE (nflows flows, MDN) and embedding nets; later NLE, NRE, score-based, PFN.

Each module exposes a ``METHOD`` (:class:`sbi_core.Method`) registered in
``sbi_core.methods``.
"""
