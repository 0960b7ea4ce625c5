"""An unknown field in a request body is a 422 that names it and lists the endpoint's fields,
never silently ignored (e.g. ``"num_samples": 100`` used to return the default 1,000 draws)."""

from __future__ import annotations

import warnings

import pytest
from fastapi.testclient import TestClient
from serve_helpers import tiny_posterior

from sbi_core.server import create_app


@pytest.fixture(scope="module")
def client() -> TestClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = tiny_posterior()
    return TestClient(create_app({"m": post}))


@pytest.mark.parametrize("endpoint,body,field,listed", [
    ("sample", {"x": [0.0, 0.0], "num_samples": 100}, "num_samples", "x, xs, n, seed, mcmc"),
    ("summary", {"x": [0.0, 0.0], "samples": 10}, "samples", "quantiles"),
    ("log_prob", {"x": [0.0, 0.0], "theta": [[0.0, 0.0]], "normalize": True}, "normalize",
     "theta"),
    ("map", {"x": [0.0, 0.0], "iterations": 5}, "iterations", "num_init, steps"),
])
def test_unknown_field_is_named(client, endpoint, body, field, listed):
    r = client.post(f"/api/models/m/{endpoint}", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, str) and repr(field) in detail and listed in detail


def test_known_fields_still_work_and_other_errors_keep_their_detail(client):
    r = client.post("/api/models/m/sample", json={"x": [0.0, 0.0], "n": 7, "seed": 0})
    assert r.status_code == 200 and len(r.json()["samples"]) == 7
    r = client.post("/api/models/m/sample", json={"x": [0.0, 0.0], "n": "many"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "n"]  # pydantic's own message, unchanged
    r = client.post("/api/models/m/sample", json={"x": [0.0, 0.0], "mcmc": {"chains": 3}})
    assert r.status_code == 422  # nested unknown field: forbidden too (MCMCOptions)
