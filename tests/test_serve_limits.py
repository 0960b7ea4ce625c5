"""Bounded work per request (413 naming the limit and its flag), a bounded worker pool that
answers 503 instead of starving requests, a per-request time budget, the limits as
create_app arguments and `sbi-core serve` flags, and MCMC diagnostics in responses."""

from __future__ import annotations

import threading
import time
import warnings

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import square_posterior, tiny_posterior

from sbi_core import save
from sbi_core.cli.main import main
from sbi_core.server import BackgroundServer, compute, create_app
from sbi_core.server.background import free_port
from sbi_core.server.rng_lock import RNGLock

X = [0.0, 0.1]
# the square model's two modes make run_mcmc warn in the server log, as it should
pytestmark = pytest.mark.filterwarnings("ignore:MCMC chains have not mixed")


@pytest.fixture(scope="module")
def post():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_posterior()


@pytest.fixture(scope="module")
def square():
    # few warm-up steps keep each request at a few tens of milliseconds
    return square_posterior(warmup_steps=20)


@pytest.fixture(scope="module")
def small(post, square):
    """Small limits; 'moons' leaks out of its box prior (log_prob normalizes with draws)."""
    return TestClient(create_app({"moons": post, "square": square}, max_samples=100,
                                 max_batch=300, max_observations=5, max_map_steps=10,
                                 max_mcmc_transitions=5000))


def _slow(post, monkeypatch, seconds: float) -> None:
    """Make every sampling call of ``post`` take at least ``seconds``."""
    original = post._sample_batched

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    monkeypatch.setattr(post, "_sample_batched", slow)


@pytest.mark.parametrize("path, body, words", [
    ("sample", {"x": X, "n": 101}, ["n (samples per observation) is 101", "--max-samples"]),
    ("sample", {"xs": [X] * 6, "n": 10}, ["number of observations (B) is 6", "--max-observations"]),
    ("sample", {"xs": [X] * 4, "n": 100}, ["n * number of observations is 400", "--max-batch"]),
    ("summary", {"xs": [X] * 4, "n": 100}, ["n * number of observations is 400", "--max-batch"]),
    ("summary", {"x": X, "n": 101}, ["--max-samples"]),
    ("log_prob", {"x": X, "theta": [[0.0, 0.0]]},
     ["draws 10,000 samples per observation to normalize", "--max-batch"]),
    ("log_prob", {"xs": [X] * 6, "theta": [[[0.0, 0.0]] * 6]}, ["--max-observations"]),
    ("map", {"x": X, "steps": 11}, ["steps (MAP gradient steps) is 11", "--max-map-steps"]),
    ("map", {"x": X, "num_init": 295, "steps": 10}, ["MAP work", "is 305", "--max-batch"]),
])
def test_each_limit_answers_413_naming_the_flag(small, path, body, words):
    r = small.post(f"/api/models/moons/{path}", json=body)
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert all(w in detail for w in words), detail
    assert "create_app(" in detail and "per request" in detail


def test_requests_at_the_limits_are_served(small):
    assert small.post("/api/models/moons/sample", json={"x": X, "n": 100}).status_code == 200
    r = small.post("/api/models/moons/sample", json={"xs": [X] * 3, "n": 100})
    assert r.status_code == 200 and torch.tensor(r.json()["samples"]).shape == (3, 100, 2)
    r = small.post("/api/models/moons/map", json={"x": X, "num_init": 290, "steps": 10})
    assert r.status_code == 200 and len(r.json()["map"]) == 2


def test_log_prob_rows_and_iid_trials_count(square):
    client = TestClient(create_app({"square": square}, max_batch=100))
    ok = client.post("/api/models/square/log_prob",
                     json={"x": [[0.0, 0.1]] * 10, "theta": [[0.1, 0.1]] * 10})
    assert ok.status_code == 200 and len(ok.json()["log_prob"]) == 10
    r = client.post("/api/models/square/log_prob",
                    json={"x": [[0.0, 0.1]] * 10, "theta": [[0.1, 0.1]] * 11})
    assert r.status_code == 413
    assert "theta rows * observations * iid trials) is 110" in r.json()["detail"]


