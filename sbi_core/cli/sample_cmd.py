"""``sbi-core sample MODEL --x FILE --num N --out FILE.csv|FILE.nc [--seed S] [--iid] [--quiet]``.

``--out FILE.nc`` writes an ArviZ ``InferenceData`` (netCDF) for one observation: named
parameters, MCMC chains kept, prior draws, the observation, and posterior-predictive
simulations when ``--problem`` is given (needs ``pip install 'sbi-core[arviz]'``).
"""

from __future__ import annotations

import argparse
import json

from sbi_core.cli.common import (
    add_force,
    check_iid,
    nonnegative_int,
    positive_float,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("sample", help="draw posterior samples for observations",
                       description="Sample a trained posterior for each observation in a .csv "
                                   "or .npy file (one per row) and write a CSV with an "
                                   "'observation' column and the parameter names.")
    p.add_argument("model", metavar="MODEL", help="model file from `sbi-core train`")
    p.add_argument("--x", required=True,
                   help=".csv, .npy or .json with one observation per row")
    p.add_argument("--num", type=positive_int, default=1000, help="samples per observation")
    p.add_argument("--out", required=True,
                   help="CSV file to write, or FILE.nc for an ArviZ InferenceData (netCDF) of "
                        "one observation (extra sbi-core[arviz]; docs/tracking_and_export.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding", metavar="MODULE:FUNCTION",
                   help="for a model trained with your own embedding network: module:function or "
                        "file.py:function returning that nn.Module (its weights come from the "
                        "model file; see docs/embeddings.md)")
    p.add_argument("--iid", action="store_true",
                   help="treat the rows as one set of iid observations of the same parameters")
    p.add_argument("--mcmc-method", choices=["auto", "slice", "hmc"],
                   help="MCMC sampler of likelihood/ratio posteriors (nle, nre, ...)")
    p.add_argument("--problem", metavar="PROBLEM",
                   help="FILE.py:FUNCTION giving the prior, needed only when the model was "
                        "trained with a user-written prior class (never imported from MODEL); "
                        "with --out FILE.nc it also adds posterior-predictive simulations")
    p.add_argument("--num-chains", type=positive_int, help="MCMC chains per observation")
    p.add_argument("--warmup-steps", type=nonnegative_int,
                   help="MCMC warm-up transitions per chain")
    p.add_argument("--new-prior", metavar="FILE.json",
                   help="sample under a new prior without retraining (docs/prior_change.md): a "
                        "JSON prior spec, e.g. {\"type\": \"gaussian\", \"mean\": [0.3, 0], "
                        "\"std\": [0.1, 0.3]}; reweights any posterior (ESS printed) or is one "
                        "forward pass for a prior_npe model")
    p.add_argument("--min-ess", type=positive_float,
                   help="with --new-prior on a reweighted posterior: refuse when the effective "
                        "sample size is below this (default 100)")
    p.add_argument("--range-check", choices=["error", "warn", "off"],
                   help="an observation more than 10%% beyond the training simulations' range: "
                        "'error' (the default of a model), 'warn' (sample the extrapolation "
                        "anyway, with a warning) or 'off'")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (MCMC chains, score-based sampling), whatever "
                        "SBI_CORE_PROGRESS says")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 1) when an observation does not look like the training "
                        "simulations (misspecification tests, docs/trust.md) instead of warning")
    add_force(p)
    return p


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "quiet", False):
        return _run(args)
    import os

    from sbi_core.progress import ENV_VAR

    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "0"  # every progress=None bar (MCMC, score sampling) stays hidden
    try:
        return _run(args)
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old


