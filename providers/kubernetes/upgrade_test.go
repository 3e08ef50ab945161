package kubernetes_test

import (
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestUpgrade(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	p := e.provider(t, nil)
	ns := e.ns("acme")
	v1, v2 := image("registry.example/web", "v1"), image("registry.example/web", "v2")
	mustApply(t, p, step("prov", "namespace.provision", "acme", nil))
	mustApply(t, p, step("m", "manifests.apply", "acme", map[string]any{"manifests": webManifests(3, v1, false)}))
	waitAvailable(t, ns, "web")

	up := func(id, img string) *providerv1.Step {
		return step(id, "deployment.upgrade", "acme", map[string]any{"deployment": "web", "images": map[string]any{"web": img}, "progress_deadline": "10s"})
	}
	s := up("up", v2)
	planned := mustPlan(t, p, s)
	if len(planned) != 1 || planned[0].GetOperation() != providerv1.Operation_OPERATION_UPDATE || planned[0].GetSummary() != "container web: image "+v1+" → "+v2 {
		t.Errorf("plan:%s", describe(planned))
	}
	res := mustApply(t, p, s)
	if output(res, "revision") != "2" || output(res, "previous_revision") != "1" {
		t.Errorf("outputs %v, message %s", res.GetOutputs(), res.GetMessage())
	}
	d, err := admin(t).AppsV1().Deployments(ns).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil || d.Spec.Template.Spec.Containers[0].Image != v2 || d.Status.AvailableReplicas != 3 {
		t.Fatalf("after the upgrade: %v, %d available (%v)", d.Spec.Template.Spec.Containers, d.Status.AvailableReplicas, err)
	}
	if again := mustApply(t, p, s); !allNoop(again.GetChanges()) || output(again, "revision") != "2" {
		t.Errorf("second upgrade:%s %v", describe(again.GetChanges()), again.GetOutputs())
	}

	// An image whose Pods never become Ready: rolled back, and the
	// result says so and why.
	bad := up("bad", neverReady("v3"))
	res = apply(t, p, bad)
	if res.GetState() != providerv1.StepState_STEP_STATE_FAILED {
		t.Fatalf("never-ready upgrade: %s: %s", res.GetState(), res.GetMessage())
	}
	msg := res.GetMessage()
	if !strings.HasPrefix(msg, "upgrade of deployment web rolled back to revision 2: ") || !strings.Contains(msg, "ProgressDeadlineExceeded") {
		t.Errorf("message %q, want the rollback and the reason", msg)
	}
	if output(res, "previous_revision") != "2" || output(res, "rolled_back") != "true" {
		t.Errorf("outputs %v", res.GetOutputs())
	}
	d, err = admin(t).AppsV1().Deployments(ns).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil || d.Spec.Template.Spec.Containers[0].Image != v2 {
		t.Fatalf("after the rollback: %v (%v)", d.Spec.Template.Spec.Containers, err)
	}
	waitAvailable(t, ns, "web")
}

// A container the Deployment does not have is refused before anything is
// written.
func TestUpgradeUnknownContainer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	p := e.provider(t, nil)
	mustApply(t, p, step("prov", "namespace.provision", "acme", nil))
	mustApply(t, p, step("m", "manifests.apply", "acme", map[string]any{"manifests": webManifests(1, image("registry.example/web", "v1"), false)}))
	s := step("up", "deployment.upgrade", "acme", map[string]any{"deployment": "web", "images": map[string]any{"sidecar": image("registry.example/s", "1")}})
	for _, call := range []func() error{
		func() error { _, err := p.Plan(t.Context(), s); return err },
		func() error { _, err := p.Apply(t.Context(), s, nil); return err },
	} {
		if err := call(); err == nil || !strings.Contains(err.Error(), `has no container "sidecar"`) {
			t.Errorf("got %v", err)
		}
	}
}
