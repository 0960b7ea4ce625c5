"""``sbi-core serve MODEL [MODEL ...] [--host 127.0.0.1] [--port 8000] [limits]``.

The limits (``--max-samples``, ``--max-batch``, ``--max-observations``, ``--max-map-steps``,
``--max-mcmc-transitions``, ``--max-concurrency``, ``--request-timeout``, ``--queue-wait``)
bound the work of one request; see ``sbi_core/server/limits.py`` and docs/serve.md.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve posteriors over HTTP with a web explorer",
                       description="Serve trained posteriors: a REST API (docs at /docs) and an "
                                   "interactive explorer at /. Needs the 'serve' extra "
                                   "(pip install 'sbi-core[serve]').")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model file from `sbi-core train`, served under its file stem, or "
                        "NAME=PATH to choose the name")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: only this machine can connect)")
    p.add_argument("--port", type=int, default=8000)
    lim = p.add_argument_group("limits (bound the work of one request; see docs/serve.md)")
    lim.add_argument("--max-samples", type=int, default=100_000,
                     help="most samples per observation, n (default 100000)")
    lim.add_argument("--max-batch", type=int, default=100_000,
                     help="most network rows per request: n * observations for sample and "
                          "summary, theta rows * observations (+ normalization draws) for "
                          "log_prob, (num_init + steps) * observations for map (default 100000)")
    lim.add_argument("--max-observations", type=int, default=1000,
                     help="most observations per request (default 1000)")
    lim.add_argument("--max-map-steps", type=int, default=1000,
                     help="most gradient steps of one MAP request (default 1000)")
    lim.add_argument("--max-mcmc-transitions", type=int, default=200_000,
                     help="most MCMC chain transitions per request, NLE/NRE models "
                          "(default 200000)")
    lim.add_argument("--max-concurrency", type=int, default=4,
                     help="posterior requests computed at once, in worker threads (default 4)")
    lim.add_argument("--request-timeout", type=float, default=30.0,
                     help="seconds one request may take before it is stopped with HTTP 503 "
                          "(default 30)")
    lim.add_argument("--queue-wait", type=float, default=2.0,
                     help="seconds a request waits for a free worker before HTTP 503 busy "
                          "(default 2)")
    lim.add_argument("--max-body-bytes", type=int, default=2_000_000,
                     help="largest accepted request body in bytes (default 2000000)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per request (default 1: concurrent requests already "
                        "share the cores, and small networks gain little from more)")
    p.add_argument("--embedding", action="append", metavar="[NAME=]MODULE:FUNCTION",
                   help="for a model trained with your own embedding network: module:function "
                        "or file.py:function returning that nn.Module; with several models, "
                        "NAME=module:function for each model that has one (repeatable)")
    p.add_argument("--problem", action="append", metavar="[NAME=]FILE.py:FUNCTION",
                   help="for a model trained with a user-written prior class: the problem that "
                        "defines the prior (never imported from MODEL); with several models, "
                        "NAME=FILE.py:FUNCTION (repeatable)")
    return p


def parse_models(specs: list[str]) -> dict[str, Path]:
    """``["a.pt", "b=path/c.pt"]`` → ``{"a": Path("a.pt"), "b": Path("path/c.pt")}``."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise ValueError(f"Cannot read model argument {spec!r}; use PATH or NAME=PATH.")
        if name in out:
            raise ValueError(f"Two models are named {name!r}; give one a name with NAME=PATH.")
        out[name] = Path(path)
    return out


def check_port(host: str, port: int) -> None:
    """Raise a clear ValueError when ``host:port`` cannot be bound (in use, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            sock.bind(infos[0][4])
    except OSError as err:
        raise ValueError(f"Cannot listen on {host}:{port} ({err.strerror or err}); the port may "
                         "be in use: pick another with --port, or check --host.") from err


def run(args: argparse.Namespace) -> int:
    from sbi_core.serialization import load_model

    try:
        import uvicorn

        from sbi_core.server import create_app
    except ImportError as err:
        raise ValueError(f"`sbi-core serve` needs FastAPI, uvicorn and orjson ({err}); install them with "
                         "pip install 'sbi-core[serve]'.") from err
    if args.port < 0 or args.port > 65535:
        raise ValueError(f"--port {args.port} is not a TCP port (0-65535).")
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}.")
    from sbi_core.server.limits import Limits

    limits = Limits(max_samples=args.max_samples, max_batch=args.max_batch,
                    max_observations=args.max_observations, max_map_steps=args.max_map_steps,
                    max_mcmc_transitions=args.max_mcmc_transitions,
                    max_concurrency=args.max_concurrency, request_timeout=args.request_timeout,
                    queue_wait=args.queue_wait)  # bad values fail here, before loading models
    if args.max_body_bytes < 1:
        raise ValueError(f"--max-body-bytes must be positive, got {args.max_body_bytes}.")
    import torch

    check_port(args.host, args.port)
    paths = parse_models(args.models)
    embeddings = _embeddings(args.embedding or [], list(paths))
    problems = _per_model(args.problem or [], list(paths), "--problem")
    models = {name: load_model(path, problem=problems.get(name), embedding=embeddings.get(name))
              for name, path in paths.items()}
    for name in sorted(problems):
        if _prior_rebuilt_from_file(models[name]):
            print(f"[sbi-core] note: --problem {problems[name]} is not used for {paths[name]}: "
                  "its prior is rebuilt from the file (--problem is only for a model trained "
                  "with a user-written prior class).", file=sys.stderr)
    torch.set_num_threads(args.threads)
    app = create_app(models, max_body_bytes=args.max_body_bytes, **limits.to_dict())
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[sbi-core] warning: binding {args.host} exposes the server to other machines; "
              "it has no authentication.", file=sys.stderr)
    print(f"[sbi-core] serving {sorted(models)} at http://{args.host}:{args.port}/ "
          f"(API docs at /docs; Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _embeddings(refs: list[str], names: list[str]) -> dict:
    """``--embedding`` values → model name → factory (a bare ref needs a single model)."""
    from sbi_core.resolve import resolve_callable

    return {name: resolve_callable(target)
            for name, target in _per_model(refs, names, "--embedding").items()}


def _per_model(refs: list[str], names: list[str], flag: str) -> dict[str, str]:
    """``[NAME=]module:function`` values of ``flag`` → model name → ``module:function``."""
    out = {}
    for ref in refs:
        name, sep, target = ref.partition("=")
        if not sep:
            if len(names) != 1:
                raise ValueError(f"{flag} {ref!r}: with several models write "
                                 f"NAME=module:function (models: {', '.join(names)}).")
            name, target = names[0], ref
        if name not in names:
            raise ValueError(f"{flag} {ref!r} names no served model (models: "
                             f"{', '.join(names)}).")
        out[name] = target
    return out


def _prior_rebuilt_from_file(posterior: object) -> bool:
    """Whether the model's recorded prior spec rebuilds without a given problem."""
    from sbi_core.priors import UserPriorRequired, prior_from_spec

    try:
        prior_from_spec((getattr(posterior, "problem_spec", None) or {}).get("prior"))
    except (UserPriorRequired, ValueError, KeyError, TypeError):
        return False
    return True
