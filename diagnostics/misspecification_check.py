"""The report card's ``misspecification`` section: are the given observations like the
training simulations? Runs (added to the default checks) when ``diagnose(...,
observations=xs)`` or ``diagnose(..., x=xs)`` (CLI: ``sbi-core diagnose MODEL --x obs.csv``)
gives observations ``(B, *x_shape)`` and the posterior has a detector
(:mod:`diagnostics.misspecification`); skipped otherwise.

Each observation gets both tests' p-values; with ``B > 1`` rows the set is also tested as a
whole (MMD between the set and the training features). Sets of iid trials of one θ each
``(B, n, *x_shape)``, for posteriors that take them, are tested by
``detector.test_iid_set`` instead (Bonferroni over the ``B`` sets). The section fails when any row is
rejected after Bonferroni over ``2 B`` tests, or the set's MMD test rejects at ``alpha``.
"""

from __future__ import annotations

from typing import Any

import torch

from diagnostics.report import DiagnosisContext, register_check

__all__ = ["misspecification_section", "misspecification_check"]


def misspecification_section(posterior: Any, xs: torch.Tensor) -> dict[str, Any]:
    """Section ``{"status", "why", "metrics", "data"}`` for observations ``xs``."""
    det = posterior.detector
    if det is None:
        return {"status": "skip", "why": "the model has no misspecification detector; train "
                "one with posterior.fit_detector(sims) and save the model (CLI: `sbi-core "
                "train` trains one with the model from 500 valid simulations on; models "
                "from `sbi-core run` and smaller training sets have none)."}
    xs = torch.as_tensor(xs, dtype=torch.float32)
    if tuple(xs.shape) == tuple(posterior.x_shape):
        xs = xs[None]
    saved = posterior.range_check
    posterior.range_check = "off"  # beyond the range is a finding here, not a bad input
    try:
        checked = posterior._check_values(xs)  # NaN/inf, unknown discrete codes: bad input
    finally:
        posterior.range_check = saved
    k = len(tuple(posterior.x_shape))
    if getattr(posterior, "supports_iid", False) and checked.ndim == k + 2:
        return _iid_sets_section(posterior, det, checked)
    outside = posterior.outside_training_range(checked)
    res = det.test(checked)
    b = int(xs.shape[0])
    rows = res.flagged(b)
    metrics: dict[str, Any] = {"density_p": res.density_p.tolist(), "mmd_p": res.mmd_p.tolist(),
                               "alpha": res.alpha, "num_observations": b,
                               "num_flagged": int(rows.sum())}
    set_bad = False
    if b > 1:
        s = det.test_set(xs)
        metrics.update({"set_density_p": float(s.density_p[0]), "set_mmd_p": float(s.mmd_p[0])})
        set_bad = bool(s.flagged()[0])
    detail = (f"density test p = {', '.join(f'{p:.3g}' for p in res.density_p[:10].tolist())}"
              f"; MMD test p = {', '.join(f'{p:.3g}' for p in res.mmd_p[:10].tolist())}"
              + (" ..." if b > 10 else "")
              + (f"; set of {b}: density p = {metrics['set_density_p']:.3g}, MMD p = "
                 f"{metrics['set_mmd_p']:.3g}" if "set_mmd_p" in metrics else ""))
    if outside is not None:
        metrics["outside_training_range"] = outside
        detail += (f"; beyond the training simulations' range (by more than 10%) at {outside}: "
                   "the simulator never produced such values under this prior")
    if bool(rows.any()) or set_bad or outside is not None:
        why = (f"{int(rows.sum())} of {b} observation(s)"
               + (" and the set as a whole" if set_bad else "")
               + f" do not look like the training simulations (level {res.alpha}, Bonferroni); "
               f"{detail}. The posterior there cannot be trusted (docs/trust.md).")
        if set_bad and not rows.any():  # each row typical, together not
            why = (f"the set of {b} observations as a whole does not look like the training "
                   f"simulations (MMD test p = {metrics['set_mmd_p']:.3g} < {res.alpha}), "
                   "although no single observation is rejected: together they are shifted, "
                   f"too narrow or too wide; {detail}. The posterior there cannot be trusted "
                   "(docs/trust.md). Rows that are iid trials of one parameter set are not "
                   "such a set: test them with posterior.detector.test_iid_set(xs).")
        if not rows.any() and not set_bad:  # only the range check objects
            why = (f"the tests do not reject (level {res.alpha}), but the observation(s) lie "
                   f"outside the training range; {detail}. The posterior there is an "
                   "extrapolation and cannot be trusted (docs/trust.md).")
        return {"status": "fail", "why": why, "metrics": metrics,
                "data": res.to_dict()}
    return {"status": "pass", "why": f"the {b} observation(s) look like the training "
            f"simulations; {detail}. (No rejection does not prove the model right.)",
            "metrics": metrics, "data": res.to_dict()}


