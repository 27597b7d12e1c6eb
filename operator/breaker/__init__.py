"""breaker: a Kubernetes operator that puts a circuit breaker around GPU training jobs.

It watches training workloads and the Prometheus signals real clusters export, and when a
breaker trips it contains the job: revokes its egress, pauses it, hands its GPUs on, keeps
the evidence, and lets an admin undo it all. See DESIGN.md in the project's shared folder.
"""
