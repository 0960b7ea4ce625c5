"""``sbi-core robustness MODEL [--eps 0.1 0.5 1 2] [--sims FILE | --problem P --num N]
[--embedding MODULE:FUNCTION]``.

Attacks test observations with projected gradient ascent at each relative budget and prints
(and optionally writes) the robustness report of :func:`diagnostics.robustness.robustness_report`.
"""

from __future__ import annotations

import argparse

from sbi_core.cli.common import PROBLEM_HELP, add_force, positive_float, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "robustness", help="adversarial robustness of a trained posterior",
        description="Perturb test observations adversarially (PGD within eps times the data "
                    "scale) and report how far the posterior moves compared with random noise "
                    "of the same norm, the coverage of the attacked posteriors and their "
                    "posterior predictives.")
    p.add_argument("model", metavar="MODEL", help="model file from `sbi-core train`")
    p.add_argument("--eps", type=positive_float, nargs="+", default=[0.1, 0.5, 1.0, 2.0],
                   help="relative budgets: eps times the observations' spread (default: "
                        "0.1 0.5 1 2)")
    p.add_argument("--sims", help="test simulations (file from `sbi-core simulate` or .npz)")
    p.add_argument("--problem", help=f"problem to simulate test observations from: {PROBLEM_HELP} "
                                     "(default: the model's problem)")
    p.add_argument("--embedding", metavar="MODULE:FUNCTION",
                   help="for a model trained with your own embedding network: module:function or "
                        "file.py:function returning that nn.Module (its weights come from the "
                        "model file; see docs/embeddings.md)")
    p.add_argument("--num", type=positive_int, default=100, help="number of test observations")
    p.add_argument("--norm", choices=["l2", "linf"], default="l2")
    p.add_argument("--attack-loss", choices=["rkl", "fkl", "mmd", "nll"], default="rkl",
                   help="what the attack maximizes (default: reverse KL)")
    p.add_argument("--metric", choices=["rkl", "fkl", "mmd"], default="rkl",
                   help="divergence reported (default: reverse KL)")
    p.add_argument("--steps", type=positive_int,
                   help="PGD iterations (default 200 for l2, 120 for linf)")
    p.add_argument("--num-samples", type=positive_int, default=256,
                   help="Monte Carlo samples per observation for the reported divergence")
    p.add_argument("--no-predictive", action="store_true",
                   help="skip posterior predictive simulations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the full report as JSON here")
    p.add_argument("--quiet", action="store_true",
                   help="print only the status line (the table is in --out)")
    add_force(p)
    return p


def _test_data(args: argparse.Namespace, posterior, given=None):
    """Test ``(theta, x, problem or None)`` from --sims, or simulated from the problem
    (``given``: the --problem, built once by :func:`run`)."""
    from diagnostics.report import check_problem_matches, check_sims_match
    from sbi_core.resolve import recorded_problem, resolve_problem
    from sbi_core.simulation import simulate
    from sbi_core.simulation_set import SimulationSet

    if args.num < 2:
        raise ValueError("--num must be at least 2 (the data scale needs several observations).")
    if args.sims:
        sims = SimulationSet.load(args.sims)
        theta, x = sims.training_data(warn=False)
        if len(x) < 2:
            raise ValueError(f"{args.sims} holds {len(x)} valid simulation(s); the report needs "
                             "at least 2 (attacks are scaled by the data's spread across "
                             "observations). Pass a file with more test simulations (200 "
                             "recommended), or --problem PROBLEM --num N to simulate them.")
        if tuple(x.shape[1:]) != tuple(posterior.x_shape):
            raise ValueError(f"{args.sims} holds x of shape {tuple(x.shape[1:])}, but the model "
                             f"expects {tuple(posterior.x_shape)}.")
        if theta.shape[1] != posterior.dim:
            raise ValueError(f"{args.sims} holds theta with {theta.shape[1]} parameters, but the "
                             f"model has {posterior.dim}.")
        check_sims_match(posterior, sims)  # simulations of another problem: refused
        if args.problem:
            problem = given if given is not None else resolve_problem(args.problem)
            check_problem_matches(posterior, problem, "robustness")
        else:  # only the predictive check needs it: a recorded code path is shown, not run
            problem = _recorded_or_none(sims.provenance.get("problem_source"), args.sims) \
                or _recorded_or_none(posterior.problem_spec.get("source"), args.model)
        return theta[:args.num], x[:args.num], problem
    if args.problem:
        problem = given if given is not None else resolve_problem(args.problem)
        check_problem_matches(posterior, problem, "robustness")
    else:
        problem = recorded_problem(posterior.problem_spec.get("source"), args.model)
    if problem is None:
        raise ValueError("The model does not record its problem; pass --sims FILE with test "
                         "simulations or --problem PROBLEM.")
    sims = simulate(problem, args.num, seed=10_000 + args.seed, progress=False)
    theta, x = sims.training_data(warn=False)
    return theta, x, problem


