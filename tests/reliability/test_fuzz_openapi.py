"""Proof 4, fuzzing: schemathesis drives every operation of /openapi.json with generated
valid and invalid input (>= 1,000 cases, as the admin so writes reach their code): no 5xx,
and every response matches its documented status, content type and schema."""

from __future__ import annotations

import json
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from backend.families.service import FamilyCreate, create_family
from tests.conftest import ADMIN_TOKEN, OUTPUT
from tests.factories import make_artifact, make_layer, make_model

MIN_CASES = 1000
EXAMPLES = {GenerationMode.POSITIVE: 32, GenerationMode.NEGATIVE: 20}  # per operation
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def catalog(session, settings) -> None:  # type: ignore[no-untyped-def]
    from backend.storage import make_store

    m = make_model(session, "tiny")
    layer = make_layer(session, m, "blocks.1", units=8)
    make_artifact(session, make_store(settings), m, layer, 1)
    create_family(session, FamilyCreate(name="Stripes"))
    session.commit()


@pytest.mark.once  # minutes long: the first (SQLite) pass only
@pytest.mark.usefixtures("catalog")
def test_fuzz_every_operation(client) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    per_operation: dict[str, int] = {}
    t0 = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        for mode, examples in EXAMPLES.items():

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,  # the same cases every run
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case) -> None:  # type: ignore[no-untyped-def]
                label = case.operation.label
                per_operation[label] = per_operation.get(label, 0) + 1
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # no invalid input exists (an operation without parameters)
                assert mode is GenerationMode.NEGATIVE, op.label
    cases = sum(per_operation.values())
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "fuzz.json").write_text(
        json.dumps(
            {"cases": cases, "operations": len(per_operation), "seconds": time.monotonic() - t0}
        )
    )
    assert cases >= MIN_CASES, per_operation
