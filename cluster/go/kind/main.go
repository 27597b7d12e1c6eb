// Command kind-config-check reads kind cluster configs the way kind itself does (strict
// YAML into sigs.k8s.io/kind's v1alpha4 types, unknown fields refused), applies kind's
// defaults, and checks the rules kind enforces before it creates a cluster. The test suite
// runs it on kind-config.yaml, since kind itself needs a container engine to go further.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"

	"go.yaml.in/yaml/v3"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kind-config-check FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		summary, err := check(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
			continue
		}
		fmt.Printf("%s: ok: %s\n", path, summary)
	}
	if failed {
		os.Exit(1)
	}
}

func check(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var cluster v1alpha4.Cluster
	decoder := yaml.NewDecoder(bytes.NewReader(raw))
	decoder.KnownFields(true)
	if err := decoder.Decode(&cluster); err != nil {
		return "", fmt.Errorf("not a kind v1alpha4 Cluster: %w", err)
	}
	if cluster.Kind != "Cluster" || cluster.APIVersion != "kind.x-k8s.io/v1alpha4" {
		return "", fmt.Errorf("kind/apiVersion is %q/%q, want Cluster/kind.x-k8s.io/v1alpha4", cluster.Kind, cluster.APIVersion)
	}
	v1alpha4.SetDefaultsCluster(&cluster)
	return summarize(&cluster)
}

func summarize(cluster *v1alpha4.Cluster) (string, error) {
	controlPlanes, workers := 0, 0
	for i, node := range cluster.Nodes {
		switch node.Role {
		case v1alpha4.ControlPlaneRole:
			controlPlanes++
		case v1alpha4.WorkerRole:
			workers++
		default:
			return "", fmt.Errorf("nodes[%d].role is %q, want control-plane or worker", i, node.Role)
		}
		for j, mapping := range node.ExtraPortMappings {
			if mapping.ContainerPort < 0 || mapping.ContainerPort > 65535 || mapping.HostPort < -1 || mapping.HostPort > 65535 {
				return "", fmt.Errorf("nodes[%d].extraPortMappings[%d]: port out of range", i, j)
			}
		}
	}
	if controlPlanes == 0 {
		return "", errors.New("nodes: at least one control-plane node is required")
	}
	for name, subnet := range map[string]string{
		"networking.podSubnet":     cluster.Networking.PodSubnet,
		"networking.serviceSubnet": cluster.Networking.ServiceSubnet,
	} {
		if _, _, err := net.ParseCIDR(subnet); err != nil {
			return "", fmt.Errorf("%s: %v", name, err)
		}
	}
	return fmt.Sprintf("%d control-plane and %d worker nodes", controlPlanes, workers), nil
}
