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

Bad input (unknown model, wrong shapes, NaN/inf, too many samples, malformed JSON) gets a
4xx with a message saying what to fix; a body above ``max_body_bytes`` gets 413. Posterior
calls run in FastAPI's thread pool (sync endpoints); seeded calls run alone, because they
reset torch's global random number generator, which all models share (see rng_lock.py).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import torch
from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request

from sbi_core.posterior import Posterior, SamplingError
from sbi_core.server.body_limit import BodySizeLimit
from sbi_core.server.model_info import model_info
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
    _Observations,
    plain,
    to_tensor,
)

__all__ = ["create_app", "STATIC_DIR"]

STATIC_DIR = Path(__file__).parent / "static"
T = TypeVar("T")


def create_app(models: dict[str, Posterior], max_samples: int = 100_000,
               max_body_bytes: int = 2_000_000, max_map_steps: int = 1000) -> FastAPI:
    """Build the app serving ``models`` (name → posterior).

    Args:
        models: at least one posterior, keyed by the name used in URLs.
        max_samples: most samples (``n * B``, or ``N * B`` parameter rows) per request.
        max_body_bytes: largest accepted request body; larger ones get HTTP 413.
        max_map_steps: most gradient steps a MAP request may ask for.
    """
    if not models:
        raise ValueError("create_app needs at least one model: {'name': posterior}.")
    for name, post in models.items():
        if not isinstance(post, Posterior):
            raise TypeError(f"Model {name!r} is a {type(post).__name__}, not an sbi_core "
                            "Posterior; load it with sbi_core.load(path).")
    if max_samples < 1 or max_body_bytes < 1:
        raise ValueError("max_samples and max_body_bytes must be positive.")
    models = dict(models)
    lock = RNGLock()
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

    def get(name: str) -> Posterior:
        if name not in models:
            raise HTTPException(404, f"No model named {name!r}; this server has "
                                     f"{sorted(models)}. List them at GET /api/models.")
        return models[name]

    def run(fn: Callable[[], T], seeded: bool) -> T:
        try:
            with lock.hold(exclusive=seeded):
                return fn()
        except (ValueError, SamplingError) as err:  # ObservationError, InputError are ValueErrors
            raise HTTPException(422, str(err)) from err

    def observations(post: Posterior, req: _Observations) -> tuple[torch.Tensor, bool]:
        if (req.x is None) == (req.xs is None):
            raise HTTPException(422, "Give exactly one of 'x' (one observation of shape "
                                     f"{list(post.x_shape)}) or 'xs' (several, shape "
                                     f"(B, *{list(post.x_shape)})).")
        batched = req.xs is not None
        try:
            x = to_tensor(req.xs if batched else req.x, "xs" if batched else "x", max_values)
        except InputError as err:
            raise HTTPException(422, str(err)) from err
        if batched and x.ndim == 0:
            raise HTTPException(422, "'xs' must be a list of observations.")
        return x, batched

    def check_count(what: str, count: int, limit: int = max_samples) -> None:
        if count < 1 or count > limit:
            raise HTTPException(422, f"{what} is {count}; this server allows 1 to {limit} per "
                                     "request. Ask for fewer, split the request, or restart the "
                                     "server with a larger --max-samples.")

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"Internal error ({type(err).__name__}): {err}"}, 500)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/models", summary="List the served models")
    def list_models() -> dict[str, Any]:
        return {"models": [{"name": n, "problem": p.problem_spec.get("name"), "method": p.method,
                            "dim": p.dim, "x_shape": list(p.x_shape)}
                           for n, p in models.items()],
                "max_samples": max_samples}

    @app.get("/api/models/{name}", summary="Describe one model")
    def info(name: str) -> dict[str, Any]:
        return model_info(name, get(name), max_samples)

    @app.post("/api/models/{name}/sample", response_model=SampleResponse,
              summary="Draw posterior samples for one or many observations")
    def sample(name: str, req: SampleRequest) -> JSONResponse:
        post = get(name)
        x, batched = observations(post, req)
        req.n = min(1000, max_samples) if req.n is None else req.n
        check_count("n (samples per observation)", req.n)
        check_count("n * number of observations", req.n * (x.shape[0] if batched else 1))
        start = time.perf_counter()
        if batched:
            out = run(lambda: post.sample_batched((req.n,), x, seed=req.seed).transpose(0, 1),
                      req.seed is not None)
        else:
            out = run(lambda: post.sample((req.n,), x, seed=req.seed), req.seed is not None)
        return _samples_response(post.param_names, out, time.perf_counter() - start)

    @app.post("/api/models/{name}/log_prob", response_model=LogProbResponse,
              summary="Posterior log density of parameters")
    def log_prob(name: str, req: LogProbRequest) -> JSONResponse:
        post = get(name)
        x, batched = observations(post, req)
        try:
            theta = to_tensor(req.theta, "theta", max_values)
        except InputError as err:
            raise HTTPException(422, str(err)) from err
        want = f"(N, B, {post.dim})" if batched else f"(N, {post.dim})"
        if theta.ndim != (3 if batched else 2) or theta.shape[-1] != post.dim:
            raise HTTPException(422, f"theta has shape {list(theta.shape)}; expected {want} for "
                                     f"the parameters {post.param_names}.")
        if not bool(torch.isfinite(theta).all()):
            raise HTTPException(422, "theta contains NaN or inf; give finite parameter values.")
        check_count("the number of theta rows", theta.shape[0] * (theta.shape[1] if batched else 1))
        fn = post.log_prob_batched if batched else post.log_prob
        lp = run(lambda: fn(theta, x), True)  # the acceptance-rate estimate is seeded
        return JSONResponse({"log_prob": plain(lp), "normalized": post.normalized_log_prob})

    @app.post("/api/models/{name}/map", response_model=MapResponse,
              summary="Maximum a posteriori estimate")
    def map_estimate(name: str, req: MapRequest) -> JSONResponse:
        post = get(name)
        x, batched = observations(post, req)
        req.num_init = min(1000, max_samples) if req.num_init is None else req.num_init
        check_count("num_init * number of observations",
                    req.num_init * (x.shape[0] if batched else 1))
        if not 0 <= req.steps <= max_map_steps:
            raise HTTPException(422, f"steps is {req.steps}; allowed are 0 to {max_map_steps}.")
        fn = post.map_batched if batched else post.map
        est = run(lambda: fn(x, num_init=req.num_init, steps=req.steps, seed=req.seed),
                  req.seed is not None)
        return JSONResponse({"param_names": post.param_names, "map": plain(est)})

    @app.post("/api/models/{name}/summary", response_model=SummaryResponse,
              summary="Posterior mean, standard deviation and quantiles per parameter")
    def summary(name: str, req: SummaryRequest) -> JSONResponse:
        post = get(name)
        x, batched = observations(post, req)
        req.n = min(10_000, max_samples) if req.n is None else req.n
        check_count("n * number of observations", req.n * (x.shape[0] if batched else 1))
        levels = req.quantiles
        if not levels or len(levels) > 99 or not all(0.0 <= q <= 1.0 for q in levels):
            raise HTTPException(422, "quantiles must be 1 to 99 levels between 0 and 1, e.g. "
                                     "[0.05, 0.5, 0.95].")
        if batched:
            draws = run(lambda: post.sample_batched((req.n,), x, seed=req.seed),
                        req.seed is not None)  # (n, B, D)
        else:
            draws = run(lambda: post.sample((req.n,), x, seed=req.seed),
                        req.seed is not None)  # (n, D)
        qs = torch.quantile(draws, torch.tensor(levels, dtype=draws.dtype), dim=0)
        return JSONResponse({
            "param_names": post.param_names, "n": req.n,
            "mean": plain(draws.mean(0)), "std": plain(draws.std(0)) if req.n > 1 else
            plain(torch.zeros_like(draws[0])),
            "quantiles": {f"{q:g}": plain(v) for q, v in zip(levels, qs)},
        })

    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    return app


def _swagger_assets() -> str | None:
    """Folder of the Swagger UI and ReDoc files shipped by the ``fastapi-offline`` package
    (part of the ``serve`` extra), or None without it (FastAPI's default /docs then loads
    them from a CDN; the explorer and /openapi.json never need the network)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static"
    return str(folder) if (folder / "swagger-ui-bundle.js").is_file() else None


def _samples_response(param_names: list[str], samples: torch.Tensor, seconds: float) -> Response:
    """JSON of ``samples`` (``(n, D)`` or ``(B, n, D)``) written by orjson straight from the
    float32 array: each value in its shortest round-trip form, ~10x faster than ``json``."""
    body = orjson.dumps({"param_names": param_names,
                         "samples": samples.detach().cpu().float().contiguous().numpy(),
                         "seconds": seconds}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")
