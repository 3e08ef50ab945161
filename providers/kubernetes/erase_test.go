package kubernetes_test

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestErase(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	e.writeSecret(t, "db.pw", "pw-acme-0123456789")
	e.writeSecret(t, "db.user", "app")
	p := e.provider(t, nil)
	ns := e.ns("acme")
	mustApply(t, p, step("prov", "namespace.provision", "acme", provisionParams(nil)))
	mustApply(t, p, step("m", "manifests.apply", "acme", map[string]any{"manifests": webManifests(2, image("registry.example/web", "v1"), true)}))
	mustApply(t, p, step("m2", "manifests.apply", "acme", map[string]any{"set": "jobs", "manifests": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: jobs}\n"}))
	waitAvailable(t, ns, "web")
	mustApply(t, p, step("prov-beta", "namespace.provision", "beta", nil))

	s := step("erase", "namespace.erase", "acme", map[string]any{"confirm": "acme"})
	planned := mustPlan(t, p, s)
	want := []string{"DELETE inventory " + ns + "/app", "DELETE inventory " + ns + "/jobs", "DELETE v1/Namespace " + ns}
	if got := ops(planned); !slices.Equal(got, want) {
		t.Errorf("plan %v, want %v", got, want)
	}
	res := mustApply(t, p, s)
	if describe(res.GetChanges()) != describe(planned) {
		t.Errorf("Apply's changes differ from Plan's:\napply:%s\nplan:%s", describe(res.GetChanges()), describe(planned))
	}
	wantV := "no namespace " + e.prefix + "* labelled attache.dev/tenant=acme remains (namespace " + ns + " is gone, and with it every object created for the tenant: all are namespaced)"
	if v := output(res, "verification"); v != wantV || res.GetMessage() != wantV {
		t.Errorf("verification %q, message %q; want %q", v, res.GetMessage(), wantV)
	}
	cs := admin(t)
	if _, err := cs.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace after erase: %v", err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(t.Context(), e.ns("beta"), metav1.GetOptions{}); err != nil {
		t.Errorf("the other tenant's namespace: %v", err)
	}

	// Again: nothing to do, and the check still runs.
	again := mustApply(t, p, s)
	if !allNoop(again.GetChanges()) || output(again, "verification") != wantV {
		t.Errorf("second erase:%s %q", describe(again.GetChanges()), output(again, "verification"))
	}
}

// A namespace attache does not manage is never erased.
func TestEraseRefusesForeignNamespace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	p := e.provider(t, nil)
	if _, err := admin(t).CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns("plain")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := p.Apply(t.Context(), step("erase", "namespace.erase", "plain", map[string]any{"confirm": "plain"}), nil)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "not managed by attache") {
		t.Fatalf("got %v", err)
	}
	if _, err := admin(t).CoreV1().Namespaces().Get(t.Context(), e.ns("plain"), metav1.GetOptions{}); err != nil {
		t.Fatalf("namespace after the refused erase: %v", err)
	}
}