def _run(args: argparse.Namespace) -> int:
    from sbi_core.atomic import check_output
    from sbi_core.cli.common import problem_file
    from sbi_core.io import read_observations, write_samples_csv
    from sbi_core.resolve import resolve_callable
    from sbi_core.serialization import load_model

    netcdf = str(args.out).lower().endswith(".nc")
    out = check_output(args.out, "other" if netcdf else "csv",
                       inputs=[args.model, args.x, problem_file(args.problem)], force=args.force)
    if netcdf:
        from sbi_core.export_arviz import import_arviz

        import_arviz()  # fail before loading anything when the extra is missing
    if args.problem:  # built once, for load_model's check and the .nc predictive draws
        from sbi_core.resolve import resolve_problem

        args.problem = resolve_problem(args.problem)
    posterior = load_model(args.model, problem=args.problem,
                           embedding=resolve_callable(args.embedding) if args.embedding else None)
    if args.range_check is not None:
        posterior.range_check = args.range_check
    xs = read_observations(args.x, posterior.x_shape,
                           (posterior.problem_spec or {}).get("x_names"))
    mcmc = {k: v for k, v in {"method": args.mcmc_method, "num_chains": args.num_chains,
                              "warmup_steps": args.warmup_steps}.items() if v is not None}
    if mcmc and not hasattr(posterior, "mcmc_config"):
        raise ValueError(f"--mcmc-method/--num-chains/--warmup-steps apply to MCMC-based "
                         f"posteriors (nle, nre, ...); this model uses {posterior.method!r}.")
    if args.new_prior is not None:
        posterior = _with_new_prior(posterior, args.new_prior, args.min_ess)
    elif args.min_ess is not None:
        raise ValueError("--min-ess applies only with --new-prior FILE.json.")
    if netcdf:
        return _write_netcdf(args, out, posterior, xs, mcmc)
    if args.iid:
        check_iid(posterior)
        samples = posterior.sample((args.num,), x=xs, seed=args.seed, strict=args.strict,
                                   **mcmc)[:, None, :]
    else:
        samples = posterior.sample_batched((args.num,), xs, seed=args.seed, strict=args.strict,
                                           **mcmc)
    write_samples_csv(out, samples, posterior.param_names)
    report = {"out": str(args.out), "observations": int(samples.shape[1]),
              "samples_per_observation": args.num}
    if args.new_prior is not None:
        report["new_prior"] = _prior_change_report(posterior)
    print(json.dumps(report))
    return 0


def _with_new_prior(posterior, path: str, min_ess: float | None):
    """``posterior.with_prior`` of the prior spec in ``path`` (plain JSON: never code)."""
    from pathlib import Path

    from sbi_core.priors import UserPriorRequired, prior_from_spec

    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--new-prior {path}: no such file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--new-prior {path} is not a JSON prior spec ({err}); write e.g. "
                         '{"type": "gaussian", "mean": [0.0, 0.0], "std": [0.5, 0.5]} or '
                         '{"type": "box_uniform", "low": [...], "high": [...]}.') from None
    try:
        new_prior = prior_from_spec(spec)
    except UserPriorRequired:  # also a user class nested in an "independent" spec
        raise ValueError(f"--new-prior {path} names a user-written prior class; code named in "
                         "a file is never imported. Use a declarative prior (gaussian, "
                         "box_uniform, independent, torch or scipy spec), or call "
                         "posterior.with_prior(...) in Python.") from None
    options = {} if min_ess is None else {"min_ess": min_ess}
    if posterior.method == "prior_npe" and options:
        raise ValueError("--min-ess applies to reweighting; a prior_npe model conditions on "
                         "the new prior in one forward pass (no ESS).")
    from sbi_core.prior_change import PriorSupportError

    try:
        return posterior.with_prior(new_prior, **options)
    except PriorSupportError as err:  # its fix names a Python argument the CLI does not have
        msg = str(err)
        cut = msg.find(", or accept the truncation with max_outside_mass=")
        if cut < 0:
            raise
        head = msg[:cut].replace(", retrain with", " or retrain with")
        setting = msg[cut + len(", or accept the truncation with "):].rstrip(".")
        raise PriorSupportError(f"--new-prior {path}: {head}. The command line does not "
                                "sample a truncated prior; in Python: posterior.with_prior("
                                f"prior, {setting}).") from None


def _prior_change_report(posterior) -> dict:
    """How the new prior was applied: ESS per observation for reweighting."""
    info = getattr(posterior, "info", None)
    if not isinstance(info, dict) or "ess" not in info:
        return {"method": "conditioned"}
    ess = info["ess"].reshape(-1).tolist()
    return {"method": "reweight", "ess": [round(float(e), 1) for e in ess],
            "num_proposals": int(info.get("num_proposals", 0)),
            "outside_mass": float(info.get("outside_mass", 0.0))}


def _write_netcdf(args: argparse.Namespace, out, posterior, xs, mcmc: dict) -> int:
    """One observation (or one --iid set) → ArviZ InferenceData written to ``out``."""
    from sbi_core.export_arviz import to_inference_data, write_netcdf

    if args.iid:
        check_iid(posterior)
        x = xs
    elif xs.shape[0] != 1:
        raise ValueError(f"--out {args.out}: a .nc file holds one observation, but {args.x} has "
                         f"{xs.shape[0]} rows; pass a file with one row, add --iid for one set "
                         "of iid trials, or write a .csv for many observations.")
    else:
        x = xs[0]
    idata = to_inference_data(posterior, x, num=args.num, problem=args.problem, seed=args.seed,
                              **mcmc)
    write_netcdf(idata, out)
    post = idata.posterior
    print(json.dumps({"out": str(args.out), "groups": list(idata.groups()),
                      "chains": int(post.sizes["chain"]), "draws": int(post.sizes["draw"]),
                      "posterior_predictive": "posterior_predictive" in idata.groups()}))
    return 0
