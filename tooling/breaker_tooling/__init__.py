"""breaker's developer tooling: the local cluster (a real control plane, kwok GPU nodes, a
real node and Prometheus on loopback), the ROME demo and the metric simulator.

A distribution of its own (`tooling/pyproject.toml`), so that the operator's image, which
installs only `breaker`, carries none of it."""
