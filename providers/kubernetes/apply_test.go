package kubernetes_test

import (
	"slices"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func TestManifestsApply(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	p := e.provider(t, nil)
	ns := e.ns("acme")
	img := image("registry.example/web", "v1")
	manifests := func(id string, m string) *providerv1.Step {
		return step(id, "manifests.apply", "acme", map[string]any{"manifests": m})
	}

	// Not provisioned: refused by Apply; Plan shows what a plan that
	// provisions first would create.
	first := manifests("m1", webManifests(2, img, true))
	if _, err := p.Apply(t.Context(), first, nil); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "provision it first") {
		t.Fatalf("apply before provision: %v, want FailedPrecondition", err)
	}
	if cs := mustPlan(t, p, first); countOps(cs)["CREATE"] != 3 {
		t.Errorf("plan before provision:%s", describe(cs))
	}

	mustApply(t, p, step("prov", "namespace.provision", "acme", nil))
	planned := mustPlan(t, p, first)
	res := mustApply(t, p, first)
	if describe(res.GetChanges()) != describe(planned) {
		t.Errorf("Apply's changes differ from Plan's:\napply:%s\nplan:%s", describe(res.GetChanges()), describe(planned))
	}
	want := []string{
		"CREATE apps/v1/Deployment " + ns + "/web",
		"CREATE v1/ConfigMap " + ns + "/web-config",
		"CREATE v1/Service " + ns + "/web",
	}
	if got := ops(res.GetChanges()); !slices.Equal(got, want) {
		t.Errorf("changes %v, want %v", got, want)
	}
	if output(res, "set") != "app" || output(res, "objects") != "3" {
		t.Errorf("outputs %v", res.GetOutputs())
	}
	cs := admin(t)
	d, err := cs.AppsV1().Deployments(ns).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Labels["app.kubernetes.io/managed-by"] != "attache" || d.Labels["attache.dev/tenant"] != "acme" {
		t.Errorf("deployment labels %v", d.Labels)
	}
	waitAvailable(t, ns, "web")
	if again := mustApply(t, p, first); !allNoop(again.GetChanges()) {
		t.Errorf("second apply:%s", describe(again.GetChanges()))
	}

	// Drift: a hand edit shows in the plan; the apply puts it back.
	if _, err := cs.AppsV1().Deployments(ns).Patch(t.Context(), "web", types.MergePatchType, []byte(`{"spec":{"replicas":5}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	drifted := mustPlan(t, p, first)
	found := false
	for _, c := range drifted {
		if c.GetResource() == "apps/v1/Deployment "+ns+"/web" && c.GetOperation() == providerv1.Operation_OPERATION_UPDATE &&
			c.GetSummary() == "drift: spec.replicas want 2 live 5" {
			found = true
		}
	}
	if !found {
		t.Errorf("plan after a hand edit does not report the drift:%s", describe(drifted))
	}
	mustApply(t, p, first)
	d, err = cs.AppsV1().Deployments(ns).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil || *d.Spec.Replicas != 2 {
		t.Fatalf("replicas after re-apply: %v %v", d.Spec.Replicas, err)
	}
	if after := mustPlan(t, p, first); !allNoop(after) {
		t.Errorf("plan after re-apply:%s", describe(after))
	}

	// Prune: the ConfigMap left out is deleted; another set is left alone.
	other := step("m-other", "manifests.apply", "acme", map[string]any{"set": "extra", "manifests": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n"})
	mustApply(t, p, other)
	second := manifests("m2", webManifests(2, img, false))
	res = mustApply(t, p, second)
	if n := countOps(res.GetChanges()); n["DELETE"] != 1 || n["NOOP"] != 2 {
		t.Errorf("apply without the ConfigMap:%s", describe(res.GetChanges()))
	}
	if _, err := cs.CoreV1().ConfigMaps(ns).Get(t.Context(), "web-config", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("web-config after prune: %v", err)
	}
	if _, err := cs.CoreV1().ConfigMaps(ns).Get(t.Context(), "extra", metav1.GetOptions{}); err != nil {
		t.Errorf("set extra's ConfigMap: %v", err)
	}
}
