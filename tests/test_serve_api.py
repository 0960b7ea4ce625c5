"""REST API of `sbi-core serve`: results match the in-process posterior; bad input gets 4xx."""

from __future__ import annotations

import json
import threading
import warnings

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import tiny_posterior

from sbi_core.posterior import SamplingError
from sbi_core.server import BackgroundServer, create_app

X = [0.0, 0.1]


@pytest.fixture(scope="module")
def post():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_posterior()


@pytest.fixture(scope="module")
def client(post):
    return TestClient(create_app({"moons": post}, max_samples=5000, max_batch=50_000,
                                 max_body_bytes=20_000))


def test_model_listing_and_info(client, post):
    listing = client.get("/api/models").json()
    assert listing["models"][0]["name"] == "moons" and listing["max_samples"] == 5000
    info = client.get("/api/models/moons").json()
    assert info["problem"] == "two_moons" and info["param_names"] == ["theta_1", "theta_2"]
    assert info["prior"]["low"] == [-1.0, -1.0] and info["prior"]["high"] == [1.0, 1.0]
    assert info["x_shape"] == [2]
    assert info["x_range"]["min"] == pytest.approx(post.estimator.x_min.tolist())
    assert info["x_range"]["max"] == pytest.approx(post.estimator.x_max.tolist())
    assert info["history"]["epochs"] == 3 and info["history"]["num_train"] == 540
    assert info["diagnostics"] == {}
    assert client.get("/openapi.json").json()["paths"]["/api/models/{name}/sample"]
    assert "pairplot" in client.get("/").text
    assert client.get("/static/explorer.js").status_code == 200


