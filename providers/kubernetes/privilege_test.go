package kubernetes_test

import (
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clientset "k8s.io/client-go/kubernetes"
)

// TestLeastPrivilege runs every action as the agent's ServiceAccount with
// exactly rbac.Manifest's rights, then checks what that identity may not
// do: read Secrets outside tenant namespaces, grant itself more, or touch
// namespaces attache does not manage.
func TestLeastPrivilege(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	e.writeSecret(t, "db.pw", "pw-acme-0123456789")
	e.writeSecret(t, "db.user", "app")
	p := e.provider(t, nil)
	ns := e.ns("acme")
	v1, v2 := image("registry.example/web", "v1"), image("registry.example/web", "v2")

	prov := step("prov", "namespace.provision", "acme", provisionParams(nil))
	mustPlan(t, p, prov)
	mustApply(t, p, prov)
	if again := mustApply(t, p, prov); !allNoop(again.GetChanges()) {
		t.Errorf("second provision as the agent:%s", describe(again.GetChanges()))
	}
	m := step("m", "manifests.apply", "acme", map[string]any{"manifests": webManifests(2, v1, true)})
	mustPlan(t, p, m)
	mustApply(t, p, m)
	waitAvailable(t, ns, "web")
	up := step("up", "deployment.upgrade", "acme", map[string]any{"deployment": "web", "images": map[string]any{"web": v2}, "progress_deadline": "30s"})
	mustPlan(t, p, up)
	if res := mustApply(t, p, up); output(res, "revision") != "2" {
		t.Errorf("upgrade as the agent: %v", res.GetOutputs())
	}
	h, err := p.Health(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range h.GetComponents() {
		if c.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY && (c.GetName() == "kubernetes" || c.GetName() == "kubernetes/acme") {
			t.Errorf("health as the agent: %s %s %s", c.GetName(), c.GetStatus(), c.GetMessage())
		}
	}
	u, err := p.Usage(t.Context(), &providerv1.UsageRequest{Tenants: []string{"acme"}})
	if err != nil || len(u.GetSamples()) == 0 {
		t.Errorf("usage as the agent: %v %v", u.GetSamples(), err)
	}
	erase := step("erase", "namespace.erase", "acme", map[string]any{"confirm": "acme"})
	mustPlan(t, p, erase)
	if res := mustApply(t, p, erase); !strings.HasPrefix(output(res, "verification"), "no namespace") {
		t.Errorf("erase as the agent: %s", res.GetMessage())
	}

	// What the agent may not do.
	cfg, _ := agent(t)
	a, err := clientset.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	foreign := e.ns("foreign")
	if _, err := admin(t).CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: foreign}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	managed := e.ns("managed")
	mustApply(t, p, step("prov", "namespace.provision", "managed", nil))
	selfBinding := func(ns, role string) *rbacv1.RoleBinding {
		return &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "attache-agent-x", Namespace: ns},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "attache-agent", Namespace: "attache-system"}},
		}
	}
	for _, tc := range []struct {
		name string
		do   func() error
		want string // in the error; "" = Forbidden by RBAC
	}{
		{"read a Secret in kube-system", func() error {
			_, err := a.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		}, ""},
		{"list Secrets cluster-wide", func() error {
			_, err := a.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
			return err
		}, ""},
		{"create a ClusterRoleBinding", func() error {
			_, err := a.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "attache-agent-admin"},
				RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
				Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "attache-agent", Namespace: "attache-system"}},
			}, metav1.CreateOptions{})
			return err
		}, ""},
		{"bind itself into kube-system", func() error {
			_, err := a.RbacV1().RoleBindings("kube-system").Create(ctx, selfBinding("kube-system", "attache-agent-tenant"), metav1.CreateOptions{})
			return err
		}, "attache-agent may create or change RoleBindings only in namespaces labelled app.kubernetes.io/managed-by=attache"},
		{"bind cluster-admin in a tenant namespace", func() error {
			_, err := a.RbacV1().RoleBindings(managed).Create(ctx, selfBinding(managed, "cluster-admin"), metav1.CreateOptions{})
			return err
		}, "is attempting to grant RBAC permissions not currently held"},
		{"label kube-system as managed", func() error {
			_, err := a.CoreV1().Namespaces().Patch(ctx, "kube-system", types.MergePatchType,
				[]byte(`{"metadata":{"labels":{"app.kubernetes.io/managed-by":"attache","attache.dev/tenant":"kube"}}}`), metav1.PatchOptions{})
			return err
		}, "attache-agent may change only namespaces already labelled app.kubernetes.io/managed-by=attache"},
		{"move a tenant namespace to another tenant", func() error {
			_, err := a.CoreV1().Namespaces().Patch(ctx, managed, types.MergePatchType,
				[]byte(`{"metadata":{"labels":{"attache.dev/tenant":"someone-else"}}}`), metav1.PatchOptions{})
			return err
		}, "keeping that label and their tenant"},
		{"create an unlabelled namespace", func() error {
			_, err := a.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns("sneaky")}}, metav1.CreateOptions{})
			return err
		}, "attache-agent may create only namespaces labelled app.kubernetes.io/managed-by=attache"},
		{"delete a namespace attache does not manage", func() error {
			return a.CoreV1().Namespaces().Delete(ctx, foreign, metav1.DeleteOptions{})
		}, "attache-agent may delete only namespaces labelled app.kubernetes.io/managed-by=attache"},
		{"read a Secret in a namespace it does not manage", func() error {
			_, err := a.CoreV1().Secrets(foreign).List(ctx, metav1.ListOptions{})
			return err
		}, ""},
		{"read nodes", func() error {
			_, err := a.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return err
		}, ""},
	} {
		err := tc.do()
		switch {
		case err == nil:
			t.Errorf("%s: allowed", tc.name)
		case !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err):
			t.Errorf("%s: %v, want Forbidden", tc.name, err)
		case tc.want == "" && !apierrors.IsForbidden(err):
			t.Errorf("%s: %v, want Forbidden by RBAC", tc.name, err)
		case !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		default:
			t.Logf("%s: refused: %v", tc.name, err)
		}
	}
	if _, err := admin(t).CoreV1().Namespaces().Get(ctx, foreign, metav1.GetOptions{}); err != nil {
		t.Errorf("foreign namespace: %v", err)
	}

	// Through the provider: a namespace attache does not manage is refused
	// before the admission policy would.
	_, err = p.Apply(ctx, step("erase", "namespace.erase", "foreign", map[string]any{"confirm": "foreign"}), nil)
	if err == nil || !strings.Contains(err.Error(), "not managed by attache") {
		t.Errorf("erase of a foreign namespace: %v", err)
	}
}
