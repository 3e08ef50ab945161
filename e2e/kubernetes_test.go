package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/e2e/harness"
	"attache.dev/attache/providers/kubernetes/rbac"
	"attache.dev/attache/testenv/kubetest"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// k8sTenants are the tenants the one agent provisions, each in its own
// namespace (tenant-<name>) and tier.
var k8sTenants = []struct{ name, tier, quotaCPU string }{
	{"acme", "pool", "2"},
	{"beta", "bridge", "4"},
	{"gamma", "silo", "16"},
}

// k8sImage is a digest-pinned image reference for repo, its digest derived
// from seed.
func k8sImage(repo, seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return repo + "@sha256:" + hex.EncodeToString(sum[:])
}

// k8sRelease is what each tenant runs: a Deployment web (3 replicas of img,
// meeting the restricted Pod Security Standard the provider enforces) and a
// Service.
func k8sRelease(img string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: web
          image: %s
          ports: [{containerPort: 8080}]
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: 200m, memory: 128Mi}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`, img)
}

// k8sProvisionPlan provisions every tenant of k8sTenants and applies
// k8sRelease(img) into its namespace. The agent's own tenant is the vendor's
// cell; the steps' tenant parameter names the customer tenant.
func k8sProvisionPlan(img string) string {
	var b strings.Builder
	b.WriteString("version: 1\nexpires_in: 1h\nsteps:\n")
	manifests := "        " + strings.ReplaceAll(strings.TrimSuffix(k8sRelease(img), "\n"), "\n", "\n        ")
	for _, tn := range k8sTenants {
		fmt.Fprintf(&b, `  - id: provision-%[1]s
    provider: kubernetes
    action: namespace.provision
    resource: tenant-%[1]s
    params:
      tenant: %[1]s
      tier: %[2]s
  - id: apply-%[1]s
    provider: kubernetes
    action: manifests.apply
    resource: tenant-%[1]s/app
    depends_on: [provision-%[1]s]
    params:
      tenant: %[1]s
      manifests: |
%[3]s
`, tn.name, tn.tier, manifests)
	}
	return b.String()
}

// k8sUpgradePlan upgrades tenant's Deployment web to img.
func k8sUpgradePlan(tenant, img, deadline string) string {
	return fmt.Sprintf(`version: 1
expires_in: 1h
steps:
  - id: upgrade-%[1]s
    provider: kubernetes
    action: deployment.upgrade
    resource: tenant-%[1]s/web
    params:
      tenant: %[1]s
      deployment: web
      images: {web: "%[2]s"}
      progress_deadline: %[3]s
