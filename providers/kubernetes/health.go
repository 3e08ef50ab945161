package kubernetes

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Health statuses, short.
const (
	healthy   = providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY
	degraded  = providerv1.ComponentStatus_COMPONENT_STATUS_DEGRADED
	unhealthy = providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY
)

// maxTenantHealth bounds the tenant namespaces one Health reports.
const maxTenantHealth = 1000

// tenantNS is one tenant namespace the provider manages.
type tenantNS struct {
	tenant, namespace string
}

// tenantNamespaces lists the namespaces labelled managed-by=attache whose
// name is namespace_prefix + their tenant label (another provider's prefix
// is not ours), sorted; only, if not empty, restricts them to those
// tenants.
func (e *env) tenantNamespaces(ctx context.Context, only []string) ([]tenantNS, error) {
	list, err := e.client(gvrNamespaces, "").List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedByValue + "," + LabelTenant})
	if err != nil {
		return nil, apiError("list tenant namespaces", err)
	}
	want := map[string]bool{}
	for _, t := range only {
		want[t] = true
	}
	var out []tenantNS
	for _, ns := range list.Items {
		t := ns.GetLabels()[LabelTenant]
		if ns.GetName() != e.s.NamespacePrefix+t || (len(want) > 0 && !want[t]) {
			continue
		}
		out = append(out, tenantNS{tenant: t, namespace: ns.GetName()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].tenant < out[j].tenant })
	return out, nil
}

// Health reports component "kubernetes" (whether the API server is ready,
// its version and how many tenant namespaces there are) and one component
// "kubernetes/<tenant>" per tenant namespace: HEALTHY when every Deployment
// has all its replicas available, DEGRADED when some lack replicas,
// UNHEALTHY when none that wants replicas has one available; with Drift
// set when the objects of a manifests.apply set differ from what was
// applied.
func (p *Provider) Health(ctx context.Context) (*providerv1.HealthResponse, error) {
	e, err := p.getEnv()
	if err != nil {
		return &providerv1.HealthResponse{Components: []*providerv1.ComponentHealth{{
			Name: Name, Status: unhealthy, Message: "not configured",
		}}}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, e.s.timeout)
	defer cancel()
	main := &providerv1.ComponentHealth{Name: Name, Status: healthy}
	resp := &providerv1.HealthResponse{Components: []*providerv1.ComponentHealth{main}}
	if _, err := e.c.kube.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Raw(); err != nil {
		main.Status, main.Message = unhealthy, fmt.Sprintf("API server %s is not ready: %v", e.c.rest.Host, err)
		return resp, nil
	}
	version, err := serverVersion(ctx, e.c)
	if err != nil {
		version = "(version unknown)"
	}
	tenants, err := e.tenantNamespaces(ctx, nil)
	if err != nil {
		main.Status, main.Message = degraded, fmt.Sprintf("Kubernetes %s ready at %s, but %v", version, e.c.rest.Host, errMessage(err))
		return resp, nil
	}
	main.Message = fmt.Sprintf("Kubernetes %s ready at %s, %s", version, e.c.rest.Host, plural(len(tenants), "tenant namespace"))
	if len(tenants) > maxTenantHealth {
		main.Message += fmt.Sprintf(" (health of the first %d reported)", maxTenantHealth)
		tenants = tenants[:maxTenantHealth]
	}
	comps := make([]*providerv1.ComponentHealth, len(tenants))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, t := range tenants {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			comps[i] = e.tenantHealth(ctx, t)
		})
	}
	wg.Wait()
	resp.Components = append(resp.Components, comps...)
	return resp, nil
}

// tenantHealth is one tenant namespace's component.
func (e *env) tenantHealth(ctx context.Context, t tenantNS) *providerv1.ComponentHealth {
	c := &providerv1.ComponentHealth{Name: Name + "/" + t.tenant, Tenant: t.tenant}
	list, err := e.c.kube.AppsV1().Deployments(t.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		c.Status, c.Message = unhealthy, errMessage(apiError("list deployments in "+t.namespace, err))
		return c
	}
	c.Status, c.Message = deploymentsStatus(t.namespace, list.Items)
	drifts, err := e.namespaceDrift(ctx, t.namespace)
	switch {
	case err != nil:
		c.Message += "; drift not checked: " + errMessage(err)
	case len(drifts) > 0:
		c.Drift, c.DriftDetail = true, driftDetail(drifts)
	}
	return c
}

// deploymentsStatus rates a namespace's Deployments by availability.
func deploymentsStatus(namespace string, ds []appsv1.Deployment) (providerv1.ComponentStatus, string) {
	if len(ds) == 0 {
		return healthy, fmt.Sprintf("namespace %s: no deployments", namespace)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Name < ds[j].Name })
	var short []string
	full, wanting, some := 0, 0, 0
	for _, d := range ds {
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		avail := d.Status.AvailableReplicas
		if want > 0 {
			wanting++
			if avail > 0 {
				some++
			}
		}
		if avail >= want && d.Status.UpdatedReplicas >= want {
			full++
			continue
		}
		short = append(short, fmt.Sprintf("%s %d/%d available", d.Name, avail, want))
	}
	msg := fmt.Sprintf("namespace %s: %d/%d deployments available", namespace, full, len(ds))
	switch {
	case len(short) == 0:
		return healthy, msg
	case some == 0 && wanting > 0:
		return unhealthy, msg + " (" + strings.Join(short, ", ") + ")"
	}
	return degraded, msg + " (" + strings.Join(short, ", ") + ")"
}

// errMessage is err's message without a gRPC status's decoration.
func errMessage(err error) string {
	if st, ok := statusFromError(err); ok {
		return st
	}
	return err.Error()
}
