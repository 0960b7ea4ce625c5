"""The report card: run the diagnostics suite on a posterior and say pass / warn / fail.

``diagnose(posterior, problem=..., num=200)`` (or ``sims=held_out``) draws the test pairs,
samples the posterior for all of them at once, runs every registered check and returns a
:class:`DiagnosisReport` (``summary()``, ``to_dict()``, ``plots(dir)``, ``save()``).

Extension point: a check is a function ``fn(ctx: DiagnosisContext) -> dict`` returning a
*section* ``{"status": "pass"|"warn"|"fail"|"skip", "why": str, "metrics": {...},
"data": {...}}`` of plain values (``data`` feeds the optional plot function
``plot(section, path) -> Figure``, called with ``path=None`` by :meth:`DiagnosisReport.plots`,
which saves the returned figure as PNG and PDF). Register it once and every ``diagnose`` call (and the
``sbi-core diagnose`` command) runs it::

    from diagnostics.report import register_check

    def my_check(ctx):
        ...  # ctx.posterior, ctx.theta, ctx.xs, ctx.samples, ctx.problem, ctx.options
        return {"status": "pass", "why": "...", "metrics": {"score": 0.1}}

    register_check("mine", my_check, title="My check")

Modules listed in ``CHECK_MODULES`` are imported by :func:`diagnose` (so their checks are
registered for the CLI too): a new built-in check module adds its name there.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diagnostics.testset import TooFewPairsError, calibration_pairs, posterior_samples
from sbi_core.display import MESSAGE_LIMIT, shown, shown_names, shown_text
from sbi_core.posterior import Posterior, SingleObservationError
from sbi_core.problem import Problem
from sbi_core.simulation_set import SimulationSet
from sbi_core.threads import auto_threads

__all__ = ["diagnose", "DiagnosisReport", "DiagnosisContext", "Check", "CHECKS",
           "CHECK_MODULES", "register_check", "STATUSES", "REPORT_KEY"]

#: Ordered from best to worst; the overall status is the worst non-skipped one.
STATUSES = ("pass", "warn", "fail")
#: Key of the card in ``posterior.diagnostics`` (saved in the model file).
REPORT_KEY = "report_card"


@dataclass
class DiagnosisContext:
    """Everything a check may use. ``samples`` are drawn once, lazily, and shared.

    Attributes:
        posterior: the posterior under test.
        theta: true parameters of the test pairs ``(N, D)``.
        xs: their simulations ``(N, *x_shape)``.
        problem: the problem (simulator, reference posterior) or None with held-out sims only.
        num_samples: posterior samples per test observation.
        options: extra keyword options passed to :func:`diagnose` (checks read their own).
    """

    posterior: Posterior
    theta: Tensor
    xs: Tensor
    problem: Problem | None = None
    num_samples: int = 1000
    seed: int = 0
    progress: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)
    _samples: Tensor | None = None

    @property
    def samples(self) -> Tensor:
        """Posterior samples ``(num_samples, N, D)`` for all test observations."""
        if self._samples is None:
            self._samples = posterior_samples(self.posterior, self.xs, self.num_samples,
                                              seed=self.seed, progress=self.progress)
        return self._samples

    @property
    def param_names(self) -> list[str]:
        """The posterior's parameter names as shown in verdicts and figures (a name read from
        a model file is escaped and bounded: ``sbi_core.display``)."""
        return shown_names(self.posterior.param_names
                           or [f"theta_{i + 1}" for i in range(self.theta.shape[1])])


@dataclass
class Check:
    """A registered check: ``fn(ctx) -> section`` and an optional ``plot(section, path)``."""

    name: str
    fn: Callable[[DiagnosisContext], dict[str, Any]]
    plot: Callable[[dict[str, Any], Path], Any] | None = None
    title: str = ""
    default: bool = True
    #: Also run by default when an observation is given (``diagnose(..., x=x_o)``).
    when_x: bool = False


#: name -> Check, in run order. Built-in checks are added by ``diagnostics.checks``.
CHECKS: dict[str, Check] = {}
#: Modules imported before checks run; each registers its checks on import.
CHECK_MODULES: list[str] = ["diagnostics.checks", "diagnostics.robustness_check",
                             "diagnostics.misspecification_check",
                             "diagnostics.lc2st_check"]


def load_check_modules() -> None:
    """Import every module in ``CHECK_MODULES`` (registering their checks)."""
    import importlib

    for module in CHECK_MODULES:
        importlib.import_module(module)


def register_check(name: str, fn: Callable[[DiagnosisContext], dict[str, Any]],
                   plot: Callable[[dict[str, Any], Path], Any] | None = None, title: str = "",
                   default: bool = True, when_x: bool = False) -> Check:
    """Add (or replace) a check; ``default=False`` runs it only when named in ``checks=``
    (or, with ``when_x=True``, when an observation is given: ``diagnose(..., x=x_o)``)."""
    check = Check(name, fn, plot, title or name, default, when_x)
    CHECKS[name] = check
    return check


@dataclass
class DiagnosisReport:
    """Result of :func:`diagnose`: one section per check plus run information."""

    sections: dict[str, dict[str, Any]]
    meta: dict[str, Any]
    posterior: Posterior | None = None
    #: The run's context (test pairs, problem), for posterior figures; not saved.
    context: DiagnosisContext | None = field(default=None, repr=False, compare=False)

    @property
    def status(self) -> str:
        """Worst status over the sections (``"skip"`` if every check was skipped)."""
        found = [s["status"] for s in self.sections.values() if s["status"] in STATUSES]
        return max(found, key=STATUSES.index) if found else "skip"

    def summary(self) -> str:
        """Human-readable card: one line per check with its status and why."""
        lines = [f"Report card ({self.meta.get('method') or 'posterior'}, "
                 f"{self.meta.get('num_test_pairs')} test pairs x "
                 f"{self.meta.get('num_samples')} samples): {self.status.upper()}"]
        if self.meta.get("sequential"):
            lines.append(f"  NOTE: {self.meta['sequential']}")
        if "training simulations" in str(self.meta.get("test_data", "")):
            lines.append(f"  NOTE: test pairs from {self.meta['test_data']}: calibration on "
                         "training data looks better than it is.")
        for name, sec in self.sections.items():
            title = sec.get("title", name)
            lines.append(f"  [{sec['status'].upper():4s}] {title}: {sec.get('why', '')}")
        # a card may come from a file (a model's saved report card): shown escaped
        return shown_text("\n".join(lines))

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (JSON- and model-file-safe)."""
        return {"status": self.status, "meta": dict(self.meta),
                "sections": {k: dict(v) for k, v in self.sections.items()}}

    @classmethod
    def from_dict(cls, card: dict[str, Any], posterior: Posterior | None = None) -> DiagnosisReport:
        """Rebuild a report (e.g. from ``posterior.diagnostics["report_card"]``) to re-plot it."""
        return cls(sections=dict(card["sections"]), meta=dict(card.get("meta", {})),
                   posterior=posterior)

    def plots(self, directory: str | Path, formats: Sequence[str] = ("png", "pdf")
              ) -> list[Path]:
        """Write each check's figure, as PNG and PDF (``formats``), into ``directory``.

        A report fresh from :func:`diagnose` also writes ``pairplot``, ``marginals`` and, for
        time-series x, ``predictive_series`` (:func:`diagnostics.plots_report.posterior_figures`).
        Returns the paths written.
        """
        from diagnostics.plots import save_figure
        from diagnostics.plots_export import pyplot

        load_check_modules()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        figures: dict[str, Any] = {}
        for name, sec in self.sections.items():
            check = CHECKS.get(name)
            if check is None or check.plot is None or sec["status"] == "skip" or not sec.get("data"):
                continue
            figures[name] = check.plot({**sec, "num_test_pairs": self.meta.get("num_test_pairs")},
                                       None)
        if self.posterior is not None and self.context is not None:
            from diagnostics.plots_report import posterior_figures

            with warnings.catch_warnings():  # the card's NOTE says it for a sequential model
                if self.meta.get("sequential"):
                    warnings.filterwarnings("ignore",
                                            message="This posterior was trained by sequential")
                figures.update(posterior_figures(self.context))
        paths = []
        for name, fig in figures.items():
            if fig is None:
                continue
            paths.extend(save_figure(fig, directory / name, formats))
            pyplot().close(fig)
        return paths

    def save(self, path: str | Path | None = None) -> Path | None:
        """Store the card in ``posterior.diagnostics`` and, given ``path``, write the model file.

        The card travels with the model: :func:`sbi_core.save` writes ``posterior.diagnostics``
        and :func:`sbi_core.load` restores it.
        """
        if self.posterior is None:
            raise ValueError("This report has no posterior attached; pass it to "
                             "DiagnosisReport.from_dict(card, posterior) first.")
        self.posterior.diagnostics[REPORT_KEY] = self.to_dict()
        if path is None:
            return None
        from sbi_core.serialization import save

        # the card goes back into an existing model file under whatever name it has
        return save(self.posterior, path, any_name=Path(path).is_file())


