"""The report card's ``lc2st`` section: local calibration at the user's observation(s).

Runs when an observation is given: ``diagnose(posterior, ..., x=x_o)`` (``x_shape`` or
``(B, *x_shape)``), or ``sbi-core diagnose MODEL --x obs.csv``; not run otherwise (naming it in ``checks=``
without ``x`` gives a skipped section). The
classifiers train once on the card's held-out test pairs (``num``; 1,000+ recommended for
power) and test every observation. With ``B`` observations the card fails when the
smallest p-value is at most ``0.05 / B`` (Bonferroni) and warns at most 0.05.

Options read from ``diagnose(..., **options)``: ``lc2st_variant`` (``"auto"``),
``lc2st_num_null`` (50), ``lc2st_num_eval`` (2000), ``lc2st_epochs`` (60),
``lc2st_level`` (0.05).
"""

from __future__ import annotations

from typing import Any

import torch

from diagnostics import plots
from diagnostics.lc2st import LC2ST, MIN_PAIRS
from diagnostics.report import DiagnosisContext, register_check

__all__ = ["lc2st_check", "observation_of"]


def observation_of(ctx: DiagnosisContext) -> torch.Tensor | None:
    """The observation(s) given to :func:`diagnose` (``x=``), or None."""
    x = getattr(ctx, "x", None)
    return ctx.options.get("x") if x is None else x


def lc2st_check(ctx: DiagnosisContext) -> dict[str, Any]:
    """Section with p-values per observation and PP-plot data (``data``)."""
    x = observation_of(ctx)
    if x is None:
        return {"status": "skip", "why": "no observation given (diagnose(..., x=x_o) or "
                                         "sbi-core diagnose --x FILE)."}
    post, opts = ctx.posterior, ctx.options
    x = torch.as_tensor(x, dtype=torch.float32)
    if tuple(x.shape) == tuple(post.x_shape):
        x = x[None]
    xs_o = post._check_x(x, batched=True)
    if post.is_iid_batch(xs_o, tuple(post.x_shape)):  # before training any classifier
        return {"status": "skip",
                "why": f"the observation is {xs_o.shape[0]} set(s) of {xs_o.shape[1]} iid "
                       "trials; L-C2ST tests the posterior at single observations (its "
                       "classifiers see one x per parameter set), so it has nothing to say "
                       "about a set. Give single observations (x_shape rows) to run it; the "
                       "misspecification check tests the set."}
    if ctx.theta.shape[0] < MIN_PAIRS:  # too few valid test pairs: say how to get more
        return {"status": "skip",
                "why": f"L-C2ST needs at least {MIN_PAIRS} calibration pairs; this run has "
                       f"{ctx.theta.shape[0]} (invalid test simulations are dropped). Rerun "
                       "with more test pairs (sbi-core diagnose --num, diagnose(..., num=)); "
                       "1,000 or more recommended."}
    level = float(opts.get("lc2st_level", 0.05))
    lc = LC2ST(post, ctx.theta, ctx.xs, variant=opts.get("lc2st_variant", "auto"),
               num_null=int(opts.get("lc2st_num_null", 50)),
               num_eval=int(opts.get("lc2st_num_eval", 2000)),
               epochs=int(opts.get("lc2st_epochs", 60)), seed=ctx.seed).fit()
    results = [lc.test(x_o) for x_o in xs_o]
    pvals = [r.p_value for r in results]
    b = len(results)
    worst = min(pvals)
    detail = (f"L-C2ST-{lc.variant.upper()} p-value(s) {', '.join(f'{p:.3f}' for p in pvals[:10])}"
              + (" ..." if b > 10 else "") + f" at {b} observation(s) ({lc.num_null} null "
              f"classifiers, {ctx.theta.shape[0]} calibration pairs")
    floor = 1.0 / (lc.num_null + 1)
    if floor > level / b:
        detail += f"; the smallest possible p-value {floor:.3g} exceeds {level / b:.3g}: " \
                  "raise lc2st_num_null"
    if worst <= level / b:
        status, why = "fail", (f"The posterior differs from the true posterior at the given "
                               f"observation(s); {detail}, reject below {level / b:.3g}).")
    elif worst <= level:
        status, why = "warn", (f"Weak evidence of a local miscalibration; {detail}, p <= {level} "
                               f"but not <= {level / b:.3g} after Bonferroni).")
    else:
        status, why = "pass", (f"No local miscalibration detected; {detail}). Not a proof of "
                               "validity: power grows with the number of calibration pairs.")

    def r4(v: list[float]) -> list[float]:
        return [round(float(a), 4) for a in v]

    return {"status": status, "why": why,
            "metrics": {"p_values": pvals, "statistics": [r.statistic for r in results],
                        "variant": lc.variant},
            "data": {"alpha": r4(results[0].alpha), "pp": [r4(r.pp) for r in results[:5]],
                     "null_low": [r4(r.null_low) for r in results[:5]],
                     "null_high": [r4(r.null_high) for r in results[:5]]}}


register_check("lc2st", lc2st_check, plots.plot_lc2st_section,
               "Local calibration at x_o (L-C2ST)", default=False, when_x=True)