def _recorded_or_none(ref, where):
    """The recorded built-in problem, or None (with a note) for a recorded code path."""
    import sys

    from sbi_core.resolve import RecordedProblemError, recorded_problem

    try:
        return recorded_problem(ref, where)
    except RecordedProblemError as err:
        print(f"[sbi-core] note: {err} Without it the predictive check is skipped.",
              file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    from diagnostics.robustness import robustness_report
    from sbi_core.atomic import check_output
    from sbi_core.cli.common import problem_file
    from sbi_core.io import write_json
    from sbi_core.serialization import PriorRequiredError, load_model

    if args.out:
        check_output(args.out, "json", inputs=[args.model, args.sims, problem_file(args.problem)],
                     force=args.force)
    from sbi_core.resolve import resolve_callable, resolve_problem

    given = resolve_problem(args.problem) if args.problem else None  # built once
    embedding = resolve_callable(args.embedding) if args.embedding else None
    try:
        posterior = load_model(args.model, embedding=embedding)
    except PriorRequiredError:  # a prior class of your own: --problem gives it
        if given is None:
            raise
        posterior = load_model(args.model, problem=given, embedding=embedding)
    theta, x, problem = _test_data(args, posterior, given)
    simulator = None if (args.no_predictive or problem is None) else problem.simulator
    report = robustness_report(posterior, x, theta, eps=args.eps, norm=args.norm,
                               attack_loss=args.attack_loss, metric=args.metric,
                               steps=args.steps, num_samples=args.num_samples,
                               simulator=simulator, seed=args.seed)
    if args.out:
        write_json(args.out, report)
    if args.quiet:
        print(f"status: {report['status']} - {report['reason']}")
        return 0
    print(f"[sbi-core] robustness of {args.model}: {report['num_observations']} observations, "
          f"{args.norm} attack maximizing {args.attack_loss}, metric {args.metric}")
    header = f"{'eps':>6} {'mean':>9} {'q95':>9} {'noise':>9} {'x noise':>8}"
    has_cov = "clean_coverage" in report
    has_pred = simulator is not None
    if has_cov:
        header += f" {'cov90':>6}"
    if has_pred:
        header += f" {'pred x':>7}"
    print(header)
    for r in report["results"]:
        line = (f"{r['eps']:>6g} {r['attack']['mean']:>9.3g} {r['attack']['q95']:>9.3g} "
                f"{r['noise']['mean']:>9.3g} {r['attack_over_noise']:>8.2f}")
        if has_cov:
            line += f" {r['coverage']['coverage'][2]:>6.2f}"
        if has_pred:
            line += f" {r['predictive']['ratio']:>7.2f}"
        print(line)
    if has_cov:
        print(f"clean coverage at 90%: {report['clean_coverage']['coverage'][2]:.2f}")
    print(f"status: {report['status']} - {report['reason']}")
    return 0
