package kubernetes_test

import (
	"slices"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// provisionParams are a provision with every kind of object.
func provisionParams(extra map[string]any) map[string]any {
	p := map[string]any{
		"tier":   "bridge",
		"labels": map[string]any{"team": "payments"},
		"ingress": []any{
			map[string]any{"name": "ingress-nginx", "from_namespace_labels": map[string]any{"kubernetes.io/metadata.name": "ingress-nginx"},
				"from_pod_labels": map[string]any{"app": "ingress"}, "ports": []any{8080.0}},
			map[string]any{"cidr": "10.10.0.0/16"},
		},
		"secrets": []any{map[string]any{"name": "db", "data": map[string]any{"password": "db.pw", "user": "db.user"}}},
	}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

func TestProvision(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.writeSecret(t, "db.pw", "pw-acme-0123456789")
	e.writeSecret(t, "db.user", "app")
	p := e.provider(t, nil)
	s := step("prov", "namespace.provision", "acme", provisionParams(nil))

	planned := mustPlan(t, p, s)
	res := mustApply(t, p, s)
	if describe(res.GetChanges()) != describe(planned) {
		t.Errorf("Apply's changes differ from Plan's:\napply:%s\nplan:%s", describe(res.GetChanges()), describe(planned))
	}
	ns := e.ns("acme")
	want := []string{
		"CREATE networking.k8s.io/v1/NetworkPolicy " + ns + "/allow-ingress-1",
		"CREATE networking.k8s.io/v1/NetworkPolicy " + ns + "/allow-ingress-nginx",
		"CREATE networking.k8s.io/v1/NetworkPolicy " + ns + "/allow-same-namespace",
		"CREATE networking.k8s.io/v1/NetworkPolicy " + ns + "/default-deny",
		"CREATE rbac.authorization.k8s.io/v1/Role " + ns + "/app",
		"CREATE rbac.authorization.k8s.io/v1/RoleBinding " + ns + "/app",
		"CREATE rbac.authorization.k8s.io/v1/RoleBinding " + ns + "/attache-agent",
		"CREATE v1/LimitRange " + ns + "/attache-tier",
		"CREATE v1/Namespace " + ns,
		"CREATE v1/ResourceQuota " + ns + "/attache-tier",
		"CREATE v1/Secret " + ns + "/db",
		"CREATE v1/ServiceAccount " + ns + "/app",
	}
	if got := ops(res.GetChanges()); !slices.Equal(got, want) {
		t.Errorf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if output(res, "namespace") != ns || output(res, "service_account") != "app" {
		t.Errorf("outputs %v", res.GetOutputs())
	}

	cs := admin(t)
	nsObj, err := cs.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"app.kubernetes.io/managed-by": "attache", "attache.dev/tenant": "acme", "attache.dev/tier": "bridge",
		"team": "payments", "pod-security.kubernetes.io/enforce": "restricted",
	} {
		if nsObj.Labels[k] != v {
			t.Errorf("namespace label %s = %q, want %q", k, nsObj.Labels[k], v)
		}
	}
	q, err := cs.CoreV1().ResourceQuotas(ns).Get(t.Context(), "attache-tier", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := q.Spec.Hard[corev1.ResourceRequestsCPU]; got.String() != "4" {
		t.Errorf("quota requests.cpu %s, want 4 (tier bridge)", got.String())
	}
	sec, err := cs.CoreV1().Secrets(ns).Get(t.Context(), "db", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(sec.Data["password"]) != "pw-acme-0123456789" || string(sec.Data["user"]) != "app" {
		t.Errorf("secret data %q", sec.Data)
	}
	np, err := cs.NetworkingV1().NetworkPolicies(ns).Get(t.Context(), "allow-ingress-nginx", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := np.Spec.Ingress; len(r) != 1 || len(r[0].Ports) != 1 || r[0].Ports[0].Port.IntValue() != 8080 ||
		r[0].From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "ingress-nginx" || r[0].From[0].PodSelector.MatchLabels["app"] != "ingress" {
		t.Errorf("allow-ingress-nginx ingress %+v", r)
	}
	rb, err := cs.RbacV1().RoleBindings(ns).Get(t.Context(), "attache-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rb.RoleRef.Kind != "ClusterRole" || rb.RoleRef.Name != "attache-agent-tenant" || rb.Subjects[0].Name != "attache-agent" || rb.Subjects[0].Namespace != "attache-system" {
		t.Errorf("RoleBinding attache-agent %+v %+v", rb.RoleRef, rb.Subjects)
	}

	// Idempotent: plan and apply again change nothing.
	if again := mustPlan(t, p, s); !allNoop(again) {
		t.Errorf("Plan after Apply is not all NOOP:%s", describe(again))
	}
	if again := mustApply(t, p, s); !allNoop(again.GetChanges()) || len(again.GetChanges()) != len(want) {
		t.Errorf("second Apply:%s", describe(again.GetChanges()))
	}

	// Another tier, one ingress less, another secret value, another
	// ServiceAccount: updates and deletes, nothing else.
	e.writeSecret(t, "db.pw", "pw-acme-rotated-9876")
	s2 := step("prov2", "namespace.provision", "acme", provisionParams(map[string]any{
		"tier":            "silo",
		"service_account": "web",
		"ingress":         []any{map[string]any{"name": "ingress-nginx", "from_namespace_labels": map[string]any{"kubernetes.io/metadata.name": "ingress-nginx"}, "from_pod_labels": map[string]any{"app": "ingress"}, "ports": []any{8080.0}}},
	}))
	planned = mustPlan(t, p, s2)
	res = mustApply(t, p, s2)
	if describe(res.GetChanges()) != describe(planned) {
		t.Errorf("Apply's changes differ from Plan's:\napply:%s\nplan:%s", describe(res.GetChanges()), describe(planned))
	}
	var changed []string
	for _, c := range res.GetChanges() {
		if c.GetOperation() != providerv1.Operation_OPERATION_NOOP {
			changed = append(changed, strings.TrimPrefix(c.GetOperation().String(), "OPERATION_")+" "+c.GetResource()+": "+c.GetSummary())
		}
	}
	wantChanged := []string{
		"UPDATE v1/Namespace " + ns + ": namespace of tenant acme, tier silo, pod security restricted (changes metadata.labels)",
		"UPDATE v1/ResourceQuota " + ns + "/attache-tier",
		"UPDATE v1/LimitRange " + ns + "/attache-tier",
		"CREATE v1/ServiceAccount " + ns + "/web",
		"UPDATE rbac.authorization.k8s.io/v1/RoleBinding " + ns + "/app",
		"UPDATE v1/Secret " + ns + "/db: Secret with keys password, user (values not shown) (changes data.password)",
		"DELETE networking.k8s.io/v1/NetworkPolicy " + ns + "/allow-ingress-1",
		"DELETE v1/ServiceAccount " + ns + "/app",
	}
	if len(changed) != len(wantChanged) {
		t.Fatalf("changes:\n%s\nwant:\n%s", strings.Join(changed, "\n"), strings.Join(wantChanged, "\n"))
	}
	for i := range wantChanged {
		if !strings.HasPrefix(changed[i], wantChanged[i]) {
			t.Errorf("change %d: %s\nwant %s…", i, changed[i], wantChanged[i])
		}
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Get(t.Context(), "allow-ingress-1", metav1.GetOptions{}); err == nil {
		t.Error("allow-ingress-1 still exists")
	}
}

// A namespace attache did not create, or created for another tenant, is
// never taken over.
func TestProvisionRefusesForeignNamespace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	p := e.provider(t, nil)
	cs := admin(t)
	for _, tc := range []struct {
		tenant string
		labels map[string]string
		want   string
	}{
		{"plain", nil, "is not managed by attache"},
		{"other", map[string]string{"app.kubernetes.io/managed-by": "attache", "attache.dev/tenant": "someone"}, `for tenant "someone", not "other"`},
	} {
		_, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns(tc.tenant), Labels: tc.labels}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := step("p", "namespace.provision", tc.tenant, nil)
		_, perr := p.Plan(t.Context(), s)
		_, aerr := p.Apply(t.Context(), s, nil)
		for _, err := range []error{perr, aerr} {
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("tenant %s: got %v, want FailedPrecondition %q", tc.tenant, err, tc.want)
			}
		}
	}
}