def test_mcmc_transitions_are_bounded(small):
    r = small.post("/api/models/square/sample", json={"x": X, "n": 100})
    assert r.status_code == 200  # (20 + 5) steps * 20 chains = 500 transitions
    r = small.post("/api/models/square/sample",
                   json={"x": X, "n": 100, "mcmc": {"num_chains": 100, "warmup_steps": 100}})
    assert r.status_code == 413, r.text
    assert "MCMC work" in r.json()["detail"] and "is 10,100" in r.json()["detail"]
    assert "--max-mcmc-transitions" in r.json()["detail"]
    r = small.post("/api/models/square/sample", json={"x": X, "mcmc": {"chains": 3}})
    assert r.status_code == 422 and "chains" in r.text
    r = small.post("/api/models/moons/sample", json={"x": X, "mcmc": {"num_chains": 3}})
    assert r.status_code == 422 and "samples directly, without MCMC" in r.json()["detail"]


def test_the_reported_attack_is_refused_quickly(post):
    """Issue 15: 50,000 observations with n=2 (650 KB, inside the body limit) took ~58 s."""
    client = TestClient(create_app({"moons": post}))
    xs = [[0.0123, 0.1234]] * 50_000
    start = time.perf_counter()
    r = client.post("/api/models/moons/sample", json={"xs": xs, "n": 2})
    seconds = time.perf_counter() - start
    assert r.status_code == 413 and "--max-observations" in r.json()["detail"]
    assert seconds < 5.0, seconds


def test_limits_are_listed_and_validated(post):
    app = create_app({"m": post}, max_batch=7, max_observations=3, max_concurrency=2,
                     request_timeout=5, queue_wait=0.5, max_mcmc_transitions=99)
    limits = TestClient(app).get("/api/models").json()["limits"]
    assert limits == {"max_samples": 100_000, "max_batch": 7, "max_observations": 3,
                      "max_map_steps": 1000, "max_mcmc_transitions": 99, "max_concurrency": 2,
                      "request_timeout": 5, "queue_wait": 0.5}
    assert TestClient(app).get("/api/models/m").json()["limits"]["max_batch"] == 7
    with pytest.raises(ValueError, match="max_concurrency .*--max-concurrency.* positive integer"):
        create_app({"m": post}, max_concurrency=0)
    with pytest.raises(ValueError, match="--request-timeout"):
        create_app({"m": post}, request_timeout=float("inf"))


def test_serve_flags_reach_the_app(post, tmp_path, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app))
    model = save(post, tmp_path / "m.pt")
    assert main(["serve", str(model), "--port", str(free_port()), "--max-batch", "123",
                 "--max-observations", "4", "--max-concurrency", "3", "--request-timeout",
                 "7.5", "--queue-wait", "0.25", "--max-mcmc-transitions", "5000",
                 "--max-map-steps", "9", "--max-samples", "50"]) == 0
    limits = seen["app"].state.limits
    assert (limits.max_batch, limits.max_observations, limits.max_concurrency) == (123, 4, 3)
    assert (limits.request_timeout, limits.queue_wait) == (7.5, 0.25)
    assert (limits.max_mcmc_transitions, limits.max_map_steps, limits.max_samples) == \
        (5000, 9, 50)
    assert seen["app"].state.workers.max_concurrency == 3


def test_serve_flag_defaults_are_the_create_app_defaults():
    from sbi_core.cli.main import build_parser
    from sbi_core.server.limits import FLAGS, Limits

    args = build_parser().parse_args(["serve", "m.pt"])
    defaults = Limits().to_dict()
    assert {name: getattr(args, name) for name in FLAGS} == defaults
    app = create_app({"m": square_posterior()})
    assert app.state.limits.to_dict() == defaults


