"""Pretrain the in-context posterior network (``method="incontext"``) on the problem prior.

Deterministic from ``--seed``: the network's initialization comes from the seed and the data
of step ``s`` from a generator seeded with ``(seed, s)``, so a run resumed from a checkpoint
sees exactly the data an uninterrupted run would. Checkpoints (model, optimizer, step, loss
log) are written atomically every ``--checkpoint-seconds`` and at the end; ``--resume``
continues from the last one. ``--max-minutes`` ends a run cleanly (checkpoint written), so on
a GPU lent for at most 10 minutes at a time one repeats the same command with ``--resume``.

Each step draws one ``(D, d, N)``: ``D ~ U{1..3}``, ``d ~ U{1..10}``, the context size ``N``
log-uniform in ``[8, 1000]`` (``--n-min`` raises the lower end), plus ``--queries`` query pairs per problem, and as many problems
as fit in ``--tokens`` context+query pairs (2..32).

Examples::

    # CPU, in the background, resumable:
    OMP_NUM_THREADS=1 nohup python benchmarks/pretrain_incontext.py --out runs/incontext \\
        --steps 20000 --seed 0 --max-minutes 70 > runs/incontext.log 2>&1 &
    python benchmarks/pretrain_incontext.py --out runs/incontext --steps 20000 --seed 0 --resume
    # Continue from a weights file (fresh optimizer), ending at a fixed step:
    OMP_NUM_THREADS=1 python benchmarks/pretrain_incontext.py --out runs/incontext_v2 \
        --init-from runs/incontext_1600.pt --steps 6000 --stop-at 5756 --seed 0 --lr 5e-4
    # Write the shipped weights from the last checkpoint:
    python benchmarks/pretrain_incontext.py --out runs/incontext --export \\
        estimators/weights/incontext_v1.pt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from estimators.incontext import NET_DEFAULTS, InContextNet, pretrain_loss  # noqa: E402
from estimators.incontext_prior import (  # noqa: E402
    D_MAX,
    N_MAX,
    N_MIN,
    X_DIM_MAX,
    prior_description,
    sample_problems,
)


def step_batch(seed: int, step: int, tokens: int, queries: int, n_max: int = N_MAX,
               n_min: int = N_MIN) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The problems of one step: ``theta`` ``(B, N + Q, D)``, ``x`` ``(B, N + Q, d)``, ``N``
    (log-uniform in ``[n_min, n_max]``)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    dim = int(torch.randint(1, D_MAX + 1, (), generator=g))
    x_dim = int(torch.randint(1, X_DIM_MAX + 1, (), generator=g))
    u = float(torch.rand((), generator=g))
    n = int(round(math.exp(math.log(n_min) + u * (math.log(n_max) - math.log(n_min)))))
    b = max(2, min(32, tokens // (n + queries)))
    theta, x = sample_problems(b, n + queries, dim, x_dim, g)
    return theta, x, n


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def validation_loss(net: InContextNet, seed: int, batches: int, tokens: int,
                    queries: int, device: str) -> float:
    """Mean loss on fixed problems (steps ``-1 .. -batches`` of the seed: never trained on)."""
    net.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(batches):
            theta, x, n = step_batch(seed + 7919, i, tokens, queries)
            total += float(pretrain_loss(net, theta.to(device), x.to(device), n))
    net.train()
    return total / batches


def train(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    device = args.device
    torch.manual_seed(args.seed)
    config = {**NET_DEFAULTS, **json.loads(args.net or "{}")}
    net = InContextNet(config).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    start, log = 0, []
    rewarm_from = None  # a run started from a weights file re-warms its fresh optimizer
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck["config"] != config:
            raise SystemExit(f"{ckpt_path} was written with network config {ck['config']}, not "
                             f"{config}; use another --out or the same --net.")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, log = int(ck["step"]), list(ck["log"])
        rewarm_from = ck.get("rewarm_from")
        print(f"resumed at step {start}", flush=True)
    elif args.init_from:  # continue from a weights file (no optimizer state in it)
        payload = torch.load(args.init_from, map_location=device, weights_only=True)
        meta = payload["meta"]
        if meta["config"] != config:
            raise SystemExit(f"{args.init_from} has network config {meta['config']}, not "
                             f"{config}; pass the same --net.")
        net.load_state_dict(payload["state_dict"])
        start, log = int(meta["steps"]), list(meta.get("loss_log") or [])
        rewarm_from = start
        print(f"continuing from {args.init_from} at step {start} (fresh optimizer state, "
              f"learning rate re-warmed over {args.rewarmup} steps)", flush=True)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"network: {n_params:,} parameters; steps {start}..{args.steps}; seed {args.seed}; "
          f"device {device}; threads {torch.get_num_threads()}", flush=True)
    t0 = time.time()
    last_ckpt = t0
    run_losses: list[float] = []
    warmup = max(1, int(0.03 * args.steps))

    def checkpoint(step: int) -> None:
        _save_atomic({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                      "config": config, "log": log, "args": vars(args),
                      "rewarm_from": rewarm_from, "prior": prior_description()}, ckpt_path)

    step = start
    end = args.steps if args.stop_at is None else min(args.steps, args.stop_at)
    while step < end:
        theta, x, n = step_batch(args.seed, step, args.tokens, args.queries,
                                 n_min=args.n_min)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup)
            if rewarm_from is not None and step - rewarm_from < args.rewarmup:
                group["lr"] *= (step - rewarm_from + 1) / args.rewarmup
        loss = pretrain_loss(net, theta.to(device), x.to(device), n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        run_losses.append(loss.item())
        step += 1
        if step % args.log_every == 0:
            mean = sum(run_losses) / len(run_losses)
            log.append({"step": step, "loss": mean, "seconds": time.time() - t0})
            print(f"step {step}: train loss {mean:.4f} ({time.time() - t0:.0f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
            run_losses = []
        elapsed_min = (time.time() - t0) / 60
        over = args.max_minutes is not None and elapsed_min > args.max_minutes
        if time.time() - last_ckpt > args.checkpoint_seconds or step == end or over:
            checkpoint(step)
            last_ckpt = time.time()
            if over:
                print(f"stopping after {elapsed_min:.1f} min at step {step} (--max-minutes); "
                      "rerun with --resume to continue", flush=True)
                break
    checkpoint(step)
    return {"step": step, "log": log}


def export(args: argparse.Namespace) -> None:
    """Write the weights file (float32 state_dict + config + provenance; weights-only)."""
    ck = torch.load(Path(args.out) / "checkpoint.pt", map_location="cpu", weights_only=True)
    net = InContextNet(ck["config"])
    net.load_state_dict(ck["model"])
    val = validation_loss(net, int(ck["args"]["seed"]), 8, ck["args"]["tokens"],
                          ck["args"]["queries"], "cpu")
    meta = {"format": "sbi-core-incontext-weights", "version": 1, "config": ck["config"],
            "steps": int(ck["step"]), "seed": int(ck["args"]["seed"]),
            "train_args": {k: v for k, v in ck["args"].items() if k not in ("resume", "export")},
            "prior": ck["prior"], "validation_loss": val,
            "final_train_loss": ck["log"][-1]["loss"] if ck["log"] else None,
            "loss_log": ck["log"][-20:], "note": args.note}
    path = Path(args.export)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic({"meta": meta, "state_dict": {k: v.float().contiguous()
                                               for k, v in net.state_dict().items()}}, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); validation loss {val:.4f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/incontext", help="checkpoint folder")
    p.add_argument("--steps", type=int, default=20_000, help="total optimizer steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tokens", type=int, default=6000, help="context+query pairs per step")
    p.add_argument("--queries", type=int, default=32, help="query pairs per problem")
    p.add_argument("--n-min", type=int, default=N_MIN,
                   help="smallest context size drawn (log-uniform in [n-min, 1000])")
    p.add_argument("--net", default=None, help="JSON overrides of the network config")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint-seconds", type=float, default=180.0)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="end the run (with a checkpoint) after this many minutes")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--stop-at", type=int, default=None,
                   help="end the run at this step (the learning-rate schedule still follows "
                        "--steps); reproduces a run that --max-minutes ended")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init-from", default=None,
                   help="start from a weights file (e.g. the shipped one) at its recorded step, "
                        "with a fresh optimizer; with --resume, OUT/checkpoint.pt wins if present")
    p.add_argument("--rewarmup", type=int, default=100,
                   help="with --init-from: linear learning-rate warm-up steps (fresh optimizer)")
    p.add_argument("--export", default=None,
                   help="write the weights file from the last checkpoint and exit")
    p.add_argument("--note", default=None,
                   help="with --export: free text stored in the provenance (e.g. the commands)")
    args = p.parse_args(argv)
    if args.export:
        export(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
