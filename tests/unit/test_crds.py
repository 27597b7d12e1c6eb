"""The CRDs come from the models: no drift, structural, and a description everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from breaker.api.crd import DIRECTORIES, RESOURCES, Resource, render, structural
from breaker_tooling.localcluster.paths import repo_root


@pytest.mark.parametrize("directory", DIRECTORIES)
@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_committed_crd_matches_the_models(resource: Resource, directory: str) -> None:
    path = repo_root() / directory / f"{resource.name}.yaml"
    assert path.read_text() == render(resource), f"{path} is stale: run `breaker crds`"


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_every_field_is_described_and_structural(resource: Resource) -> None:
    schema = yaml.safe_load(render(resource))["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema, resource.kind):
        if path.endswith(".metadata"):
            continue
        assert "type" in node, f"{path} has no type"
        assert not {"$ref", "anyOf", "allOf", "oneOf", "title", "$defs"} & set(node), path
        assert node.get("additionalProperties") is not False, path
        if not path.endswith("[]") and not path.endswith("{}"):
            assert node.get("description"), f"{path} has no description"


def test_optional_becomes_nullable_and_open_maps_keep_unknown_fields() -> None:
    defs = {"Thing": {"type": "object", "title": "Thing", "properties": {"a": {"type": "string"}}}}
    node = structural(
        {
            "anyOf": [{"$ref": "#/$defs/Thing"}, {"type": "null"}],
            "default": None,
            "description": "d",
        },
        defs,
    )
    assert node == {
        "type": "object",
        "description": "d",
        "nullable": True,
        "properties": {"a": {"type": "string"}},
    }
    assert structural({"type": "object", "additionalProperties": True}, {}) == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }


def test_printer_columns_answer_the_first_question() -> None:
    columns = {r.kind: [c.name for c in r.columns if not c.priority] for r in RESOURCES}
    assert columns["TrainingJob"] == ["GPUs", "State", "Position", "Nodes", "Age"]
    assert columns["Breaker"] == [
        "Target",
        "State",
        "Containment",
        "Signals",
        "Trips",
        "Last Trip",
        "Reason",
        "Age",
    ]
