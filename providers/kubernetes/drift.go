package kubernetes

import (
	"context"
	"fmt"
	"strings"

	"attache.dev/attache/providers/kubernetes/inventory"
	"google.golang.org/grpc/status"
)

// maxDriftDetail bounds ComponentHealth.drift_detail.
const maxDriftDetail = 1024

// namespaceDrift is the drift of every manifests.apply set in namespace.
func (e *env) namespaceDrift(ctx context.Context, namespace string) ([]inventory.Drift, error) {
	a := e.applier()
	sets, err := a.Sets(ctx, namespace)
	if err != nil {
		return nil, apiError("list the inventories in "+namespace, err)
	}
	var out []inventory.Drift
	for _, set := range sets {
		ds, err := a.Drift(ctx, namespace, set)
		if err != nil {
			return nil, apiError(fmt.Sprintf("drift of set %s in %s", set, namespace), err)
		}
		out = append(out, ds...)
	}
	return out, nil
}

// driftDetail renders drifts as "apps/v1/Deployment tenant-acme/web
// spec.replicas want 3 live 5; …", at most maxDriftDetail bytes, saying how
// many were left out.
func driftDetail(ds []inventory.Drift) string {
	var b strings.Builder
	for i, d := range ds {
		s := d.String()
		if i > 0 {
			s = "; " + s
		}
		more := fmt.Sprintf("; … %d more", len(ds)-i)
		if b.Len()+len(s) > maxDriftDetail-len(more) {
			b.WriteString(more)
			break
		}
		b.WriteString(s)
	}
	return b.String()
}

// statusFromError returns a gRPC status error's message.
func statusFromError(err error) (string, bool) {
	if st, ok := status.FromError(err); ok {
		return st.Message(), true
	}
	return "", false
}