@auto_threads
def diagnose(posterior: Posterior, problem: Problem | str | None = None,
             sims: SimulationSet | tuple[Tensor, Tensor] | None = None, num: int = 200,
             num_samples: int = 1000, checks: Sequence[str] | None = None, seed: int = 0,
             progress: bool | None = None, **options: Any) -> DiagnosisReport:
    """Run the diagnostics suite and return the report card.

    Args:
        posterior: any :class:`~sbi_core.Posterior`.
        problem: a Problem or PROBLEM string; test pairs are simulated from it when ``sims`` is
            None; also enables predictive checks and reference comparisons. When neither is
            given, the problem recorded in the model (``problem_spec["source"]``) is used if it
            is a built-in problem name; a recorded path or module is only shown, never
            imported (pass it as ``problem=`` if you trust it).
        sims: held-out simulations (never the training set) for the test pairs.
        num: number of test pairs (invalid simulations are dropped with a warning).
        num_samples: posterior samples per test observation.
        checks: names of checks to run (default: all registered default checks, in order).
        seed: seeds test simulations, sampling and the checks.
        **options: per-check options, e.g. ``tarp_references`` (function ``xs -> (N, D)``),
            ``num_predictive_observations``, ``num_reference_observations``,
            ``observations`` (``(B, *x_shape)``: the ``misspecification`` check; with
            ``checks=["misspecification"]`` no test pairs are needed);
            ``x``: the user's observation(s) ``x_shape`` or ``(B, *x_shape)`` for the local checks
            (``lc2st``, :mod:`diagnostics.lc2st_check`) and, unless ``observations`` is given,
            the ``misspecification`` check too (as the CLI's ``--x``).
    """
    load_check_modules()
    if int(num_samples) < 2:
        raise ValueError(f"num_samples (CLI --samples) is {num_samples}; the checks rank the "
                         "true parameters among posterior samples and need at least 2 per test "
                         "observation (1000 recommended).")
    start = time.perf_counter()
    own_prior = None
    training_hits = 0
    if isinstance(checks, str):  # "sbc" or "tarp,sbc": names, not a sequence of letters
        checks = [c.strip() for c in checks.split(",") if c.strip()]
    if options.get("x") is not None and options.get("observations") is None:
        options["observations"] = options["x"]  # as the CLI's --x: the misspecification check
    if checks is None and sims is None and problem is None \
            and options.get("observations") is not None:
        try:  # a built-in problem recorded in the model gives the whole card
            problem = _resolve(posterior, None, need=True)
        except ValueError as err:  # as `sbi-core diagnose MODEL --x obs.csv` alone
            warnings.warn(f"{err} Only the observations are tested (the misspecification "
                          "check); pass problem= or sims= for the calibration checks.",
                          UserWarning, stacklevel=3)
            checks = ["misspecification"]
    if checks is not None and list(checks) == ["misspecification"] and sims is None \
            and problem is None:  # only the observations are tested: no test pairs needed
        theta, xs = torch.zeros(0, posterior.dim), torch.zeros(0, *posterior.x_shape)
    else:
        problem = _resolve(posterior, problem, need=sims is None)
        check_problem_matches(posterior, problem, "diagnose")
        check_sims_match(posterior, sims)
        if sims is None:
            sims = own_prior = _pairs_under_posterior_prior(posterior, problem, num, seed)
        theta, xs = calibration_pairs(problem, sims, num=num, seed=seed)
        if sims is not None and own_prior is None:
            training_hits = _warn_if_training_pairs(posterior, theta)
    _check_shapes(posterior, theta, xs)
    has_x = options.get("x") is not None
    names = list(checks) if checks is not None else [
        n for n, c in CHECKS.items() if c.default or (c.when_x and has_x)]
    if checks is None and options.get("observations") is not None:
        names.append("misspecification")  # runs when observations are given
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"Unknown check(s) {unknown}; available: {sorted(CHECKS)}.")
    ctx = DiagnosisContext(posterior, theta, xs, problem, num_samples, seed, progress, options)
    sections: dict[str, dict[str, Any]] = {}
    from sbi_core.progress import progress_bar

    sequential_note = _sequential_note(posterior, xs)
    if sequential_note:
        warnings.warn(sequential_note, UserWarning, stacklevel=3)
    bar = progress_bar(names, desc="diagnostics", unit="check", progress=progress)
    with warnings.catch_warnings():  # said once above, not again by every sampling call
        warnings.filterwarnings("ignore", message="This posterior was trained by sequential")
        _run_checks(bar, ctx, sections)
    meta = {"method": getattr(posterior, "method_label", posterior.method), "num_test_pairs": int(theta.shape[0]),
            "num_samples": num_samples, "seed": seed,
            "test_data": f"simulated from problem {getattr(problem, 'name', '?')!r} with "
            "parameters from the posterior's own prior (with_prior)" if own_prior is not None
            else ("held-out simulations" if not training_hits else f"given simulations, "
                  f"{training_hits} of them the model's training simulations (not held out)")
            if sims is not None else
            f"simulated from problem {getattr(problem, 'name', '?')!r}",
            "param_names": ctx.param_names,
            "seconds": round(time.perf_counter() - start, 3)}
    if sequential_note:
        meta["sequential"] = sequential_note
    return DiagnosisReport(sections, meta, posterior, context=ctx)


