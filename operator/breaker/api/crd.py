"""CustomResourceDefinitions generated from the pydantic models.

pydantic writes JSON Schema (2020-12); Kubernetes wants a structural OpenAPI v3 schema.
The converter inlines ``$ref``s, turns ``X | None`` into ``nullable``, maps open maps to
``x-kubernetes-preserve-unknown-fields``, drops what the API server rejects (titles,
``additionalProperties: false``, examples, null defaults) and keeps the validations
(bounds, patterns, enums and the CEL rules the models carry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from breaker.api.breaker import Breaker
from breaker.api.common import ApiModel
from breaker.api.hold import BreakerHold
from breaker.api.policy import BreakerPolicy, ClusterBreakerPolicy
from breaker.api.trainingjob import MAX_NAME, TrainingJob
from breaker.constants import GROUP, VERSION

_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "nullable",
    "required",
}
_FORMATS = {"date-time"}


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One JSON Schema node, as a structural OpenAPI v3 schema node."""
    inlined = _inlined(schema, defs)
    if inlined is not None:
        return inlined
    out = _kept_keywords(schema)
    _add_children(schema, defs, out)
    if not out.get("required"):
        out.pop("required", None)
    return {key: out[key] for key in sorted(out, key=_key_order)}


def _inlined(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """A ``$ref``, a one-member ``allOf`` or an optional's ``anyOf``, inlined; else None."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[1]]
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        return structural({**target, **siblings}, defs)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        siblings = {k: v for k, v in schema.items() if k != "allOf"}
        return structural({**schema["allOf"][0], **siblings}, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a union of {len(options)} types is not structural: {schema}")
        siblings = {k: v for k, v in schema.items() if k != "anyOf"}
        merged = structural({**options[0], **siblings}, defs)
        merged["nullable"] = True
        return merged
    return None


def _kept_keywords(schema: dict[str, Any]) -> dict[str, Any]:
    """The node's own keywords that a structural schema keeps (``const`` as an ``enum``)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _KEEP or key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "const":
            out["enum"] = [value]
    if out.get("format") not in _FORMATS:
        out.pop("format", None)
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def _add_children(schema: dict[str, Any], defs: dict[str, Any], out: dict[str, Any]) -> None:
    """Properties, additional properties and items, each made structural in turn."""
    if "properties" in schema:
        out["type"] = "object"
        out["properties"] = {
            name: structural(sub, defs) for name, sub in schema["properties"].items()
        }
    additional = schema.get("additionalProperties")
    if additional is True or (
        schema.get("type") == "object" and not schema.get("properties") and additional is None
    ):
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(additional, dict):
        out["type"] = "object"
        out["additionalProperties"] = structural(additional, defs)
    if "items" in schema:
        out["items"] = structural(schema["items"], defs)


_ORDER = ("type", "description", "format", "enum", "default", "nullable")


def _key_order(key: str) -> tuple[int, str]:
    if key in _ORDER:
        return (_ORDER.index(key), key)
    if key.startswith("x-kubernetes-"):
        return (len(_ORDER) + 2, key)
    if key in ("required", "properties", "additionalProperties", "items"):
        return (len(_ORDER) + 1, key)
    return (len(_ORDER), key)


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def wire(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")
READY = PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status')
POLICY_COLUMNS = (
    PrinterColumn("Mode", ".spec.mode"),
    READY,
    PrinterColumn("Breakers", ".status.breakers", "integer"),
    PrinterColumn("Open", ".status.open", "integer"),
    PrinterColumn("Unknown", ".status.unknown", "integer", priority=1),
    AGE,
)


@dataclass(frozen=True)
class Resource:
    """One custom resource: its model and how kubectl names and prints it."""

    model: type[ApiModel]
    plural: str
    scope: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...]
    # Not "breaker": kubectl expands categories before names, so a category named like
    # the Breaker kind would turn `kubectl delete breaker X` into all four kinds.
    categories: tuple[str, ...] = ("circuit",)
    root_rules: tuple[dict[str, Any], ...] = field(default=())

    @property
    def kind(self) -> str:
        return self.model.__name__

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def has_status(self) -> bool:
        return "status" in self.model.model_fields

    def schema(self) -> dict[str, Any]:
        raw = self.model.model_json_schema(by_alias=True, mode="validation")
        defs = raw.get("$defs", {})
        properties = raw["properties"]
        root: dict[str, Any] = {
            "type": "object",
            "description": (self.model.__doc__ or "").strip(),
            "required": ["spec"],
            "properties": {
                "apiVersion": {
                    "type": "string",
                    "description": "The versioned schema of this object: breaker.dev/v1alpha1.",
                },
                "kind": {"type": "string", "description": f"The kind of this object: {self.kind}."},
                "metadata": {"type": "object"},
                "spec": structural(properties["spec"], defs),
            },
        }
        if "status" in properties:
            root["properties"]["status"] = structural(properties["status"], defs)
        if self.root_rules:
            root["x-kubernetes-validations"] = list(self.root_rules)
        return root

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": self.name},
            "spec": {
                "group": GROUP,
                "scope": self.scope,
                "names": {
                    "kind": self.kind,
                    "listKind": f"{self.kind}List",
                    "plural": self.plural,
                    "singular": self.kind.lower(),
                    "shortNames": list(self.short_names),
                    "categories": list(self.categories),
                },
                "versions": [
                    {
                        "name": VERSION,
                        "served": True,
                        "storage": True,
                        **({"subresources": {"status": {}}} if self.has_status else {}),
                        "additionalPrinterColumns": [c.wire() for c in self.columns],
                        "schema": {"openAPIV3Schema": self.schema()},
                    }
                ],
            },
        }