def _iid_sets_section(posterior: Any, det: Any, sets: torch.Tensor) -> dict[str, Any]:
    """The section for ``B`` sets of ``n`` iid trials of one θ each ``(B, n, *x_shape)`` (what
    ``sample_batched`` takes for NLE/NRE/PFN/score posteriors): each set is tested by
    ``detector.test_iid_set`` (docs/trust.md, item 7), Bonferroni over the ``B`` sets, as
    ``sample`` does. Before, such sets crashed the check with a tensor-size error."""
    b, n = int(sets.shape[0]), int(sets.shape[1])
    results = [det.test_iid_set(s) for s in sets]
    res = type(results[0])(torch.cat([r.density_p for r in results]),
                           torch.cat([r.mmd_p for r in results]), results[0].alpha,
                           results[0].set_size, results[0].both)
    flags = res.flagged(b)
    outside = posterior.outside_training_range(sets.reshape(b * n, *sets.shape[2:]))
    metrics: dict[str, Any] = {"density_p": res.density_p.tolist(), "mmd_p": res.mmd_p.tolist(),
                               "alpha": res.alpha, "num_observations": b, "iid_set_size": n,
                               "num_flagged": int(flags.sum())}
    detail = (f"per set of {n} iid trials (Simes over its trials): density test p = "
              f"{', '.join(f'{p:.3g}' for p in res.density_p[:10].tolist())}; MMD test p = "
              f"{', '.join(f'{p:.3g}' for p in res.mmd_p[:10].tolist())}"
              + (" ..." if b > 10 else ""))
    if outside is not None:
        metrics["outside_training_range"] = outside
        detail += (f"; beyond the training simulations' range (by more than 10%) at {outside} "
                   "(trials of all sets counted as rows): the simulator never produced such "
                   "values under this prior")
    if bool(flags.any()) or outside is not None:
        why = (f"{int(flags.sum())} of {b} set(s) of iid trials do not look like the training "
               f"simulations (level {res.alpha}, Bonferroni over 2 tests x {b} set(s)); "
               f"{detail}. The posterior there cannot be trusted (docs/trust.md).")
        return {"status": "fail", "why": why, "metrics": metrics, "data": res.to_dict()}
    return {"status": "pass", "why": f"the {b} set(s) of {n} iid trials look like the "
            f"training simulations; {detail}. (No rejection does not prove the model right.)",
            "metrics": metrics, "data": res.to_dict()}


def misspecification_check(ctx: DiagnosisContext) -> dict[str, Any]:
    xs = ctx.options.get("observations")
    if xs is None:
        return {"status": "skip", "why": "no observation was given (diagnose(..., x=x_o) or "
                "observations=xs; CLI: `sbi-core diagnose --x obs.csv`)."}
    return misspecification_section(ctx.posterior, xs)


register_check("misspecification", misspecification_check, None,
               "Misspecification (observation vs training simulations)", default=False)