def _run_checks(bar: Any, ctx: DiagnosisContext, sections: dict[str, dict[str, Any]]) -> None:
    """Run each check named by ``bar`` (an iterable of names) on ``ctx`` into ``sections``;
    a check that crashes is a failed section, one that does not apply is skipped."""
    for name in bar:
        bar.set_postfix_str(name)
        check = CHECKS[name]
        t0 = time.perf_counter()
        try:
            section = dict(check.fn(ctx))
        except NotImplementedError as err:
            section = {"status": "skip", "why": f"not available for this posterior: {err}"}
        except SingleObservationError as err:
            section = {"status": "skip", "why": "not applicable: this check needs the posterior "
                       f"at many test observations. {err}"}
        except TooFewPairsError as err:  # the model is not at fault: say so, don't fail it
            section = {"status": "skip", "why": f"too few test pairs: {err}"}
        except Exception as err:  # a crashing check is reported, never hidden as a pass
            section = {"status": "fail", "why": f"the check raised {type(err).__name__}: {err}"}
        if section.get("status") not in (*STATUSES, "skip"):
            raise ValueError(f"Check {name!r} returned status {section.get('status')!r}; use "
                             f"one of {STATUSES} or 'skip'.")
        section.setdefault("why", "")
        section["title"] = check.title
        section["seconds"] = round(time.perf_counter() - t0, 3)
        sections[name] = section


