package kubernetes

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
)

// The resources namespace.provision applies.
var (
	gvrNamespaces      = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	gvrServiceAccounts = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}
	gvrSecrets         = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
	gvrResourceQuotas  = schema.GroupVersionResource{Version: "v1", Resource: "resourcequotas"}
	gvrLimitRanges     = schema.GroupVersionResource{Version: "v1", Resource: "limitranges"}
	gvrNetworkPolicies = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}
	gvrRoles           = schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"}
	gvrRoleBindings    = schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"}
)

// objectLabels are the labels of every object namespace.provision creates.
func (sp *provisionSpec) objectLabels() map[string]string {
	return map[string]string{LabelManagedBy: ManagedByValue, LabelTenant: sp.tenant, LabelSource: sourceProvision}
}

// namespaceObject is the tenant's namespace: the params' extra labels, the
// provider's, and the Pod Security Standard enforced in it.
func (sp *provisionSpec) namespaceObject(s *settings) object {
	labels := maps.Clone(sp.labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, sp.objectLabels())
	labels[LabelTier] = sp.tierName
	for _, mode := range []string{"enforce", "audit", "warn"} {
		labels["pod-security.kubernetes.io/"+mode] = s.PodSecurity
		labels["pod-security.kubernetes.io/"+mode+"-version"] = "latest"
	}
	return newObject(gvrNamespaces, corev1ac.Namespace(sp.namespace).WithLabels(labels),
		fmt.Sprintf("namespace of tenant %s, tier %s, pod security %s", sp.tenant, sp.tierName, s.PodSecurity))
}

// agentBinding grants the agent's ServiceAccount the agent cluster role in
// the namespace.
func (sp *provisionSpec) agentBinding(s *settings) object {
	rb := rbacv1ac.RoleBinding(agentBindingName, sp.namespace).WithLabels(sp.objectLabels()).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("ClusterRole").WithName(s.AgentClusterRole)).
		WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithNamespace(s.agentNS).WithName(s.agentName))
	return newObject(gvrRoleBindings, rb, fmt.Sprintf("lets ServiceAccount %s/%s act in the namespace as ClusterRole %s", s.agentNS, s.agentName, s.AgentClusterRole))
}

// appRules is what the app's Role grants: reading its namespace's
// configuration and peers, nothing else (no Secrets: they are mounted).
var appRules = []struct {
	group     string
	resources []string
}{
	{"", []string{"configmaps", "endpoints", "pods", "services"}},
	{"discovery.k8s.io", []string{"endpointslices"}},
}

