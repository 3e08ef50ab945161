package kubernetes_test

import (
	"math"
	"strings"
	"testing"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// component returns the component named name.
func component(t testing.TB, p sdk.Provider, name string) *providerv1.ComponentHealth {
	t.Helper()
	h, err := p.Health(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range h.GetComponents() {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no component %s in %v", name, h.GetComponents())
	return nil
}

func TestHealth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	p := e.provider(t, nil)
	for _, tenant := range []string{"acme", "beta", "gamma"} {
		mustApply(t, p, step("prov-"+tenant, "namespace.provision", tenant, nil))
	}
	img := image("registry.example/web", "v1")
	web := step("m", "manifests.apply", "acme", map[string]any{"manifests": webManifests(2, img, true)})
	mustApply(t, p, web)
	mustApply(t, p, step("m", "manifests.apply", "beta", map[string]any{"manifests": webManifests(2, neverReady("beta"), false)}))
	waitAvailable(t, e.ns("acme"), "web")

	main := component(t, p, "kubernetes")
	if main.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY || !strings.Contains(main.GetMessage(), "Kubernetes v1.36") {
		t.Errorf("kubernetes: %s %s", main.GetStatus(), main.GetMessage())
	}
	acme := component(t, p, "kubernetes/acme")
	if acme.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY || acme.GetTenant() != "acme" || acme.GetDrift() ||
		acme.GetMessage() != "namespace "+e.ns("acme")+": 1/1 deployments available" {
		t.Errorf("acme: %s %q drift=%v", acme.GetStatus(), acme.GetMessage(), acme.GetDrift())
	}
	beta := component(t, p, "kubernetes/beta")
	if beta.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY || !strings.Contains(beta.GetMessage(), "web 0/2 available") {
		t.Errorf("beta: %s %q", beta.GetStatus(), beta.GetMessage())
	}
	if g := component(t, p, "kubernetes/gamma"); g.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY || !strings.Contains(g.GetMessage(), "no deployments") {
		t.Errorf("gamma: %s %q", g.GetStatus(), g.GetMessage())
	}

	// A hand edit is drift; re-applying clears it.
	cs := admin(t)
	if _, err := cs.CoreV1().ConfigMaps(e.ns("acme")).Patch(t.Context(), "web-config", types.MergePatchType, []byte(`{"data":{"LOG_LEVEL":"debug"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	acme = component(t, p, "kubernetes/acme")
	if want := "v1/ConfigMap " + e.ns("acme") + "/web-config data.LOG_LEVEL want info live debug"; !acme.GetDrift() || !strings.Contains(acme.GetDriftDetail(), want) {
		t.Errorf("after a hand edit: drift=%v %q, want %q", acme.GetDrift(), acme.GetDriftDetail(), want)
	}
	if acme.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY {
		t.Errorf("drift made acme %s", acme.GetStatus())
	}
	mustApply(t, p, web)
	if acme = component(t, p, "kubernetes/acme"); acme.GetDrift() || acme.GetDriftDetail() != "" {
		t.Errorf("after re-apply: drift=%v %q", acme.GetDrift(), acme.GetDriftDetail())
	}

	// Scaled by hand to more than are available: degraded.
	if _, err := cs.AppsV1().Deployments(e.ns("acme")).Patch(t.Context(), "web", types.MergePatchType, []byte(`{"spec":{"replicas":4}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	acme = component(t, p, "kubernetes/acme")
	if !acme.GetDrift() || !strings.Contains(acme.GetDriftDetail(), "spec.replicas want 2 live 4") {
		t.Errorf("after scaling: drift=%v %q", acme.GetDrift(), acme.GetDriftDetail())
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false)
	p := e.provider(t, nil)
	for _, tenant := range []string{"acme", "beta"} {
		mustApply(t, p, step("prov-"+tenant, "namespace.provision", tenant, nil))
	}
	mustApply(t, p, step("m", "manifests.apply", "acme", map[string]any{"manifests": webManifests(3, image("registry.example/web", "v1"), false)}))
	// A pod without resources gets the tier's LimitRange defaults (pool:
	// request 100m / 128Mi, limit 500m / 512Mi).
	mustApply(t, p, step("m", "manifests.apply", "beta", map[string]any{"manifests": `apiVersion: v1
kind: Pod
metadata: {name: solo}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: main
      image: registry.example/solo@sha256:0000000000000000000000000000000000000000000000000000000000000000
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
`}))
	waitAvailable(t, e.ns("acme"), "web")

	type key struct{ tenant, meter string }
	want := map[key]float64{
		{"acme", "requests.cpu_cores"}: 0.3, {"acme", "requests.memory_bytes"}: 3 * 64 << 20,
		{"acme", "limits.cpu_cores"}: 0.6, {"acme", "limits.memory_bytes"}: 3 * 128 << 20, {"acme", "pods"}: 3,
		{"beta", "requests.cpu_cores"}: 0.1, {"beta", "requests.memory_bytes"}: 128 << 20,
		{"beta", "limits.cpu_cores"}: 0.5, {"beta", "limits.memory_bytes"}: 512 << 20, {"beta", "pods"}: 1,
	}
	var got map[key]float64
	eventually(t, 30*time.Second, "usage", func() (bool, error) {
		resp, err := p.Usage(t.Context(), &providerv1.UsageRequest{})
		if err != nil {
			return false, err
		}
		got = map[key]float64{}
		for _, s := range resp.GetSamples() {
			got[key{s.GetTenant(), s.GetMeter()}] = s.GetValue()
		}
		for k, v := range want {
			if math.Abs(got[k]-v) > 1e-9 {
				return false, nil
			}
		}
		return len(got) == len(want), nil
	})
	resp, err := p.Usage(t.Context(), &providerv1.UsageRequest{Tenants: []string{"beta", "nobody"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range resp.GetSamples() {
		if s.GetTenant() != "beta" {
			t.Errorf("usage for tenants [beta nobody] has a sample of %s", s.GetTenant())
		}
	}
	if len(resp.GetSamples()) != 5 {
		t.Errorf("%d samples for beta, want 5", len(resp.GetSamples()))
	}
}