def _sequential_note(posterior: Posterior, xs: Tensor) -> str | None:
    """For a posterior from a sequential run (valid near its ``x_o`` only): what the card's
    test pairs, drawn over the whole prior, can and cannot say about it; None otherwise."""
    record = (getattr(posterior, "problem_spec", None) or {}).get("sequential")
    if not record or len(xs) == 0:  # no test pairs (only --x tested): nothing to qualify
        return None
    from sbi_core.sequential import X_TOLERANCE

    x_o = torch.as_tensor(record.get("x_o") or [], dtype=torch.float32).reshape(-1)
    scale = torch.as_tensor(record.get("x_scale") or [], dtype=torch.float32).reshape(-1)
    far = ""
    if len(xs) and x_o.numel() and scale.numel() == x_o.numel() \
            and xs[0].numel() == x_o.numel():
        z = ((xs.reshape(len(xs), -1).float().cpu() - x_o) / scale.clamp(min=1e-12)).abs()
        tol = float(record.get("x_tolerance", X_TOLERANCE))
        far = (f" ({int((z.amax(-1) > tol).sum())} of {len(xs)} test observations lie more "
               f"than {tol:g} training-x standard deviations from x_o)")
    return (f"This posterior was trained by sequential {record.get('method')} for one "
            f"observation x_o and is valid only near it; the test pairs cover the whole "
            f"prior{far}, so the calibration checks (TARP, SBC, coverage) test it mostly where "
            "it is not meant to be valid: a FAIL there says little about x_o and a PASS does "
            "not certify it. Check it at x_o instead: diagnose(..., x=x_o) (CLI: --x "
            "x_o.csv) adds the local L-C2ST check (docs/local_calibration.md).")


