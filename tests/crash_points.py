"""Where an operator may die during a trip and a reset, in the order it passes them
(``breaker.failpoints``), per action setting: "gpus" hands the GPUs on, "nodes"
quarantines the node. The unit tests (fakes) and the cluster's crash suite (a real
operator killed at each point) walk the same lists."""

from __future__ import annotations

TRIP_POINTS = {
    "gpus": [
        "trip.intended",
        "trip.quota-clamped",
        "egress.quarantine-written",
        "egress.pods-labelled",
        "egress.narrowed",
        "trip.revokeEgress",
        "trip.pause",
        "trip.reassignGPUs",
        "trip.recorded",
    ],
    "nodes": [
        "trip.intended",
        "egress.quarantine-written",
        "trip.revokeEgress",
        "trip.pause",
        "trip.quarantineNode",
        "trip.recorded",
    ],
}
RESET_POINTS = {
    "gpus": ["reset.reassignGPUs", "reset.pause", "reset.revokeEgress", "reset.recorded"],
    "nodes": ["reset.quarantineNode", "reset.pause", "reset.revokeEgress", "reset.recorded"],
}
