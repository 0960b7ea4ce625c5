"""``sbi-core diagnose MODEL [--sims FILE | --problem PROBLEM --num N] [--x OBS] [--out DIR] [--save]``.

``--x obs.csv`` tests those observations for misspecification (alone when neither
``--sims`` nor ``--problem`` is given); with ``--iid`` its rows are one set of iid trials,
tested as one set.

Runs the report card (TARP, SBC, HPD coverage, reference comparison, predictive checks)
on a trained model, writes ``DIR/report.json`` and every figure (one per check, the
pairplot, the marginals and, for time-series x, the posterior predictive) as PNG and PDF,
and prints the summary. With ``--x FILE`` it also runs the checks at that observation
(misspecification, L-C2ST). Test pairs come from a held-out simulation file (``--sims``) or are simulated
from the problem (``--problem``, default: the problem recorded in the model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sbi_core.cli.common import PROBLEM_HELP, check_iid, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("diagnose", help="check a trained posterior's calibration (report card)",
                       description="Run calibration diagnostics (TARP, SBC, expected coverage, "
                                   "reference C2ST/MMD, posterior predictive) on a model and "
                                   "write a JSON report card and figures (PNG and PDF).")
    p.add_argument("model", metavar="MODEL", help="model file from `sbi-core train`")
    p.add_argument("--sims", help="held-out simulation file for the test pairs (not the "
                                  "training set); .pt from `sbi-core simulate` or .npz")
    p.add_argument("--problem", help=f"simulate test pairs from this problem (default: the one "
                                     f"recorded in the model): {PROBLEM_HELP}")
    p.add_argument("--num", type=positive_int, default=200,
                   help="number of test pairs (default 200)")
    p.add_argument("--samples", type=positive_int, default=1000,
                   help="posterior samples per test observation (default 1000)")
    p.add_argument("--checks", help="comma-separated subset of checks "
                                    "(tarp,tarp_x,sbc,coverage,reference,predictive,"
                                    "misspecification)")
    p.add_argument("--out", help="output folder (default: MODEL's name + '_diagnostics')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding", metavar="MODULE:FUNCTION",
                   help="for a model trained with your own embedding network: module:function or "
                        "file.py:function returning that nn.Module (its weights come from the "
                        "model file; see docs/embeddings.md)")
    p.add_argument("--x", metavar="FILE",
                   help="your observation(s) (.csv/.npy/.json, one per row): adds the checks at "
                        "that observation: misspecification against the training simulations "
                        "and L-C2ST local calibration (docs/trust.md); without --sims/--problem "
                        "only the misspecification check runs")
    p.add_argument("--iid", action="store_true",
                   help="with --x: the rows are one set of iid trials of the same parameters, "
                        "tested as one set (methods that take iid sets: nle, nre, npse, fmpe, "
                        "pfn, NPE with a set embedding)")
    p.add_argument("--save", action="store_true",
                   help="also store the report card inside MODEL")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if a check fails")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    from diagnostics.report import diagnose
    from sbi_core.atomic import check_output
    from sbi_core.cli.common import problem_file
    from sbi_core.io import write_json
    from sbi_core.resolve import recorded_problem, resolve_callable, resolve_problem
    from sbi_core.serialization import load_model
    from sbi_core.simulation_set import SimulationSet

    out = Path(args.out) if args.out else Path(args.model).with_name(
        Path(args.model).stem + "_diagnostics")
    check_output(out, "directory", inputs=[args.model, args.sims, problem_file(args.problem),
                                           args.x])
    given = resolve_problem(args.problem) if args.problem else None  # built once
    posterior = load_model(args.model, problem=given,
                           embedding=resolve_callable(args.embedding) if args.embedding else None)
    sims = SimulationSet.load(args.sims) if args.sims else None
    observations = None
    if args.x:
        import torch

        from sbi_core.io import read_observations

        observations = read_observations(args.x, posterior.x_shape,
                                         (posterior.problem_spec or {}).get("x_names"))
        finite = torch.isfinite(observations.reshape(len(observations), -1)).all(1)
        if not finite.all():
            rows = (~finite).nonzero().flatten().tolist()
            raise ValueError(f"{args.x} has NaN or inf in {len(rows)} row(s) (first: row "
                             f"{rows[0]}, counting from 0); the tests need finite observations. "
                             "Remove or impute the missing values.")
    if args.iid:
        if observations is None:
            raise ValueError("--iid applies to --x FILE (the rows of one set of iid trials).")
        check_iid(posterior)
        observations = observations[None]  # (1, n, *x_shape): one set
    only_x = observations is not None and sims is None and not args.problem
    if only_x:  # only the observations are tested
        problem = None
    elif args.problem:
        problem = given
    elif sims is None:  # a recorded built-in name is used; a recorded path is only shown
        problem = recorded_problem(posterior.problem_spec.get("source"), args.model)
        if problem is None:
            name = posterior.problem_spec.get("name") or "?"
            raise ValueError(f"{args.model} does not record how to rebuild its problem "
                             f"({name!r}, parameters {posterior.param_names}); pass --sims FILE "
                             "(held-out simulations) or --problem path/to/file.py:function "
                             "returning that problem.")
    else:
        problem = None  # diagnose() uses a recorded built-in problem, warns about a path
    checks = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else None
    if only_x:
        checks = ["misspecification"]
    extra = {} if observations is None else {"observations": observations, "x": observations}
    report = diagnose(posterior, problem=problem, sims=sims, num=args.num,
                      num_samples=args.samples, checks=checks, seed=args.seed,
                      progress=False if args.quiet else None, **extra)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report.to_dict())
    figures = report.plots(out)
    if args.save:
        report.save(args.model)
    print(report.summary())
    print(json.dumps({"status": report.status, "report": str(out / "report.json"),
                      "figures": [str(f) for f in figures], "saved_to_model": bool(args.save)}))
    return 1 if args.strict and report.status == "fail" else 0