def _pairs_under_posterior_prior(posterior: Posterior, problem: Problem | None, num: int,
                                 seed: int) -> SimulationSet | None:
    """Test simulations whose parameters come from the posterior's own prior when it differs
    from the problem's (a posterior from ``with_prior``: calibration holds under the prior it
    targets, not the training prior), kept inside the problem prior's support; ``None`` (the
    problem's own prior draws) otherwise."""
    from sbi_core.priors import prior_spec, same_prior_spec, within_support
    from sbi_core.simulation import simulate

    prior = getattr(posterior, "prior", None)
    if problem is None or problem.simulator is None or prior is None or prior is problem.prior:
        return None
    if same_prior_spec(prior_spec(prior), prior_spec(problem.prior)):
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws, have = [], 0
        for _ in range(100):
            cand = prior.sample((2 * num,)).reshape(2 * num, -1).float()
            cand = cand[within_support(problem.prior, cand)]
            draws.append(cand)
            have += len(cand)
            if have >= num:
                break
    if have < num:
        raise ValueError("The posterior's prior (from with_prior) has almost no mass inside the "
                         "problem prior's support; calibration test parameters cannot be drawn. "
                         "Pass held-out simulations from the new prior as sims=.")
    return simulate(problem, theta=torch.cat(draws)[:num], seed=seed, progress=False)


def _resolve(posterior: Posterior, problem: Problem | str | None, need: bool) -> Problem | None:
    """The problem passed by the caller, else the built-in one recorded in the model.

    A recorded path or module (``problem_spec["source"]``) is never imported: it is shown in
    the error (when test simulations are needed) or in a warning (docs/security.md).
    """
    if isinstance(problem, Problem):
        return problem
    from sbi_core.resolve import RecordedProblemError, recorded_problem, resolve_problem

    if problem:
        return resolve_problem(problem)
    ref = (posterior.problem_spec or {}).get("source")
    if not ref:
        if need:
            raise ValueError("diagnose needs test simulations: pass sims= (held-out simulations) "
                             "or problem= (a Problem or PROBLEM string); this model does not "
                             "record where its problem came from.")
        return None
    try:
        return recorded_problem(ref, "This model")
    except RecordedProblemError as err:
        if need:
            raise
        warnings.warn(f"{err} Checks that simulate are skipped.", stacklevel=3)
        return None
    except Exception as err:
        if need:
            raise
        warnings.warn(f"Could not rebuild problem {ref!r} ({err}); checks that simulate are "
                      "skipped.", stacklevel=3)
        return None


