"""API.md is the contract clients read: its generated reference must be what the app serves as /openapi.json."""

from __future__ import annotations

from pathlib import Path

import pytest
from http_helpers import auth

from deployments.http import contract


API_MD = Path(__file__).resolve().parents[3] / "API.md"
REGENERATE = "run `python -m deployments.http.contract --write API.md` and commit API.md"


@pytest.fixture(scope="module")
def served_schema(surface) -> dict:
    client, _ = surface
    answer = client.get("/openapi.json", headers=auth(surface))
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_api_md_reference_is_the_served_schema(served_schema):
    doc = API_MD.read_text()
    assert contract.generated_section(doc) == contract.render(served_schema), f"API.md is stale: {REGENERATE}"


def test_every_served_route_is_in_api_md(served_schema):
    doc = API_MD.read_text()
    hand_written = doc[:doc.index(contract.BEGIN)]
    missing = [f"{method.upper()} {path}" for path, methods in served_schema["paths"].items() for method in methods
               if f"`{method.upper()} {path}`" not in doc]
    assert not missing, f"not in API.md's reference: {missing}; {REGENERATE}"
    # The hand-written part says what each route answers; a new route needs a line there too.
    unexplained = [path for path in served_schema["paths"] if path not in hand_written]
    assert not unexplained, f"routes API.md's hand-written part does not describe: {unexplained}"


def test_the_script_describes_the_app_it_serves(served_schema):
    # `python -m deployments.http.contract` builds the app without models or keys; it must see the same routes.
    assert contract.render(contract.app_schema()) == contract.render(served_schema)