`, tenant, img, deadline)
}

// TestKubernetesTenants runs the Kubernetes provider end to end: control
// plane → agent → attache-provider-kubernetes (a go-plugin process holding
// only the agent ServiceAccount's token, as a customer installs it from
// providers/kubernetes/rbac) → a real API server with kube-controller-manager
// and kwok. One agent provisions three tenant namespaces and deploys the
// release into each, upgrades one tenant's Deployment to a new image, and
// then upgrades another to an image whose Pods never become Ready: that
// upgrade is rolled back automatically and the plan fails with the reason.
func TestKubernetesTenants(t *testing.T) {
	t.Parallel()
	cluster := kubetest.Start(t)
	kube := cluster.Client(t)
	applyAgentRBAC(t, cluster.Config)
	kubeconfig := filepath.Join(t.TempDir(), "agent.kubeconfig")
	if err := kubetest.WriteKubeconfig(kubeconfig, cluster.ServiceAccountConfig(t, rbac.Namespace, rbac.ServiceAccount)); err != nil {
		t.Fatal(err)
	}

	env := harness.New(t)
	cp := env.StartControlPlane(t, harness.CPOptions{})
	cp.WaitReady(t)
	cp.CreateTenant(t, "vendor-cell")
	config := env.AgentConfig(t, harness.Provider{
		Name: "kubernetes", Bin: harness.KubernetesProviderBin,
		Config: map[string]any{"kubeconfig": kubeconfig, "namespace_prefix": "tenant-"},
	})
	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "vendor-cell"), Config: config})
	a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	cp.AwaitAgent(t, "vendor-cell", "the agent to be connected", 20*time.Second, isConnected(id))

	ctx := t.Context()
	v1, v2 := k8sImage("registry.example/app", "v1"), k8sImage("registry.example/app", "v2")
	bad := k8sImage("registry.example/app-"+kubetest.NeverReadyImage, "v3")

	// Plan 1: three tenant namespaces, each with the release.
	p, stderr, code := cp.SubmitPlanWait(t, "vendor-cell", k8sProvisionPlan(v1))
	if code != 0 || p.State != harness.PlanSucceeded {
		t.Fatalf("provision plan %s: %s (exit %d): %s%s\nstderr: %s\nagent log:\n%s", p.ID, p.State, code, p.Message, harness.StepSummary(p), stderr, a.Log())
	}
	for _, tn := range k8sTenants {
		ns := "tenant-" + tn.name
		n, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("namespace of %s: %v", tn.name, err)
		}
		if n.Labels["app.kubernetes.io/managed-by"] != "attache" || n.Labels["attache.dev/tenant"] != tn.name {
			t.Errorf("namespace %s labels: %v", ns, n.Labels)
		}
		if n.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
			t.Errorf("namespace %s enforces pod security %q, want restricted", ns, n.Labels["pod-security.kubernetes.io/enforce"])
		}
		for _, name := range []string{"default-deny", "allow-same-namespace"} {
			if _, err := kube.NetworkingV1().NetworkPolicies(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
				t.Errorf("NetworkPolicy %s/%s: %v", ns, name, err)
			}
		}
		q, err := kube.CoreV1().ResourceQuotas(ns).Get(ctx, "attache-tier", metav1.GetOptions{})
		if err != nil {
			t.Errorf("ResourceQuota of %s: %v", ns, err)
		} else if cpu := q.Spec.Hard["requests.cpu"]; cpu.String() != tn.quotaCPU {
			t.Errorf("ResourceQuota of %s (tier %s): requests.cpu %s, want %s", ns, tn.tier, cpu.String(), tn.quotaCPU)
		}
		if _, err := kube.CoreV1().LimitRanges(ns).Get(ctx, "attache-tier", metav1.GetOptions{}); err != nil {
			t.Errorf("LimitRange of %s: %v", ns, err)
		}
		if _, err := kube.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{}); err != nil {
			t.Errorf("Service %s/web: %v", ns, err)
		}
		awaitDeployment(t, kube, ns, v1)
	}

	// Plan 2: acme's Deployment to a new image; the others stay.
	p, stderr, code = cp.SubmitPlanWait(t, "vendor-cell", k8sUpgradePlan("acme", v2, "60s"))
	if code != 0 || p.State != harness.PlanSucceeded {
		t.Fatalf("upgrade plan %s: %s (exit %d): %s%s\nstderr: %s\nagent log:\n%s", p.ID, p.State, code, p.Message, harness.StepSummary(p), stderr, a.Log())
	}
	p = cp.Plan(t, p.ID)
	if s := harness.Step(t, p, "upgrade-acme"); s.State != "succeeded" || s.Outputs["rolled_back"] == "true" ||
		s.Outputs["revision"] != "2" || s.Outputs["previous_revision"] != "1" {
		t.Errorf("step upgrade-acme: %s %q outputs %v; want succeeded, revision 2 from 1", s.State, s.Message, s.Outputs)
	}
	if show := cp.CLI(t, "plan", "show", p.ID); !strings.Contains(show, "upgrade-acme") || !strings.Contains(show, "succeeded") {
		t.Errorf("plan show of the upgrade:\n%s", show)
	}
	awaitDeployment(t, kube, "tenant-acme", v2)
	for _, tenant := range []string{"beta", "gamma"} {
		awaitDeployment(t, kube, "tenant-"+tenant, v1)
	}

	// Plan 3: beta's Deployment to an image whose Pods never become Ready.
	// The rollout misses its progress deadline, the provider rolls it back
	// and the plan fails saying so.
	start := time.Now()
	p = cp.SubmitPlan(t, "vendor-cell", k8sUpgradePlan("beta", bad, "10s"))
	p = cp.AwaitPlan(t, p.ID, harness.PlanFailed, 2*time.Minute)
	t.Logf("the failing upgrade was rolled back and reported in %s: %s", time.Since(start).Round(100*time.Millisecond), p.Message)
	for _, want := range []string{"rolled back", "ProgressDeadlineExceeded"} {
		if !strings.Contains(p.Message, want) {
			t.Errorf("plan %s message does not say %q: %s", p.ID, want, p.Message)
		}
	}
	if s := harness.Step(t, p, "upgrade-beta"); s.State != "failed" || !strings.Contains(s.Message, "rolled back") ||
		s.Outputs["rolled_back"] != "true" || s.Outputs["previous_revision"] != "1" {
		t.Errorf("step upgrade-beta: %s %q outputs %v; want failed, rolled back to revision 1", s.State, s.Message, s.Outputs)
	}
	status, _, code := cp.CLIErr(t, "plan", "status", p.ID)
	if !strings.Contains(status, "failed") || !strings.Contains(status, "rolled back") || !strings.Contains(status, "ProgressDeadlineExceeded") {
		t.Errorf("plan status (exit %d) does not show the rollback and its reason:\n%s", code, status)
	}
	awaitDeployment(t, kube, "tenant-beta", v1)
	awaitDeployment(t, kube, "tenant-acme", v2)
	awaitDeployment(t, kube, "tenant-gamma", v1)
}

// awaitDeployment waits until Deployment web in ns runs img on all of its 3
// replicas, every one updated and available, and is Available.
func awaitDeployment(t *testing.T, kube kubernetes.Interface, ns, img string) {
	t.Helper()
	harness.Eventually(t, fmt.Sprintf("deployment %s/web available on %s", ns, img), 60*time.Second, func() (bool, string) {
		d, err := kube.AppsV1().Deployments(ns).Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if got := d.Spec.Template.Spec.Containers[0].Image; got != img {
			return false, "image " + got
		}
		available := false
		for _, c := range d.Status.Conditions {
			if c.Type == appsv1.DeploymentAvailable && c.Status == "True" {
				available = true
			}
		}
		st := d.Status
		why := fmt.Sprintf("generation %d observed %d, replicas %d updated %d ready %d available %d, Available %t",
			d.Generation, st.ObservedGeneration, st.Replicas, st.UpdatedReplicas, st.ReadyReplicas, st.AvailableReplicas, available)
		return st.ObservedGeneration >= d.Generation && st.Replicas == 3 && st.UpdatedReplicas == 3 &&
			st.AvailableReplicas == 3 && available, why
	})
}

// applyAgentRBAC applies providers/kubernetes/rbac's agent.yaml as
// cluster-admin, as the customer's installer does.
func applyAgentRBAC(t *testing.T, admin *rest.Config) {
	t.Helper()
	objs, err := rbac.Objects()
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(kube.Discovery()))
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("agent.yaml: %s %s: %v", o.GetKind(), o.GetName(), err)
		}
		var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			r = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		if _, err := r.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "e2e-installer", Force: true}); err != nil {
			t.Fatalf("apply %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
}
