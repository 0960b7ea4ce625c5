"""The FastAPI application: REST endpoints over named posteriors plus the web explorer.

Endpoints (all JSON; interactive docs at ``/docs``, schema at ``/openapi.json``):

- ``GET  /api/models``: names and short descriptions of the served models.
- ``GET  /api/models/{name}``: problem, parameter names, prior bounds, x shape and training
  range, training history summary, diagnostics card.
- ``POST /api/models/{name}/sample``: ``{"x" | "xs", "n", "seed"}`` → samples ``(n, D)`` or
  ``(B, n, D)``.
- ``POST /api/models/{name}/log_prob``: ``{"x" | "xs", "theta"}`` → ``(N,)`` or ``(N, B)``.
- ``POST /api/models/{name}/map``: ``{"x" | "xs", "num_init", "steps", "seed"}`` → ``(D,)``
  or ``(B, D)``.
- ``POST /api/models/{name}/summary``: ``{"x" | "xs", "n", "quantiles", "seed"}`` → mean,
  std and quantiles per parameter.
- ``GET /``: the explorer (static files shipped in this package; nothing from the internet).

Bad input (unknown model, wrong shapes, NaN/inf, malformed JSON) gets a 422 with a message
saying what to fix. Every request's work is bounded (``limits.py``): too many observations,
samples, theta rows, MAP steps or MCMC transitions get a 413 naming the limit and the
``sbi-core serve`` flag that raises it; a body above ``max_body_bytes`` gets 413 too.
Posterior work runs off the event loop in worker threads (``workers.py``): ``max_concurrency``
for heavy requests and as many for light ones (at most one batch of work, e.g. the explorer's),
so that large requests cannot keep small ones waiting; a request that finds its workers all
busy for ``queue_wait`` seconds, or that
runs past ``request_timeout``, gets a 503 with ``Retry-After``. Seeded calls run alone,
because they reset torch's global random number generator, which all models share
(``rng_lock.py``). MCMC posteriors answer with their R-hat / ESS and ``warnings``
(``compute.py``).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import orjson
import torch
from fastapi import FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from sbi_core.display import MESSAGE_LIMIT, shown, shown_names
from sbi_core.posterior import Posterior
from sbi_core.server.body_limit import BodySizeLimit
from sbi_core.server.compute import Draws, Job, is_light
from sbi_core.server.limits import Limits
from sbi_core.server.model_info import model_info, shown_label
from sbi_core.server.rng_lock import RNGLock
from sbi_core.server.schemas import (
    InputError,
    LogProbRequest,
    LogProbResponse,
    MapRequest,
    MapResponse,
    SampleRequest,
    SampleResponse,
    SummaryRequest,
    SummaryResponse,
    plain,
    to_tensor,
)
from sbi_core.server.workers import Deadline, WorkerPool

__all__ = ["create_app", "STATIC_DIR"]

STATIC_DIR = Path(__file__).parent / "static"


_REQUESTS: dict[str, Any] = {"sample": SampleRequest, "log_prob": LogProbRequest,
                              "map": MapRequest, "summary": SummaryRequest}


def invalid_request_detail(request: Request, errors: Any) -> Any:
    """FastAPI's validation errors, with unknown body fields turned into one sentence that
    names them and lists the fields the endpoint takes (other errors pass unchanged)."""
    errors = list(errors)
    extra = [str(e["loc"][-1]) for e in errors
             if e.get("type") == "extra_forbidden" and len(e.get("loc", ())) == 2]
    if not extra or len(extra) != len(errors):
        return jsonable_encoder(errors)
    model = _REQUESTS.get(request.url.path.rsplit("/", 1)[-1])
    fields = list(model.model_fields) if model is not None else []
    known = ", ".join(fields) if fields else "see /docs"
    hint = " ('n' is the number of samples)" if "n" in fields else ""
    return (f"Unknown field(s) {', '.join(repr(f) for f in extra)} in the request body; this "
            f"endpoint takes: {known}{hint}. Remove or rename them (the API reference is at "
            "/docs).")


def create_app(models: dict[str, Posterior], max_samples: int = 100_000,
               max_body_bytes: int = 2_000_000, max_map_steps: int = 1000, *,
               max_batch: int = 100_000, max_observations: int = 1000,
               max_mcmc_transitions: int = 200_000, max_concurrency: int = 4,
               request_timeout: float = 30.0, queue_wait: float = 2.0) -> FastAPI:
    """Build the app serving ``models`` (name → posterior).

    Args:
        models: at least one posterior, keyed by the name used in URLs.
        max_samples: most samples per observation (``n``).
        max_body_bytes: largest accepted request body; larger ones get HTTP 413.
        max_map_steps: most gradient steps a MAP request may ask for.
        max_batch: most network rows per request: ``n * B`` samples, ``N * B`` theta rows of
            ``log_prob`` (plus the draws that normalize a posterior leaking out of a bounded
            prior), ``(num_init + steps) * B`` for MAP (see ``limits.py``).
        max_observations: most observations ``B`` per request.
        max_mcmc_transitions: most MCMC chain transitions per request (MCMC posteriors).
        max_concurrency: posterior requests computed at once, in worker threads.
        request_timeout: seconds one request may take (waiting included) before HTTP 503.
        queue_wait: seconds a request waits for a free worker before HTTP 503 (busy).
    """
    if not models:
        raise ValueError("create_app needs at least one model: {'name': posterior}.")
    for name, post in models.items():
        if not isinstance(post, Posterior):
            raise TypeError(f"Model {name!r} is a {type(post).__name__}, not an sbi_core "
                            "Posterior; load it with sbi_core.load(path).")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes (serve flag --max-body-bytes) must be positive, got "
                         f"{max_body_bytes}.")
    limits = Limits(max_samples=max_samples,
                    max_batch=max_batch,
                    max_observations=max_observations, max_map_steps=max_map_steps,
                    max_mcmc_transitions=max_mcmc_transitions, max_concurrency=max_concurrency,
                    request_timeout=request_timeout, queue_wait=queue_wait)
    models = dict(models)
    lock = RNGLock()
    # heavy requests (more than one batch of work) and light ones have separate workers, so a
    # flood of large requests cannot keep the explorer's small ones waiting
    heavy = WorkerPool(limits.max_concurrency, limits.queue_wait, limits.request_timeout)
    light = WorkerPool(limits.max_concurrency, limits.queue_wait, limits.request_timeout)
    max_values = max(1000, max_body_bytes // 2)
    swagger_dir = _swagger_assets()
    app = FastAPI(title="sbi-core posterior server",
                  description="Query amortized posteriors: sample, log_prob, MAP, summaries. "
                              "The web explorer is at /.",
                  version="1", docs_url=None if swagger_dir else "/docs",
                  redoc_url=None if swagger_dir else "/redoc")
    if swagger_dir is not None:  # interactive API docs from installed files, no CDN
        app.mount("/api-docs-assets", StaticFiles(directory=swagger_dir), name="api-docs-assets")

        @app.get("/docs", include_in_schema=False)
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json",
                                       title=f"{app.title} - API docs",
                                       swagger_js_url="/api-docs-assets/swagger-ui-bundle.js",
                                       swagger_css_url="/api-docs-assets/swagger-ui.css",
                                       swagger_favicon_url="/api-docs-assets/favicon.png")

        @app.get("/redoc", include_in_schema=False)
        def redoc() -> HTMLResponse:
            return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json",
                                  title=f"{app.title} - API reference",
                                  redoc_js_url="/api-docs-assets/redoc.standalone.js",
                                  redoc_favicon_url="/api-docs-assets/favicon.png",
                                  with_google_fonts=False)
    app.state.models = models
    app.state.max_samples = max_samples
    app.state.limits = limits
    app.state.workers = heavy
    app.state.light_workers = light

    def get(name: str) -> Posterior:
        if name not in models:
            raise HTTPException(404, f"No model named {name!r}; this server has "
                                     f"{sorted(models)}. List them at GET /api/models.")
        return models[name]

    def job(post: Posterior, deadline: Deadline) -> Job:
        return Job(post, limits, lock, deadline, max_values)

    def lane(post: Posterior, kind: str, req: Any, n: int | None = None) -> WorkerPool:
        try:
            return light if is_light(post, kind, req, n) else heavy
        except (TypeError, ValueError, IndexError):  # odd JSON: the worker reports it
            return heavy

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": invalid_request_detail(request, err.errors())}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        # a message may quote names or references read from a model file: escaped, bounded
        detail = shown(err.detail, MESSAGE_LIMIT) if isinstance(err.detail, str) else err.detail
        return JSONResponse({"detail": detail}, err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": shown(f"Internal error ({type(err).__name__}): {err}",
                                             MESSAGE_LIMIT)}, 500)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/models", summary="List the served models")
    def list_models() -> dict[str, Any]:
        return {"models": [{"name": n, "problem": shown_label(p.problem_spec.get("name")),
                            "method": shown(p.method),
                            "method_label": shown(getattr(p, "method_label", p.method)),
                            "dim": p.dim, "x_shape": list(p.x_shape)}
                           for n, p in models.items()],
                "max_samples": max_samples, "limits": limits.to_dict()}

    @app.get("/api/models/{name}", summary="Describe one model")
    def info(name: str) -> dict[str, Any]:
        return {**model_info(name, get(name), max_samples), "limits": limits.to_dict()}

    @app.post("/api/models/{name}/sample", response_model=SampleResponse,
              summary="Draw posterior samples for one or many observations")
    async def sample(name: str, req: SampleRequest) -> Response:
        post = get(name)
        n = min(1000, max_samples) if req.n is None else req.n

        def work(deadline: Deadline) -> Response:
            start = time.perf_counter()
            j = job(post, deadline)
            xs, batched, trials = j.observations(req.x, req.xs)
            draws = j.draw(xs, trials, n, req.seed, req.mcmc.options() if req.mcmc else None)
            out = draws.samples.transpose(0, 1) if batched else draws.samples[:, 0]
            return _samples_response(post.param_names, out, time.perf_counter() - start,
                                     _mcmc_plain(draws, batched), draws.warnings,
                                     j.misspecification(xs, batched))

        return await lane(post, "sample", req, n).run(work)

    @app.post("/api/models/{name}/log_prob", response_model=LogProbResponse,
              summary="Posterior log density of parameters")
    async def log_prob(name: str, req: LogProbRequest) -> JSONResponse:
        post = get(name)

        def work(deadline: Deadline) -> JSONResponse:
            j = job(post, deadline)
            xs, batched, trials = j.observations(req.x, req.xs)
            try:
                theta = to_tensor(req.theta, "theta", max_values)
            except InputError as err:
                raise HTTPException(422, str(err)) from err
            want = f"(N, B, {post.dim})" if batched else f"(N, {post.dim})"
            if theta.ndim != (3 if batched else 2) or theta.shape[-1] != post.dim or \
                    (batched and theta.shape[1] != xs.shape[0]):
                raise HTTPException(422, f"theta has shape {list(theta.shape)}; expected {want} "
                                         f"for the parameters {post.param_names}"
                                         + (f" and B={xs.shape[0]} observations." if batched
                                            else "."))
            if not bool(torch.isfinite(theta).all()):
                raise HTTPException(422, "theta contains NaN or inf; give finite parameter "
                                         "values.")
            lp = j.log_prob(theta if batched else theta[:, None, :], xs, trials)
            return JSONResponse({"log_prob": plain(lp if batched else lp[:, 0]),
                                 "normalized": post.normalized_log_prob})

        return await lane(post, "log_prob", req).run(work)

    @app.post("/api/models/{name}/map", response_model=MapResponse,
              summary="Maximum a posteriori estimate")
    async def map_estimate(name: str, req: MapRequest) -> JSONResponse:
        post = get(name)

        def work(deadline: Deadline) -> JSONResponse:
            j = job(post, deadline)
            xs, batched, trials = j.observations(req.x, req.xs)
            num_init = min(1000, limits.max_batch) if req.num_init is None else req.num_init
            est = j.map(xs, trials, num_init, req.steps, req.seed)
            return JSONResponse({"param_names": shown_names(post.param_names),
                                 "map": plain(est if batched else est[0])})

        return await lane(post, "map", req).run(work)

    @app.post("/api/models/{name}/summary", response_model=SummaryResponse,
              summary="Posterior mean, standard deviation and quantiles per parameter")
    async def summary(name: str, req: SummaryRequest) -> JSONResponse:
        post = get(name)
        levels = req.quantiles
        if not levels or len(levels) > 99 or not all(0.0 <= q <= 1.0 for q in levels):
            raise HTTPException(422, "quantiles must be 1 to 99 levels between 0 and 1, e.g. "
                                     "[0.05, 0.5, 0.95].")
        n = min(10_000, max_samples) if req.n is None else req.n

        def work(deadline: Deadline) -> JSONResponse:
            j = job(post, deadline)
            xs, batched, trials = j.observations(req.x, req.xs)
            result = j.draw(xs, trials, n, req.seed, req.mcmc.options() if req.mcmc else None)
            draws = result.samples if batched else result.samples[:, 0]  # (n, B, D) / (n, D)
            qs = torch.quantile(draws, torch.tensor(levels, dtype=draws.dtype), dim=0)
            return JSONResponse({
                "param_names": shown_names(post.param_names), "n": n,
                "mean": plain(draws.mean(0)), "std": plain(draws.std(0)) if n > 1 else
                plain(torch.zeros_like(draws[0])),
                "quantiles": {f"{q:g}": plain(v) for q, v in zip(levels, qs)},
                "mcmc": _mcmc_plain(result, batched),
                "warnings": [shown(w, MESSAGE_LIMIT) for w in result.warnings],
                "misspecification": j.misspecification(xs, batched),
            })

        return await lane(post, "summary", req, n).run(work)

    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    return app


def _mcmc_plain(draws: Draws, batched: bool) -> dict[str, Any] | None:
    """The MCMC report as plain values, R-hat / ESS ``(D,)`` for one observation."""
    if draws.mcmc is None:
        return None
    report = dict(draws.mcmc)
    if not batched:
        report["rhat"], report["ess"] = report["rhat"][0], report["ess"][0]
    return plain(report)


def _swagger_assets() -> str | None:
    """Folder of the Swagger UI and ReDoc files shipped by the ``fastapi-offline`` package
    (part of the ``serve`` extra), or None without it (FastAPI's default /docs then loads
    them from a CDN; the explorer and /openapi.json never need the network)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static"
    return str(folder) if (folder / "swagger-ui-bundle.js").is_file() else None


def _samples_response(param_names: list[str], samples: torch.Tensor, seconds: float,
                      mcmc: dict[str, Any] | None, warnings: list[str],
                      misspecification: dict[str, Any] | None = None) -> Response:
    """JSON of ``samples`` (``(n, D)`` or ``(B, n, D)``) written by orjson straight from the
    float32 array: each value in its shortest round-trip form, ~10x faster than ``json``."""
    body = orjson.dumps({"param_names": shown_names(param_names),
                         "samples": samples.detach().cpu().float().contiguous().numpy(),
                         "seconds": seconds, "mcmc": mcmc,
                         "warnings": [shown(w, MESSAGE_LIMIT) for w in warnings],
                         "misspecification": misspecification},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")
