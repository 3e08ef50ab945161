package kubernetes_test

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	clientset "k8s.io/client-go/kubernetes"
)

// TestCrossNamespace provisions tenants a and b and checks that what was
// created for a grants b nothing in a's namespace: b's app ServiceAccount
// is Forbidden there (real requests), and no NetworkPolicy of a's admits
// traffic from b's pods. The test cluster runs no CNI, so the policies'
// semantics are evaluated here (admits below), with positive controls that
// show the evaluator does admit what a policy allows.
func TestCrossNamespace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true)
	p := e.provider(t, nil)
	img := image("registry.example/web", "v1")
	for _, tenant := range []string{"a", "b"} {
		mustApply(t, p, step("prov-"+tenant, "namespace.provision", tenant, nil))
		mustApply(t, p, step("m-"+tenant, "manifests.apply", tenant, map[string]any{"manifests": webManifests(1, img, true)}))
	}
	// c allows b by label and an address range, as positive controls.
	mustApply(t, p, step("prov-c", "namespace.provision", "c", map[string]any{"ingress": []any{
		map[string]any{"name": "from-b", "from_namespace_labels": map[string]any{"attache.dev/tenant": "b"}, "ports": []any{8080.0}},
	}}))
	mustApply(t, p, step("prov-d", "namespace.provision", "d", map[string]any{"ingress": []any{map[string]any{"cidr": "10.0.0.0/8"}}}))
	nsA, nsB := e.ns("a"), e.ns("b")
	waitAvailable(t, nsA, "web")
	waitAvailable(t, nsB, "web")
	ctx := t.Context()

	// RBAC: b's app identity in a's namespace, and in its own.
	bApp, err := clientset.NewForConfig(cluster(t).ServiceAccountConfig(t, nsB, "app"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		do      func() error
		allowed bool
	}{
		{"list a's secrets", func() error { _, err := bApp.CoreV1().Secrets(nsA).List(ctx, metav1.ListOptions{}); return err }, false},
		{"get a's configmap", func() error {
			_, err := bApp.CoreV1().ConfigMaps(nsA).Get(ctx, "web-config", metav1.GetOptions{})
			return err
		}, false},
		{"list a's configmaps", func() error { _, err := bApp.CoreV1().ConfigMaps(nsA).List(ctx, metav1.ListOptions{}); return err }, false},
		{"list a's pods", func() error { _, err := bApp.CoreV1().Pods(nsA).List(ctx, metav1.ListOptions{}); return err }, false},
		{"list a's services", func() error { _, err := bApp.CoreV1().Services(nsA).List(ctx, metav1.ListOptions{}); return err }, false},
		{"read a's inventory", func() error {
			_, err := bApp.CoreV1().ConfigMaps(nsA).Get(ctx, "attache-inventory-app", metav1.GetOptions{})
			return err
		}, false},
		{"list b's own secrets", func() error { _, err := bApp.CoreV1().Secrets(nsB).List(ctx, metav1.ListOptions{}); return err }, false},
		{"list b's own configmaps", func() error { _, err := bApp.CoreV1().ConfigMaps(nsB).List(ctx, metav1.ListOptions{}); return err }, true},
		{"list b's own pods", func() error { _, err := bApp.CoreV1().Pods(nsB).List(ctx, metav1.ListOptions{}); return err }, true},
	} {
		err := tc.do()
		switch {
		case tc.allowed && err != nil:
			t.Errorf("b's app: %s: %v, want allowed", tc.name, err)
		case !tc.allowed && !apierrors.IsForbidden(err):
			t.Errorf("b's app: %s: %v, want Forbidden", tc.name, err)
		}
	}

	// NetworkPolicies: nothing of a's admits b's pods.
	cs := admin(t)
	sources := podsOf(t, cs, nsB)
	if len(sources) == 0 {
		t.Fatal("no pods in b")
	}
	for _, tc := range []struct {
		ns    string
		admit bool
		why   string
	}{
		{nsA, false, "a declares no ingress allowance"},
		{e.ns("c"), true, "c allows namespaces labelled attache.dev/tenant=b"},
		{e.ns("d"), true, "d allows 10.0.0.0/8"},
	} {
		policies, err := cs.NetworkingV1().NetworkPolicies(tc.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		target := map[string]string{"app": "web"} // a pod of the target namespace
		for _, src := range sources {
			admitted, by := admits(t, policies.Items, tc.ns, target, src, 8080)
			if admitted != tc.admit {
				t.Errorf("%s: pod %s/%s admitted=%v (by %s); want %v: %s", tc.ns, src.ns.Name, src.pod.Name, admitted, by, tc.admit, tc.why)
			}
		}
	}
	// Pods of a's own namespace are admitted (allow-same-namespace).
	policies, err := cs.NetworkingV1().NetworkPolicies(nsA).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range podsOf(t, cs, nsA) {
		if ok, _ := admits(t, policies.Items, nsA, map[string]string{"app": "web"}, src, 8080); !ok {
			t.Errorf("a's own pod %s is not admitted in a", src.pod.Name)
		}
	}
}

// source is a pod sending traffic, with its namespace (for its labels) and
// an address.
type source struct {
	pod corev1.Pod
	ns  *corev1.Namespace
	ip  netip.Addr
}

// podsOf lists the pods of ns as sources; a pod without an address (no
// CNI) gets one in 10.244.0.0/16.
func podsOf(t *testing.T, cs clientset.Interface, ns string) []source {
	t.Helper()
	nsObj, err := cs.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := cs.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []source
	for i, pod := range pods.Items {
		ip, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil {
			ip = netip.MustParseAddr(fmt.Sprintf("10.244.1.%d", i+2))
		}
		out = append(out, source{pod: pod, ns: nsObj, ip: ip})
	}
	return out
}

// admits evaluates NetworkPolicy ingress semantics: traffic from src to a
// pod with labels target in namespace ns on TCP port is allowed if no
// Ingress policy selects the target pod, or if some ingress rule of a
// policy selecting it matches src and the port. A rule's peer matches by
// ipBlock (address in cidr and not in except), or by podSelector alone
// (pods of the policy's own namespace), namespaceSelector alone (every pod
// of matching namespaces) or both (matching pods of matching namespaces);
// a rule without peers matches every source, without ports every port.
// It returns which policy admitted it.
func admits(t *testing.T, policies []networkingv1.NetworkPolicy, ns string, target map[string]string, src source, port int) (bool, string) {
	t.Helper()
	sel := func(s *metav1.LabelSelector) labels.Selector {
		x, err := metav1.LabelSelectorAsSelector(s)
		if err != nil {
			t.Fatalf("selector %v: %v", s, err)
		}
		return x
	}
	isolated := false
	for _, np := range policies {
		if !sel(&np.Spec.PodSelector).Matches(labels.Set(target)) {
			continue
		}
		ingress := len(np.Spec.PolicyTypes) == 0
		for _, pt := range np.Spec.PolicyTypes {
			ingress = ingress || pt == networkingv1.PolicyTypeIngress
		}
		if !ingress {
			continue
		}
		isolated = true
		for _, rule := range np.Spec.Ingress {
			if !portMatches(rule.Ports, port) {
				continue
			}
			if len(rule.From) == 0 {
				return true, np.Name
			}
			for _, peer := range rule.From {
				if peerMatches(peer, ns, src, sel, t) {
					return true, np.Name
				}
			}
		}
	}
	if !isolated {
		return true, "(no policy selects the pod)"
	}
	return false, ""
}

func portMatches(ports []networkingv1.NetworkPolicyPort, port int) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if p.Port == nil {
			return true
		}
		lo := p.Port.IntValue() // named ports are not used by the provider
		hi := lo
		if p.EndPort != nil {
			hi = int(*p.EndPort)
		}
		if port >= lo && port <= hi {
			return true
		}
	}
	return false
}

func peerMatches(peer networkingv1.NetworkPolicyPeer, policyNS string, src source, sel func(*metav1.LabelSelector) labels.Selector, t *testing.T) bool {
	if peer.IPBlock != nil {
		cidr, err := netip.ParsePrefix(peer.IPBlock.CIDR)
		if err != nil {
			t.Fatalf("ipBlock %q: %v", peer.IPBlock.CIDR, err)
		}
		if !cidr.Contains(src.ip) {
			return false
		}
		for _, ex := range peer.IPBlock.Except {
			if e, err := netip.ParsePrefix(ex); err == nil && e.Contains(src.ip) {
				return false
			}
		}
		return true
	}
	nsOK := src.ns.Name == policyNS
	if peer.NamespaceSelector != nil {
		nsOK = sel(peer.NamespaceSelector).Matches(labels.Set(src.ns.Labels))
	}
	podOK := true
	if peer.PodSelector != nil {
		podOK = sel(peer.PodSelector).Matches(labels.Set(src.pod.Labels))
	}
	return nsOK && podOK
}