// objects are the namespace's other objects, in units applied one after
// the other (the app's Role before its RoleBinding); units run
// concurrently.
func (sp *provisionSpec) objects() [][]object {
	ns, labels := sp.namespace, sp.objectLabels()
	all := metav1ac.LabelSelector()
	var units [][]object
	one := func(o object) { units = append(units, []object{o}) }

	one(newObject(gvrNetworkPolicies, networkingv1ac.NetworkPolicy(defaultDenyName, ns).WithLabels(labels).
		WithSpec(networkingv1ac.NetworkPolicySpec().WithPodSelector(all).WithPolicyTypes(networkingv1.PolicyTypeIngress)),
		"denies all ingress to the namespace's pods that no other policy allows"))
	one(newObject(gvrNetworkPolicies, networkingv1ac.NetworkPolicy(sameNSName, ns).WithLabels(labels).
		WithSpec(networkingv1ac.NetworkPolicySpec().WithPodSelector(all).WithPolicyTypes(networkingv1.PolicyTypeIngress).
			WithIngress(networkingv1ac.NetworkPolicyIngressRule().WithFrom(networkingv1ac.NetworkPolicyPeer().WithPodSelector(metav1ac.LabelSelector())))),
		"allows ingress from pods of the same namespace"))
	for _, r := range sp.ingress {
		one(r.object(ns, labels))
	}

	hard := corev1.ResourceList{}
	for _, k := range slices.Sorted(maps.Keys(sp.tier.Quota)) {
		hard[corev1.ResourceName(k)] = resource.MustParse(sp.tier.Quota[k])
	}
	one(newObject(gvrResourceQuotas, corev1ac.ResourceQuota(tierObjectName, ns).WithLabels(labels).
		WithSpec(corev1ac.ResourceQuotaSpec().WithHard(hard)),
		fmt.Sprintf("quota of tier %s: %s", sp.tierName, listQuota(sp.tier.Quota))))
	l := sp.tier.Limits
	one(newObject(gvrLimitRanges, corev1ac.LimitRange(tierObjectName, ns).WithLabels(labels).
		WithSpec(corev1ac.LimitRangeSpec().WithLimits(corev1ac.LimitRangeItem().WithType(corev1.LimitTypeContainer).
			WithDefault(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(l.DefaultCPU), corev1.ResourceMemory: resource.MustParse(l.DefaultMemory)}).
			WithDefaultRequest(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(l.DefaultRequestCPU), corev1.ResourceMemory: resource.MustParse(l.DefaultRequestMemory)}))),
		fmt.Sprintf("container defaults of tier %s: request cpu %s memory %s, limit cpu %s memory %s", sp.tierName, l.DefaultRequestCPU, l.DefaultRequestMemory, l.DefaultCPU, l.DefaultMemory)))

	one(newObject(gvrServiceAccounts, corev1ac.ServiceAccount(sp.serviceAccount, ns).WithLabels(labels), "the app's ServiceAccount"))
	role := rbacv1ac.Role(appRoleName, ns).WithLabels(labels)
	for _, r := range appRules {
		role.WithRules(rbacv1ac.PolicyRule().WithAPIGroups(r.group).WithResources(r.resources...).WithVerbs("get", "list", "watch"))
	}
	units = append(units, []object{
		newObject(gvrRoles, role, "the app may read configmaps, endpoints, endpointslices, pods and services of its namespace"),
		newObject(gvrRoleBindings, rbacv1ac.RoleBinding(appRoleName, ns).WithLabels(labels).
			WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("Role").WithName(appRoleName)).
			WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithNamespace(ns).WithName(sp.serviceAccount)),
			fmt.Sprintf("grants Role %s to ServiceAccount %s", appRoleName, sp.serviceAccount)),
	})
	for _, sec := range sp.secrets_ {
		keys := slices.Sorted(maps.Keys(sec.data))
		one(newObject(gvrSecrets, corev1ac.Secret(sec.name, ns).WithLabels(labels).WithType(corev1.SecretTypeOpaque).WithData(sec.data),
			fmt.Sprintf("Secret with keys %s (values not shown)", strings.Join(keys, ", "))))
	}
	return units
}

// object is the NetworkPolicy allow-<name> for r.
func (r ingressRule) object(ns string, labels map[string]string) object {
	peer := networkingv1ac.NetworkPolicyPeer()
	var from string
	if r.cidr != "" {
		peer.WithIPBlock(networkingv1ac.IPBlock().WithCIDR(r.cidr))
		from = "addresses " + r.cidr
	} else {
		peer.WithNamespaceSelector(metav1ac.LabelSelector().WithMatchLabels(r.nsLabels))
		from = "namespaces labelled " + listLabels(r.nsLabels)
		if len(r.podLabels) > 0 {
			peer.WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(r.podLabels))
			from += ", pods labelled " + listLabels(r.podLabels)
		}
	}
	rule := networkingv1ac.NetworkPolicyIngressRule().WithFrom(peer)
	ports := "all ports"
	if len(r.ports) > 0 {
		var ps []string
		for _, p := range r.ports {
			rule.WithPorts(networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt32(p)))
			ps = append(ps, fmt.Sprint(p))
		}
		ports = "TCP " + strings.Join(ps, ", ")
	}
	np := networkingv1ac.NetworkPolicy("allow-"+r.name, ns).WithLabels(labels).
		WithSpec(networkingv1ac.NetworkPolicySpec().WithPodSelector(metav1ac.LabelSelector()).
			WithPolicyTypes(networkingv1.PolicyTypeIngress).WithIngress(rule))
	return newObject(gvrNetworkPolicies, np, fmt.Sprintf("allows ingress from %s to %s", from, ports))
}

// listLabels formats labels as k=v,… sorted.
func listLabels(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

// listQuota formats a quota as k=v, … sorted.
func listQuota(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, " ")
}
