"""Property-based fuzzing of the REST API from its OpenAPI spec (schemathesis): no 5xx ever."""

from __future__ import annotations

import warnings

import schemathesis
from hypothesis import HealthCheck, given, settings
from serve_helpers import one_thread, tiny_posterior

from sbi_core.server import create_app

EXAMPLES_PER_OPERATION = 50


def test_no_server_errors_on_generated_requests():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = tiny_posterior()
    # small limits keep each accepted request cheap; the validation paths are the same
    app = create_app({"moons": post}, max_samples=300, max_body_bytes=50_000, max_map_steps=20)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    seen: dict[str, set[int]] = {}
    with one_thread():
        for op in operations:
            label = f"{op.method.upper()} {op.path}"
            _fuzz(op, label, seen.setdefault(label, set()))()
    # the generated requests reached the posterior, not only the validators
    for op in ("sample", "summary"):
        assert 200 in seen[f"POST /api/models/{{name}}/{op}"], seen
    assert any(422 in s for s in seen.values())


def _fuzz(op, label: str, statuses: set[int]):
    calls = [0]

    @given(case=op.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        if case.path_parameters and "name" in case.path_parameters:
            # mostly the served model, so requests reach the posterior; sometimes unknown names
            if len(case.path_parameters["name"]) % 3:
                case.path_parameters["name"] = "moons"
        calls[0] += 1
        if isinstance(case.body, dict) and calls[0] % 2:
            # half the cases keep a valid observation, so the other generated fields (n, seed,
            # theta, quantiles, num_init, steps) reach the posterior instead of the validator
            case.body.pop("xs", None)
            case.body.pop("mcmc", None)  # the NPE model takes no MCMC options (422)
            case.body["x"] = [0.0, 0.1]
        response = case.call()
        statuses.add(response.status_code)
        assert response.status_code < 500, (label, case.body, response.text)

    return check