def test_bad_serve_flags_fail_before_loading(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing.pt"), "--max-concurrency", "0"]) == 2
    assert "--max-concurrency" in capsys.readouterr().err


HEAVY = {"xs": [X, X], "n": 6000}  # 12,000 rows: more than one batch, so the heavy lane


def test_busy_server_answers_503_quickly_instead_of_queueing(post, square, monkeypatch):
    """Concurrency 1 and a slow heavy request in flight: another heavy request gets 503 within
    the queue wait; a small request (light lane) and the model listing are still answered;
    after the slow one the next heavy request is served."""
    # two batches of one observation, 5 s each: the bounds below are far from what an idle
    # machine needs (~0.3 s, ~0.01 s, ~0.1 s) but leave room for a loaded CI runner, and
    # all of it happens while the slow request still runs
    _slow(post, monkeypatch, 5.0)
    app = create_app({"m": post, "square": square}, max_concurrency=1, queue_wait=0.3)
    with BackgroundServer(app) as srv:
        slow: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: slow.append(
            httpx.post(srv.url + "/api/models/m/sample", json=HEAVY, timeout=30)))
        worker.start()
        deadline = time.monotonic() + 10
        while app.state.workers.busy() < 1:
            assert time.monotonic() < deadline, "the slow request never started"
            time.sleep(0.01)
        start = time.perf_counter()
        r = httpx.post(srv.url + "/api/models/m/sample", json=HEAVY, timeout=30)
        waited = time.perf_counter() - start
        assert r.status_code == 503 and "busy" in r.json()["detail"]
        assert "--max-concurrency" in r.json()["detail"] and r.headers["retry-after"] == "1"
        assert 0.25 < waited < 2.5, waited
        assert app.state.workers.busy() == 1  # answered while the slow request still ran
        start = time.perf_counter()
        assert httpx.get(srv.url + "/api/models", timeout=30).status_code == 200
        assert time.perf_counter() - start < 2.5  # the event loop is free
        start = time.perf_counter()
        r = httpx.post(srv.url + "/api/models/square/sample", json={"x": X, "n": 100},
                       timeout=30)
        assert r.status_code == 200 and time.perf_counter() - start < 4.0
        assert app.state.workers.busy() == 1  # beside the slow one, in the light lane
        worker.join()
        assert slow[0].status_code == 200
        assert torch.tensor(slow[0].json()["samples"]).shape == (2, 6000, 2)
        assert httpx.post(srv.url + "/api/models/m/sample", json=HEAVY,
                          timeout=30).status_code == 200


def test_small_requests_complete_beside_a_slow_one(post, square, monkeypatch):
    # The slow request takes 10 s; the two small ones must not wait for it (they take well
    # under a second on an idle machine; the bound leaves room for a loaded CI runner), and
    # it must still be running when they are answered.
    _slow(post, monkeypatch, 10.0)
    app = create_app({"m": post, "square": square}, max_concurrency=2, queue_wait=0.3)
    with BackgroundServer(app) as srv:
        worker = threading.Thread(target=lambda: httpx.post(
            srv.url + "/api/models/m/sample", json={"x": X, "n": 10}, timeout=30))
        worker.start()
        deadline = time.monotonic() + 10
        while app.state.light_workers.busy() < 1:
            assert time.monotonic() < deadline, "the slow request never started"
            time.sleep(0.01)
        start = time.perf_counter()
        for path, body in (("log_prob", {"x": X, "theta": [[0.1, 0.1]]}),  # no RNG, no lock
                           ("sample", {"x": X, "n": 40})):  # unseeded: shares the RNG lock
            r = httpx.post(srv.url + f"/api/models/square/{path}", json=body, timeout=30)
            assert r.status_code == 200, r.text
        assert time.perf_counter() - start < 8.0
        assert app.state.light_workers.busy() == 1  # the slow request was still running
        worker.join()


def test_seeded_request_behind_a_slow_unseeded_one_ends_within_its_budget(post, square,
                                                                          monkeypatch):
    """Seeded requests reset torch's global generator, so they wait for the unseeded ones in
    flight, but never past their time budget."""
    _slow(post, monkeypatch, 2.5)
    app = create_app({"m": post, "square": square}, max_concurrency=2, request_timeout=0.6)
    with BackgroundServer(app) as srv:
        worker = threading.Thread(target=lambda: httpx.post(
            srv.url + "/api/models/m/sample", json={"x": X, "n": 10}, timeout=30))
        worker.start()
        while app.state.light_workers.busy() < 1:
            time.sleep(0.01)
        start = time.perf_counter()
        r = httpx.post(srv.url + "/api/models/square/sample", json={"x": X, "n": 40, "seed": 0},
                       timeout=30)
        assert r.status_code == 503 and "--request-timeout" in r.json()["detail"]
        assert time.perf_counter() - start < 1.5
        worker.join()


