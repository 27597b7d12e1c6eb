"""A policy's actions, compiled once into typed settings. Pure.

Everything that carries out or holds an action reads these, never the policy's spec
dict: a misspelt key there (``allowDns`` for the schema's ``allowDNS``) once left
``allowDNS: false`` silently ignored, keeping a DNS tunnel open under revocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from breaker.api.policy import (
    Action,
    NotifyAction,
    PolicySpecBase,
    QuarantineNodeAction,
    RevokeEgressAction,
)

DEFAULT_ORDER = ("captureEvidence", "revokeEgress", "pause", "reassignGPUs")
_ACTIONS = TypeAdapter(list[Action])


@dataclass(frozen=True)
class ActionSettings:
    """The escalation, in the policy's order, with each action's validated settings."""

    order: tuple[str, ...] = DEFAULT_ORDER
    revoke_egress: RevokeEgressAction = field(default_factory=RevokeEgressAction)
    quarantine_node: QuarantineNodeAction = field(default_factory=QuarantineNodeAction)
    notify: tuple[NotifyAction, ...] = ()

    @classmethod
    def of(cls, actions: Sequence[Action]) -> ActionSettings:
        def settings(kind: str) -> Any:
            return next((getattr(a, kind) for a in actions if getattr(a, kind) is not None), None)

        return cls(
            order=tuple(a.type for a in actions),
            revoke_egress=settings("revoke_egress") or RevokeEgressAction(),
            quarantine_node=settings("quarantine_node") or QuarantineNodeAction(),
            notify=tuple(a.notify for a in actions if a.notify is not None),
        )

    @classmethod
    def compile(cls, spec: PolicySpecBase | None, raw: Any = None) -> ActionSettings:
        """From the validated policy; a policy the operator could not validate as a whole
        still has its actions carried out (an admin's ForcedOpen, a reset) if they validate
        on their own, else the defaults."""
        if spec is not None:
            return cls.of(spec.actions)
        if raw:
            try:
                return cls.of(_ACTIONS.validate_python(raw))
            except ValidationError:
                pass
        return cls()
