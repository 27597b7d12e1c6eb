"""The names breaker writes into the cluster: its API group, its kinds, and the labels,
annotations and taints it puts on other objects.

They are a contract with every running copy of the operator, with admins' selectors and
with the tests; one definition each, here, so that no copy drifts.
"""

from __future__ import annotations

GROUP = "breaker.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# The extended resource NVIDIA's device plugin registers for a GPU.
GPU_RESOURCE = "nvidia.com/gpu"

# Plurals of the kinds breaker serves.
BREAKERS = "breakers"
TRAININGJOBS = "trainingjobs"
BREAKER_POLICIES = "breakerpolicies"
CLUSTER_BREAKER_POLICIES = "clusterbreakerpolicies"

# On workloads: which Breaker holds it paused, and what the pause field held before.
PAUSED_BY = f"{GROUP}/paused-by"
PAUSED_WAS = f"{GROUP}/paused-was"
# On pods: quarantined (selected by the quarantine NetworkPolicy), and what the node agent
# kept of their open connections.
QUARANTINE_LABEL = f"{GROUP}/quarantined"
KEPT_ANNOTATION = f"{GROUP}/egress-kept"
# On a node agent's Lease: the exec sessions into its node's quarantined pods.
SESSIONS_ANNOTATION = f"{GROUP}/sessions"
# On a tenant's NetworkPolicy that breaker narrowed: its selector before, and for whom.
ORIGINAL_SELECTOR = f"{GROUP}/original-pod-selector"
NARROWED_FOR = f"{GROUP}/narrowed-for"
# On a Breaker: the policy and the workload it guards; an admin's reset request.
POLICY_LABEL = f"{GROUP}/policy"
WORKLOAD_LABEL = f"{GROUP}/workload"
RESET_ANNOTATION = f"{GROUP}/reset"
# On a Node: the quarantine taint and who holds it.
NODE_TAINT = f"{GROUP}/quarantined"
NODE_MARK = f"{GROUP}/quarantine"
# On a namespace's GPU ResourceQuota: the clamp and who holds it.
CLAMP_QUOTA_NAME = "breaker-gpu-clamp"
CLAMP_MARK = f"{GROUP}/gpu-clamp"
# On a TrainingJob's pods and Jobs.
JOB_LABEL = f"{GROUP}/trainingjob"

# The BreakerHold in each namespace where a breaker holds containment, which the chart's
# admission policy reads as its params (actions/admission.py); who may bypass the policy.
ADMISSION_PARAMS = "breaker-containment"
BREAKERHOLDS = "breakerholds"
BYPASS_VERB = "bypass"  # on breakers.breaker.dev: the operator's and breaker-admin's

# Kueue's label on a job it manages: the LocalQueue it is queued in (immutable once set).
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
