package inventory_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"attache.dev/attache/providers/kubernetes/inventory"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func TestDrift(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ns := e.ns
	e.apply(t, "web", manifests("hello", image1), false)

	// Right after the apply, and once the controllers have defaulted the
	// objects, set their status and created ReplicaSets: no drift.
	drift, err := e.applier.Drift(ctx, ns, "web")
	if err != nil || len(drift) != 0 {
		t.Fatalf("Drift right after Apply = %v, %v; want none", drift, err)
	}
	waitDeploymentObserved(t, e, "web")
	drift, err = e.applier.Drift(ctx, ns, "web")
	if err != nil || len(drift) != 0 {
		t.Fatalf("Drift once the controllers ran = %v, %v; want none", drift, err)
	}

	// Changes by hand: scale (kubectl scale), set the image (kubectl set
	// image: a strategic merge patch), edit a label, delete the ConfigMap.
	deploys := e.admin.AppsV1().Deployments(ns)
	scale, err := deploys.GetScale(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	scale.Spec.Replicas = 5
	if _, err := deploys.UpdateScale(ctx, "web", scale, metav1.UpdateOptions{FieldManager: "kubectl"}); err != nil {
		t.Fatal(err)
	}
	const image2 = "registry.example/web:evil"
	setImage := `{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"` + image2 + `"}]}}}}`
	if _, err := deploys.Patch(ctx, "web", types.StrategicMergePatchType, []byte(setImage), metav1.PatchOptions{FieldManager: "kubectl-set"}); err != nil {
		t.Fatal(err)
	}
	relabel := `{"metadata":{"labels":{"attache.dev/tenant":"other"}}}`
	if _, err := e.admin.CoreV1().Services(ns).Patch(ctx, "web", types.MergePatchType, []byte(relabel), metav1.PatchOptions{FieldManager: "kubectl-label"}); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.CoreV1().ConfigMaps(ns).Delete(ctx, "web-config", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	drift, err = e.applier.Drift(ctx, ns, "web")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(drift))
	for i, d := range drift {
		got[i] = d.String()
	}
	want := []string{
		"v1/ConfigMap " + ns + "/web-config missing",
		"v1/Service " + ns + "/web metadata.labels[attache.dev/tenant] want acme live other",
		"apps/v1/Deployment " + ns + "/web spec.replicas want 3 live 5",
		"apps/v1/Deployment " + ns + "/web spec.template.spec.containers[name=web].image want " + image1 + " live " + image2,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Drift:\n  got  %q\n  want %q", got, want)
	}
	if drift[0].Field != "missing" || drift[2].Field != "spec.replicas" || drift[2].Want != "3" || drift[2].Live != "5" {
		t.Errorf("drift fields: %+v", drift)
	}

	// Apply repairs it all: the live differences are Updates, with Force.
	changes := e.apply(t, "web", manifests("hello", image1), false)
	wantOps(t, changes,
		"noop v1/ServiceAccount "+ns+"/web",
		"create v1/ConfigMap "+ns+"/web-config",
		"update v1/Service "+ns+"/web",
		"update apps/v1/Deployment "+ns+"/web",
		"noop rbac.authorization.k8s.io/v1/Role "+ns+"/reader",
		"noop rbac.authorization.k8s.io/v1/RoleBinding "+ns+"/reader",
	)
	if s := changes[3].Summary; !strings.Contains(s, "spec.replicas want 3 live 5") {
		t.Errorf("Deployment update summary %q does not name spec.replicas", s)
	}
	drift, err = e.applier.Drift(ctx, ns, "web")
	if err != nil || len(drift) != 0 {
		t.Fatalf("Drift after the repairing Apply = %v, %v; want none", drift, err)
	}
	d, err := deploys.Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *d.Spec.Replicas != 3 || d.Spec.Template.Spec.Containers[0].Image != image1 {
		t.Fatalf("after the repair: replicas %d image %s", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Image)
	}
}

func TestDriftIgnoresFieldsWeDidNotSet(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.apply(t, "web", manifests("hello", image1), false)
	// Another manager adds what we never set: an annotation, a container
	// field, a ConfigMap key. Not drift.
	patch := `{"metadata":{"annotations":{"example.com/note":"x"}},"spec":{"revisionHistoryLimit":2,"template":{"spec":{"containers":[{"name":"web","imagePullPolicy":"Always"}]}}}}`
	if _, err := e.admin.AppsV1().Deployments(e.ns).Patch(ctx, "web", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "other"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CoreV1().ConfigMaps(e.ns).Patch(ctx, "web-config", types.MergePatchType, []byte(`{"data":{"extra":"1"}}`), metav1.PatchOptions{FieldManager: "other"}); err != nil {
		t.Fatal(err)
	}
	drift, err := e.applier.Drift(ctx, e.ns, "web")
	if err != nil || len(drift) != 0 {
		t.Fatalf("Drift = %v, %v; want none", drift, err)
	}
	changes := e.apply(t, "web", manifests("hello", image1), false)
	if c := countOps(changes); c[inventory.Noop] != 6 {
		t.Fatalf("Apply after others' additions: %q, want all noop", ops(changes))
	}
}