RESOURCES: tuple[Resource, ...] = (
    Resource(
        TrainingJob,
        plural="trainingjobs",
        scope="Namespaced",
        short_names=("tj",),
        categories=("all", "circuit"),
        root_rules=(
            {
                "rule": f"size(self.metadata.name) <= {MAX_NAME}",
                "message": f"metadata.name: at most {MAX_NAME} characters (its Job and pods "
                "are named after it)",
            },
        ),
        columns=(
            PrinterColumn("GPUs", ".status.gpus", "integer", "GPUs the job needs in all"),
            PrinterColumn("State", ".status.state", description="Pending, Queued, Running, ..."),
            PrinterColumn("Position", ".status.queuePosition", "integer", "Place in the GPU queue"),
            PrinterColumn("Nodes", ".status.nodeList", description="Nodes its pods run on"),
            PrinterColumn("Priority", ".spec.priority", "integer", priority=1),
            PrinterColumn("Replicas", ".spec.replicas", "integer", priority=1),
            AGE,
        ),
    ),
    Resource(
        BreakerPolicy,
        plural="breakerpolicies",
        scope="Namespaced",
        short_names=("bp",),
        columns=POLICY_COLUMNS,
    ),
    Resource(
        ClusterBreakerPolicy,
        plural="clusterbreakerpolicies",
        scope="Cluster",
        short_names=("cbp",),
        columns=POLICY_COLUMNS,
    ),
    Resource(
        Breaker,
        plural="breakers",
        scope="Namespaced",
        short_names=("brk",),
        columns=(
            PrinterColumn("Target", ".spec.targetRef.name", description="The guarded workload"),
            PrinterColumn("Kind", ".spec.targetRef.kind", priority=1),
            PrinterColumn("State", ".status.state"),
            PrinterColumn(
                "Containment",
                '.status.conditions[?(@.type=="Contained")].reason',
                description="InProgress, Contained, ActionsFailed, NotTripped, ...",
            ),
            PrinterColumn("Signals", ".status.signals", description="Available or Unknown"),
            PrinterColumn("Trips", ".status.trips", "integer"),
            PrinterColumn("Last Trip", ".status.lastTrip", "date"),
            PrinterColumn("Reason", ".status.reason"),
            PrinterColumn("Policy", ".spec.policyRef.name", priority=1),
            AGE,
        ),
    ),
    Resource(
        BreakerHold,
        plural="breakerholds",
        scope="Namespaced",
        short_names=(),
        columns=(
            PrinterColumn("Breakers", ".spec.breakers", description="Holding containment here"),
            AGE,
        ),
        # Not in `kubectl get circuit`: the operator's bookkeeping, not an admin's object.
        categories=(),
    ),
)


def render(resource: Resource) -> str:
    header = (
        "# Generated by `breaker crds` from the pydantic models in operator/breaker/api.\n"
        "# Do not edit: change the models and run `breaker crds` again.\n"
    )
    return header + yaml.dump(resource.manifest(), Dumper=_NoAliases, sort_keys=False, width=100)


class _NoAliases(yaml.SafeDumper):
    """Write shared sub-schemas out in full: no YAML anchors in a CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# Where the generated CRDs are committed: for `kubectl apply`, and in the Helm chart.
DIRECTORIES = ("crds", "helm/breaker/crds")


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for resource in RESOURCES:
        path = directory / f"{resource.name}.yaml"
        path.write_text(render(resource))
        written.append(path)
    return written


def stale(directory: Path) -> list[Path]:
    """The committed CRD files that differ from what the models generate."""
    return [
        directory / f"{r.name}.yaml"
        for r in RESOURCES
        if not (directory / f"{r.name}.yaml").exists()
        or (directory / f"{r.name}.yaml").read_text() != render(r)
    ]
