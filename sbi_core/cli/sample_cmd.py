"""``sbi-core sample MODEL --x FILE --num N --out FILE.csv [--seed S] [--iid]``."""

from __future__ import annotations

import argparse
import json

from sbi_core.cli.common import add_force, nonnegative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("sample", help="draw posterior samples for observations",
                       description="Sample a trained posterior for each observation in a .csv "
                                   "or .npy file (one per row) and write a CSV with an "
                                   "'observation' column and the parameter names.")
    p.add_argument("model", metavar="MODEL", help="model file from `sbi-core train`")
    p.add_argument("--x", required=True,
                   help=".csv, .npy or .json with one observation per row")
    p.add_argument("--num", type=positive_int, default=1000, help="samples per observation")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding", metavar="MODULE:FUNCTION",
                   help="for a model trained with your own embedding network: module:function or "
                        "file.py:function returning that nn.Module (its weights come from the "
                        "model file; see docs/embeddings.md)")
    p.add_argument("--iid", action="store_true",
                   help="treat the rows as one set of iid observations of the same parameters")
    p.add_argument("--mcmc-method", choices=["slice", "hmc"],
                   help="MCMC sampler of likelihood/ratio posteriors (nle, nre, ...)")
    p.add_argument("--problem", metavar="PROBLEM",
                   help="FILE.py:FUNCTION giving the prior, needed only when the model was "
                        "trained with a user-written prior class (never imported from MODEL)")
    p.add_argument("--num-chains", type=positive_int, help="MCMC chains per observation")
    p.add_argument("--warmup-steps", type=nonnegative_int,
                   help="MCMC warm-up transitions per chain")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 1) when an observation does not look like the training "
                        "simulations (misspecification tests, docs/trust.md) instead of warning")
    add_force(p)
    return p


def run(args: argparse.Namespace) -> int:
    from sbi_core.atomic import check_output
    from sbi_core.cli.common import problem_file
    from sbi_core.io import read_observations, write_samples_csv
    from sbi_core.resolve import resolve_callable
    from sbi_core.serialization import load_model

    out = check_output(args.out, "csv", inputs=[args.model, args.x, problem_file(args.problem)],
                       force=args.force)
    posterior = load_model(args.model, problem=args.problem,
                           embedding=resolve_callable(args.embedding) if args.embedding else None)
    xs = read_observations(args.x, posterior.x_shape)
    mcmc = {k: v for k, v in {"method": args.mcmc_method, "num_chains": args.num_chains,
                              "warmup_steps": args.warmup_steps}.items() if v is not None}
    if mcmc and not hasattr(posterior, "mcmc_config"):
        raise ValueError(f"--mcmc-method/--num-chains/--warmup-steps apply to MCMC-based "
                         f"posteriors (nle, nre, ...); this model uses {posterior.method!r}.")
    if args.iid:
        if not posterior.supports_iid:
            raise ValueError(
                f"Method {posterior.method!r} cannot condition on a set of iid observations. "
                "Use an NPE with a set embedding trained on sets, or NLE/NRE/score methods "
                "(--method nle|nre|npse|fmpe|pfn)."
            )
        samples = posterior.sample((args.num,), x=xs, seed=args.seed, strict=args.strict,
                                   **mcmc)[:, None, :]
    else:
        samples = posterior.sample_batched((args.num,), xs, seed=args.seed, strict=args.strict,
                                           **mcmc)
    write_samples_csv(out, samples, posterior.param_names)
    print(json.dumps({"out": str(args.out), "observations": int(samples.shape[1]),
                      "samples_per_observation": args.num}))
    return 0