def test_time_budget_stops_a_request_between_batches(post, monkeypatch):
    # 5 observations * n = 10,000 run in 5 batches of one observation; each takes 0.4 s
    _slow(post, monkeypatch, 0.4)
    app = create_app({"m": post}, request_timeout=0.6)
    calls = []
    original = post._sample_batched
    monkeypatch.setattr(post, "_sample_batched",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    client = TestClient(app)
    start = time.perf_counter()
    r = client.post("/api/models/m/sample", json={"xs": [X] * 5, "n": 10_000})
    assert r.status_code == 503 and "--request-timeout" in r.json()["detail"]
    assert "time budget of 0.6 s" in r.json()["detail"]
    assert time.perf_counter() - start < 1.6
    assert len(calls) == 2  # the third batch never started


def test_time_budget_answers_on_time_while_one_call_overruns(post, monkeypatch):
    _slow(post, monkeypatch, 1.6)
    app = create_app({"m": post}, request_timeout=0.4)
    start = time.perf_counter()
    r = TestClient(app).post("/api/models/m/sample", json={"x": X, "n": 10})
    assert r.status_code == 503 and "--request-timeout" in r.json()["detail"]
    assert time.perf_counter() - start < 1.4  # 0.4 s budget + 0.5 s grace, not 1.6 s
    assert app.state.light_workers.busy() == 1  # the call still runs, holding its worker
    deadline = time.monotonic() + 10
    while app.state.light_workers.busy():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_seeded_requests_over_several_batches_are_reproducible(post):
    client = TestClient(create_app({"m": post}))
    body = {"xs": [X, [0.1, 0.0], [-0.1, 0.2]], "n": 4000, "seed": 5}  # 2 batches
    first = client.post("/api/models/m/sample", json=body).json()["samples"]
    again = client.post("/api/models/m/sample", json=body).json()["samples"]
    assert torch.tensor(first).shape == (3, 4000, 2) and first == again
    other = client.post("/api/models/m/sample", json={**body, "seed": 6}).json()["samples"]
    assert other != first


def test_rng_lock_wait_is_bounded():
    lock = RNGLock()
    got: list[str] = []
    with lock.hold(exclusive=True):
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            with lock.hold(exclusive=True, timeout=0.1):
                pass
        assert time.perf_counter() - start < 1.0
        with pytest.raises(TimeoutError):
            with lock.hold(exclusive=False, timeout=0.1):
                pass
    # the timed-out writer no longer holds readers back
    reader = threading.Thread(target=lambda: lock.hold(False, 1.0).__enter__() or got.append("r"))
    reader.start()
    reader.join(2.0)
    assert got == ["r"]


# ---------------------------------------------------------------------- MCMC diagnostics
def test_mcmc_response_warns_when_chains_do_not_mix(small):
    """Two separated modes (theta_1 = ±0.7): chains started in both cannot cross."""
    r = small.post("/api/models/square/sample", json={"x": [0.49, 0.1], "n": 100, "seed": 0})
    assert r.status_code == 200
    data = r.json()
    mcmc = data["mcmc"]
    assert mcmc["method"] == "slice" and mcmc["num_chains"] == 20
    assert mcmc["max_rhat"] > 2.0 and len(mcmc["rhat"]) == 2 and len(mcmc["ess"]) == 2
    assert mcmc["max_rhat"] == pytest.approx(max(mcmc["rhat"]))
    assert any("have not mixed" in w and f"{mcmc['max_rhat']:.3g}" in w
               for w in data["warnings"]), data["warnings"]
    summary = small.post("/api/models/square/summary",
                         json={"x": [0.49, 0.1], "n": 100, "seed": 0}).json()
    assert summary["mcmc"]["max_rhat"] > 2.0 and summary["warnings"]


def test_mcmc_response_without_warnings_when_chains_mix(small):
    r = small.post("/api/models/square/sample", json={"x": [0.0, 0.1], "n": 100, "seed": 0})
    data = r.json()
    assert data["mcmc"]["max_rhat"] < 1.1 and data["mcmc"]["min_ess"] > 10
    assert data["warnings"] == []
    npe = small.post("/api/models/moons/sample", json={"x": X, "n": 10}).json()
    assert npe["mcmc"] is None and npe["warnings"] == []


def test_mcmc_too_few_draws_per_chain_is_a_warning(small):
    r = small.post("/api/models/square/sample", json={"x": [0.0, 0.1], "n": 30})
    data = r.json()  # 20 chains keep 2 draws each: R-hat needs 4
    assert data["mcmc"]["max_rhat"] is None and data["mcmc"]["rhat"] == [None, None]
    assert any("could not be checked" in w and "n = 80" in w for w in data["warnings"])


def test_mcmc_diagnostics_of_batched_requests_cover_every_batch(small, monkeypatch):
    monkeypatch.setattr(compute, "CHUNK_MCMC_TRANSITIONS", 1)  # one observation per batch
    xs = [[0.49, 0.1], [0.0, 0.1], [0.0, -0.2]]
    r = small.post("/api/models/square/sample", json={"xs": xs, "n": 100, "seed": 1})
    data = r.json()
    rhat = torch.tensor(data["mcmc"]["rhat"])
    assert rhat.shape == (3, 2) and torch.tensor(data["samples"]).shape == (3, 100, 2)
    assert float(rhat[0].max()) > 2.0 and float(rhat[1:].max()) < 1.1
    assert data["mcmc"]["max_rhat"] == pytest.approx(float(rhat.max()))
    assert data["warnings"]


def test_mcmc_options_per_request(small):
    r = small.post("/api/models/square/sample",
                   json={"x": [0.0, 0.1], "n": 100, "seed": 0,
                         "mcmc": {"num_chains": 4, "warmup_steps": 5, "thin": 1}})
    mcmc = r.json()["mcmc"]
    assert (mcmc["num_chains"], mcmc["warmup_steps"], mcmc["thin"]) == (4, 5, 1)


def test_light_lane_holds_at_most_one_batch(post, square):
    from sbi_core.server.schemas import LogProbRequest, MapRequest, SampleRequest

    light = compute.is_light
    assert light(post, "sample", SampleRequest(x=X), 10_000)
    assert not light(post, "sample", SampleRequest(x=X), 10_001)
    assert not light(post, "sample", SampleRequest(xs=[X] * 2), 6000)
    # moons normalizes log_prob with 10,000 draws per observation: one observation is light
    assert light(post, "log_prob", LogProbRequest(x=X, theta=[[0, 0]] * 100))
    assert not light(post, "log_prob", LogProbRequest(xs=[X] * 2, theta=[[[0, 0]] * 2]))
    assert light(post, "map", MapRequest(x=X, num_init=1000, steps=100))
    assert not light(post, "map", MapRequest(xs=[X] * 10, num_init=1000, steps=100))
    # MCMC (one batch: 50,000 transitions): n=1000 with 20 chains is (warm-up + 50) steps,
    # each counting at least 100 transitions
    assert light(square, "sample", SampleRequest(x=X), 1000)
    assert light(square, "sample", SampleRequest(x=X, mcmc={"warmup_steps": 450}), 1000)
    assert not light(square, "sample", SampleRequest(x=X, mcmc={"warmup_steps": 451}), 1000)
    sets = [[X] * 30] * 2  # 2 sets of 30 iid trials: 20 chains * 60 rows per step
    assert not light(square, "sample", SampleRequest(xs=sets), 1000)
    assert light(square, "sample", SampleRequest(xs=[[X] * 2]), 1000)


def test_serve_notes_an_unused_problem(post, tmp_path, monkeypatch, capsys):
    """--problem is only for a model with a user-written prior class; given for a model whose
    prior rebuilds from the file, the server says it is not used (it was silently ignored)."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    model = save(post, tmp_path / "m.pt")
    other = tmp_path / "other.py"
    other.write_text("import simulators\n\ndef make():\n"
                     "    return simulators.get_problem('two_moons')\n")
    assert main(["serve", str(model), "--port", str(free_port()), "--problem",
                 f"{other}:make"]) == 0
    err = capsys.readouterr().err
    assert f"--problem {other}:make is not used for {model}" in err
    assert main(["serve", str(model), "--port", str(free_port())]) == 0
    assert "is not used" not in capsys.readouterr().err
