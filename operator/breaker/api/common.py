"""Types shared by the resources: the base model, durations, selectors, conditions.

Field names are camelCase on the wire (as kubectl shows them) and snake_case in Python.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from breaker.constants import API_VERSION

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Go's time.ParseDuration units, which CEL's duration() also reads: "30s", "5m", "1h30m".
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# The longest duration any field takes: ten years. Longer ones match the pattern, and
# "99999999999h" overflowed the evaluation loop (one bad policy stalled every breaker).
MAX_DURATION_HOURS = 87_600


def parse_duration(text: str) -> dt.timedelta:
    """A Go-style duration ("1h30m", "500ms") as a timedelta."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 1h30m")
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    if seconds > MAX_DURATION_HOURS * 3600:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION_HOURS}h (ten years)")
    return dt.timedelta(seconds=seconds)


def _parsed(text: str) -> str:
    parse_duration(text)  # a model holds only durations the code can use
    return text


Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, max_length=32, examples=["30s", "5m", "1h30m"]),
    AfterValidator(_parsed),
]


class ApiModel(BaseModel):
    """Base of every resource's parts: camelCase aliases, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class KubeObject(ApiModel):
    """The parts every breaker.dev object shares; subclasses add kind, spec and status."""

    api_version: str = Field(default=API_VERSION, description=API_VERSION)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector."""

    key: str = Field(description="The label key the requirement applies to.", max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[Annotated[str, Field(max_length=63)]] | None = Field(
        default=None,
        max_length=64,
        description="The values for In and NotIn; empty for Exists and DoesNotExist.",
    )


class LabelSelector(ApiModel):
    """A Kubernetes label selector; an empty selector selects everything."""

    match_labels: dict[str, str] | None = Field(
        default=None, description="Labels that must all be present with these values."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Requirements that must all hold."
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A condition in the shape of metav1.Condition."""

    type: str = Field(
        description="The aspect this condition reports, in CamelCase.", max_length=316
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="A CamelCase word saying why the condition last changed.", max_length=1024
    )
    message: str = Field(default="", description="What a person should know.", max_length=32768)
    last_transition_time: dt.datetime = Field(
        description="When the status last changed (not the reason or message)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


def defaults_of(model: type[ApiModel]) -> dict[str, Any]:
    """The CRD default of an object field: the model's own defaults, written out.

    The API server validates a default as given (it does not default inside it), so an
    object default must carry its nested defaults for the CEL rules that read them.
    """
    return {"default": model().wire()}
