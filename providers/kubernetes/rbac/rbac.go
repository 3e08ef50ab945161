// Package rbac holds attache-agent's identity and rights in a Kubernetes
// cluster for attache-provider-kubernetes, as the manifest agent.yaml
// (embedded): the ServiceAccount attache-system/attache-agent, the
// ClusterRole attache-agent bound to it cluster-wide (tenant namespaces and
// the bootstrap RoleBinding only), the ClusterRole attache-agent-tenant the
// provider binds inside each tenant namespace, and the
// ValidatingAdmissionPolicy attache-agent-guard that keeps the cluster-wide
// rights to namespaces labelled app.kubernetes.io/managed-by=attache.
//
// Imported by the provider's tests (which apply it as cluster-admin and then
// act as the agent) and by the installer, which ships the manifest.
package rbac

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Manifest is agent.yaml: multi-document YAML.
//
//go:embed agent.yaml
var Manifest []byte

// Names in Manifest.
const (
	Namespace          = "attache-system"
	ServiceAccount     = "attache-agent"
	ClusterRole        = "attache-agent"
	TenantClusterRole  = "attache-agent-tenant"
	AdmissionPolicy    = "attache-agent-guard"
	ServiceAccountUser = "system:serviceaccount:" + Namespace + ":" + ServiceAccount
)

// Objects decodes Manifest into objects, in the order they are to be
// applied.
func Objects() ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(Manifest), 4096)
	var out []*unstructured.Unstructured
	for i := 1; ; i++ {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("agent.yaml document %d: %w", i, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetKind() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("agent.yaml document %d: no kind or metadata.name", i)
		}
		out = append(out, u)
	}
}
