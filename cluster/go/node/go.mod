// The local cluster's own programs for the real node, built static (CGO off):
//   pause        the pod sandbox's process (the kubelet's sandbox image)
//   agent        the workload image: plays the ROME agent, or probes, or idles
//   dnsd         the cluster DNS (kube-system/kube-dns), forwarding what it does not own
//   outside      the hosts outside the cluster, in a network namespace of their own
//   netns-proxy  carries loopback TCP from a network namespace to the host's loopback
module breaker.dev/cluster/node

go 1.26.0

require (
	github.com/miekg/dns v1.1.73
	golang.org/x/net v0.57.0
	golang.org/x/sys v0.50.0
)