def check_problem_matches(posterior: Posterior, problem: Problem | None, what: str) -> None:
    """Stop when ``problem`` names other parameters than the posterior's (another problem).

    Test pairs from another problem of the same dimensions give a confident "fail" about a
    model that may be fine; default names (``theta_1..``) on either side are not compared.
    """
    if problem is None:
        return
    ours, theirs = list(posterior.param_names), list(problem.param_names)
    if len(ours) != len(theirs) or ours == theirs:
        return  # a different dimension is reported by _check_shapes
    default = [f"theta_{i + 1}" for i in range(len(ours))]
    if default in (ours, theirs):
        return
    trained = (posterior.problem_spec or {}).get("name") or "another problem"
    source = (posterior.problem_spec or {}).get("source")
    hint = f" (recorded: {source!r}; pass it if you trust it)" if source else ""
    raise ValueError(
        f"The problem given to {what} ({problem.name!r}) has parameters {theirs}, but the "
        f"posterior was trained on {trained!r} with parameters {ours}: its test pairs would "
        f"judge the model on another problem. Pass the problem the model was trained on{hint}.")


def check_sims_match(posterior: Posterior, sims: Any) -> None:
    """Stop when held-out simulations record other parameter names than the posterior's
    (simulations of another problem with the same shapes). Pairs or files that record no
    names, and default names (``theta_1..``) on either side, are not compared."""
    recorded = getattr(sims, "provenance", {}).get("param_names") if sims is not None else None
    ours = list(posterior.param_names)
    if not recorded or list(recorded) == ours or len(recorded) != len(ours):
        return  # a different dimension is reported by _check_shapes
    default = [f"theta_{i + 1}" for i in range(len(ours))]
    if default in (list(recorded), ours):
        return
    made_by = sims.provenance.get("problem") or "another problem"
    trained = (posterior.problem_spec or {}).get("name") or "another problem"
    raise ValueError(
        f"The test simulations were made by problem {shown(repr(made_by))} with parameters "
        f"{shown(list(recorded), MESSAGE_LIMIT)}, but the posterior was trained on {trained!r} with parameters "
        f"{ours}: they would judge the model on another problem. Pass held-out simulations of "
        "the model's own problem (sims=, CLI: --sims), or leave them out to simulate test "
        "pairs from its problem.")


def _warn_if_training_pairs(posterior: Posterior, theta: Tensor) -> int:
    """Warn when test pairs given as held-out simulations are the model's training ones;
    returns how many of the fingerprinted rows were found."""
    from sbi_core.training_sketch import SKETCH_ROWS, training_overlap

    sketch = (getattr(posterior, "history", None) or {}).get("training_theta_sketch")
    if not sketch or theta.shape[1] != posterior.dim:
        return 0
    hits = training_overlap(sketch, theta[:SKETCH_ROWS])
    if hits:
        warnings.warn(
            f"{hits} of the first {min(len(theta), SKETCH_ROWS)} test pairs are simulations this "
            "model was trained on: calibration measured on training data looks better than it "
            "is. Pass held-out simulations (simulate again with another seed: "
            "`sbi-core simulate ... --seed OTHER`), or leave out sims= / --sims to simulate "
            "fresh test pairs from the problem.", stacklevel=3)
    return hits


def _check_shapes(posterior: Posterior, theta: Tensor, xs: Tensor) -> None:
    if theta.shape[1] != posterior.dim:
        raise ValueError(f"The test parameters have D={theta.shape[1]} but the posterior is over "
                         f"D={posterior.dim} parameters {posterior.param_names}.")
    if posterior.x_shape and tuple(xs.shape[1:]) != tuple(posterior.x_shape):
        raise ValueError(f"The test simulations have x of shape {tuple(xs.shape[1:])}; the "
                         f"posterior expects {tuple(posterior.x_shape)}.")