def test_api_docs_are_served_without_the_internet(client):
    """/docs loads Swagger UI from files installed with the serve extra, not from a CDN."""
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/api-docs-assets/swagger-ui-bundle.js" in page.text and "/openapi.json" in page.text
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "/api-docs-assets/redoc.standalone.js" in redoc.text
    for html in (page.text, redoc.text):
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = client.get(f"/api-docs-assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000


def test_diagnostics_card_is_served(post):
    post.diagnostics = {"sbc": {"ks_pvalue": [0.4, 0.7]}, "c2st": float("nan")}
    try:
        info = TestClient(create_app({"m": post})).get("/api/models/m").json()
    finally:
        post.diagnostics = {}
    assert info["diagnostics"] == {"sbc": {"ks_pvalue": [0.4, 0.7]}, "c2st": None}


def test_sample_matches_in_process_posterior(client, post):
    r = client.post("/api/models/moons/sample", json={"x": X, "n": 200, "seed": 3})
    assert r.status_code == 200
    got = torch.tensor(r.json()["samples"])
    want = post.sample((200,), torch.tensor(X), seed=3)
    assert got.shape == (200, 2)
    assert torch.allclose(got, want, atol=1e-5)
    assert bool(((got >= -1) & (got <= 1)).all())
    again = client.post("/api/models/moons/sample", json={"x": X, "n": 200, "seed": 3}).json()
    assert again["samples"] == r.json()["samples"]


def test_sample_many_observations(client, post):
    xs = [[0.0, 0.1], [-0.3, 0.4], [0.2, -0.5]]
    r = client.post("/api/models/moons/sample", json={"xs": xs, "n": 50, "seed": 1})
    got = torch.tensor(r.json()["samples"])
    assert got.shape == (3, 50, 2)
    want = post.sample_batched((50,), torch.tensor(xs), seed=1).transpose(0, 1)
    assert torch.allclose(got, want, atol=1e-5)


def test_log_prob_map_and_summary(client, post):
    theta = [[0.0, 0.0], [0.5, -0.2], [2.0, 0.0]]
    r = client.post("/api/models/moons/log_prob", json={"x": X, "theta": theta}).json()
    want = post.log_prob(torch.tensor(theta), torch.tensor(X))
    assert r["log_prob"][:2] == pytest.approx(want[:2].tolist(), abs=1e-4)
    assert r["log_prob"][2] is None  # outside the prior support: -inf is sent as null
    rb = client.post("/api/models/moons/log_prob",
                     json={"xs": [X, X], "theta": [[[0, 0], [0, 0]]]}).json()
    assert len(rb["log_prob"]) == 1 and len(rb["log_prob"][0]) == 2
    m = client.post("/api/models/moons/map", json={"x": X, "num_init": 200, "steps": 5}).json()
    assert len(m["map"]) == 2 and all(-1 <= v <= 1 for v in m["map"])
    s = client.post("/api/models/moons/summary",
                    json={"x": X, "n": 2000, "seed": 0, "quantiles": [0.1, 0.5, 0.9]}).json()
    draws = post.sample((2000,), torch.tensor(X), seed=0)
    assert s["mean"] == pytest.approx(draws.mean(0).tolist(), abs=1e-5)
    assert s["std"] == pytest.approx(draws.std(0).tolist(), abs=1e-5)
    assert s["quantiles"]["0.5"] == pytest.approx(draws.median(0).values.tolist(), abs=2e-3)
    assert all(lo <= hi for lo, hi in zip(s["quantiles"]["0.1"], s["quantiles"]["0.9"]))


@pytest.mark.parametrize("body, status, words", [
    ({"x": [0.0, 0.1, 0.2]}, 422, "shape (2,)"),
    ({"x": [0.0, "nan"]}, 422, "NaN or inf"),
    ({"x": [0.0, None]}, 422, "NaN or inf"),
    ({"x": ["-Infinity", 0.0]}, 422, "NaN or inf"),
    ({"x": [0.0, "abc"]}, 422, "not a number"),
    ({"x": [[0.0], [1.0, 2.0]]}, 422, "ragged"),
    ({"x": [0.0, True]}, 422, "boolean"),
    ({"x": [10**400, 0.0]}, 422, "NaN or inf"),
    ({"x": [0.0, {"a": 1}]}, 422, "expected a number"),
    ({"x": X, "n": 5001}, 413, "allows at most 5,000 per request (max_samples)"),
    ({"xs": [X] * 11, "n": 5000}, 413, "n * number of observations is 55,000"),
    ({"x": X, "n": 0}, 422, "ask for at least 1"),
    ({}, 422, "exactly one of 'x'"),
    ({"x": X, "xs": [X]}, 422, "exactly one of 'x'"),
    ({"x": X, "seed": -1}, 422, "greater than or equal to 0"),
    ({"x": [5.0, 5.0]}, 422, "outside the range of the training simulations"),
])
def test_bad_sample_requests_get_clear_4xx(client, body, status, words):
    r = client.post("/api/models/moons/sample", json=body)
    assert r.status_code == status, r.text
    assert words in json.dumps(r.json()["detail"])


def test_other_bad_requests(client):
    r = client.post("/api/models/nope/sample", json={"x": X})
    assert r.status_code == 404 and "No model named 'nope'" in r.json()["detail"]
    r = client.post("/api/models/moons/log_prob", json={"x": X, "theta": [[0.0, 0.0, 0.0]]})
    assert r.status_code == 422 and "expected (N, 2)" in r.json()["detail"]
    r = client.post("/api/models/moons/log_prob", json={"x": X, "theta": [[0.0, "inf"]]})
    assert r.status_code == 422 and "NaN or inf" in r.json()["detail"]
    r = client.post("/api/models/moons/summary", json={"x": X, "quantiles": [1.5]})
    assert r.status_code == 422 and "between 0 and 1" in r.json()["detail"]
    r = client.post("/api/models/moons/map", json={"x": X, "steps": 10_000})
    assert r.status_code == 413 and "--max-map-steps" in r.json()["detail"]
    r = client.post("/api/models/moons/sample", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/api/models/moons/sample", content=b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                    headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    r = client.post("/api/models/moons/sample", json={"x": [0.0] * 20_000})
    assert r.status_code == 413 and "exceeds this server's limit" in r.json()["detail"]


def test_sampling_error_becomes_422(post, monkeypatch):
    def fail(*args, **kwargs):
        raise SamplingError("Only 0.01% of the posterior's samples fall inside the prior")

    monkeypatch.setattr(post, "_sample_batched", fail)
    r = TestClient(create_app({"m": post})).post("/api/models/m/sample", json={"x": X})
    assert r.status_code == 422 and "prior" in r.json()["detail"]


def test_streamed_body_over_limit_is_refused(post):
    with BackgroundServer(create_app({"m": post}, max_body_bytes=1000)) as srv:
        def chunks():
            yield b'{"x": ['
            for _ in range(300):
                yield b"0.0, "
            yield b"0.0]}"

        r = httpx.post(srv.url + "/api/models/m/sample", content=chunks(),
                       headers={"content-type": "application/json"})
        assert r.status_code == 413
        ok = httpx.post(srv.url + "/api/models/m/sample", json={"x": X, "n": 10})
        assert ok.status_code == 200 and len(ok.json()["samples"]) == 10


def test_concurrent_seeded_requests_stay_reproducible(client):
    body = {"x": X, "n": 300, "seed": 11}
    want = client.post("/api/models/moons/sample", json=body).json()["samples"]
    results: list = []

    def worker(k: int) -> None:
        seeded = k % 2 == 0
        r = client.post("/api/models/moons/sample", json=body if seeded else {"x": X, "n": 300})
        results.append((seeded, r.status_code, r.json()["samples"]))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(code == 200 for _, code, _ in results) and len(results) == 8
    assert all(s == want for seeded, _, s in results if seeded)
    assert any(s != want for seeded, _, s in results if not seeded)


def test_create_app_rejects_bad_arguments(post):
    with pytest.raises(ValueError, match="at least one model"):
        create_app({})
    with pytest.raises(TypeError, match="not an sbi_core Posterior"):
        create_app({"m": object()})


def test_several_models_and_an_unbounded_prior(post):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lg = tiny_posterior("linear_gaussian")
    client = TestClient(create_app({"moons": post, "lg": lg}))
    assert [m["name"] for m in client.get("/api/models").json()["models"]] == ["moons", "lg"]
    info = client.get("/api/models/lg").json()
    assert info["prior"]["low"] == [None, None] and info["prior"]["high"] == [None, None]
    assert info["prior"]["spec"]["type"] == lg.prior.spec["type"]
    r = client.post("/api/models/lg/sample", json={"x": [0.2, -0.1], "n": 100, "seed": 0})
    assert r.status_code == 200
    assert torch.allclose(torch.tensor(r.json()["samples"]),
                          lg.sample((100,), torch.tensor([0.2, -0.1]), seed=0), atol=1e-5)
