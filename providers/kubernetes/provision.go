package kubernetes

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/protobuf/types/known/structpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
)

func init() {
	register(&providerv1.ActionInfo{
		Name:    "namespace.provision",
		Summary: "create or update a tenant's namespace: labels, default-deny and allowed ingress NetworkPolicies, ResourceQuota and LimitRange of its tier, ServiceAccount with a read-only Role, Secrets from secrets_dir, and the agent's RoleBinding",
		Params: []*providerv1.ParamInfo{
			{Name: "tenant", Type: "string", Description: "tenant id, a DNS label (default: the step's tenant); the namespace is namespace_prefix + tenant"},
			{Name: "tier", Type: "string", Description: "tier whose quota and limits apply (default pool; a tier of the configuration)"},
			{Name: "labels", Type: "object", Description: "extra namespace labels (not managed-by, attache.dev/*, *kubernetes.io/*, *k8s.io/*)"},
			{Name: "ingress", Type: "array<object>", Description: "allowed ingress: {name, from_namespace_labels, from_pod_labels, cidr, ports}; everything else from outside the namespace is denied"},
			{Name: "service_account", Type: "string", Description: "the app's ServiceAccount (default app), bound to Role app: read configmaps, services, endpoints, pods"},
			{Name: "secrets", Type: "array<object>", Description: "Secrets {name, data: {key: file in secrets_dir}}; values never appear in plans, results or logs"},
		},
	}, parseProvision, planProvision, applyProvision)
}

// Fixed names in every tenant namespace.
const (
	agentBindingName = "attache-agent"
	appRoleName      = "app"
	tierObjectName   = "attache-tier"
	defaultDenyName  = "default-deny"
	sameNSName       = "allow-same-namespace"
	sourceProvision  = "provision"
)

// provisionSpec is a validated namespace.provision step.
type provisionSpec struct {
	target
	tierName       string
	tier           Tier
	labels         map[string]string
	ingress        []ingressRule
	serviceAccount string
	secrets_       []secretSpec
	values         []string // the secrets' values, for scrubbing
}

func (s *provisionSpec) secrets() []string { return s.values }

// ingressRule is one declared ingress allowance: from namespaces (and
// optionally pods in them) with labels, or from an address range; to the
// listed TCP ports of every pod of the namespace (all ports if none).
type ingressRule struct {
	name      string
	nsLabels  map[string]string
	podLabels map[string]string
	cidr      string
	ports     []int32
}

// secretSpec is one Secret: data key → content read from a file.
type secretSpec struct {
	name string
	data map[string][]byte
}

func parseProvision(e *env, step *providerv1.Step) (*provisionSpec, error) {
	p := sdk.NewParams(step.GetParams())
	raw := step.GetParams().GetFields()
	sp := &provisionSpec{target: readTarget(p, &e.s, step)}
	sp.tierName = p.String("tier", false)
	if sp.tierName == "" && !p.Has("tier") {
		sp.tierName = "pool"
	}
	if t, ok := e.s.tiers[sp.tierName]; ok {
		sp.tier = t
	} else if p.Has("tier") || sp.tierName != "" {
		p.Fail("tier", "unknown tier %q (configured: %s)", sp.tierName, strings.Join(slices.Sorted(maps.Keys(e.s.tiers)), ", "))
	}
	sp.labels = stringMap(p, raw, "labels", false)
	if checkLabels(p, p.Field("labels"), sp.labels) {
		for _, k := range slices.Sorted(maps.Keys(sp.labels)) {
			if reservedLabel(k) {
				p.FailPath(p.Field("labels")+"."+k, "is set by the provider or reserved by Kubernetes; choose another key")
			}
		}
	}
	sp.ingress = readIngress(p, raw)
	sp.serviceAccount = p.String("service_account", false)
	if sp.serviceAccount == "" {
		sp.serviceAccount = "app"
	}
	dnsName(p, "service_account", sp.serviceAccount)
	sp.secrets_, sp.values = readSecrets(p, raw, &e.s)
	if err := p.Err(); err != nil {
		return nil, err
	}
	return sp, nil
}

// readIngress reads the ingress allowances.
func readIngress(p *sdk.Params, raw map[string]*structpb.Value) []ingressRule {
	var out []ingressRule
	names := map[string]int{}
	for i, el := range objectList(p, raw, "ingress") {
		o := el.p
		r := ingressRule{name: o.String("name", false)}
		if r.name == "" {
			r.name = fmt.Sprintf("ingress-%d", i)
		}
		if msgs := validation.IsDNS1123Label(r.name); len(msgs) > 0 || len("allow-"+r.name) > 253 {
			o.Fail("name", "must be a DNS label, got %q", r.name)
		}
		if j, dup := names[r.name]; dup {
			o.Fail("name", "%q is also the name of ingress[%d]", r.name, j)
		}
		names[r.name] = i
		r.nsLabels = stringMap(o, el.raw, "from_namespace_labels", false)
		r.podLabels = stringMap(o, el.raw, "from_pod_labels", false)
		checkLabels(o, o.Field("from_namespace_labels"), r.nsLabels)
		checkLabels(o, o.Field("from_pod_labels"), r.podLabels)
		r.cidr = o.String("cidr", false)
		switch {
		case r.cidr != "" && (len(r.nsLabels) > 0 || len(r.podLabels) > 0):
			o.Fail("cidr", "set cidr or from_namespace_labels (with from_pod_labels), not both")
		case r.cidr != "":
			if pfx, err := netip.ParsePrefix(r.cidr); err != nil || pfx.Masked() != pfx {
				o.Fail("cidr", "must be a CIDR such as 10.0.0.0/8 (address bits past the mask unset), got %q", r.cidr)
			}
		case len(r.nsLabels) == 0 && len(r.podLabels) > 0:
			o.Fail("from_namespace_labels", "required with from_pod_labels: it says which namespaces' pods (pods of this namespace are allowed already)")
		case len(r.nsLabels) == 0:
			o.Fail("from_namespace_labels", "set from_namespace_labels or cidr (to allow everything, use cidr 0.0.0.0/0)")
		}
		if o.Has("ports") {
			v := el.raw["ports"]
			_, isList := v.GetKind().(*structpb.Value_ListValue)
			if _, isNull := v.GetKind().(*structpb.Value_NullValue); !isList && !isNull {
				o.Fail("ports", "must be a list of port numbers")
			}
			for j, pv := range v.GetListValue().GetValues() {
				n, ok := pv.GetKind().(*structpb.Value_NumberValue)
				if !ok || n.NumberValue != float64(int32(n.NumberValue)) || n.NumberValue < 1 || n.NumberValue > 65535 {
					o.FailPath(fmt.Sprintf("%s[%d]", o.Field("ports"), j), "must be a port number 1..65535")
					continue
				}
				r.ports = append(r.ports, int32(n.NumberValue))
			}
		}
		out = append(out, r)
	}
	return out
}

// readSecrets reads the secrets parameter and the files it names.
func readSecrets(p *sdk.Params, raw map[string]*structpb.Value, s *settings) ([]secretSpec, []string) {
	els := objectList(p, raw, "secrets")
	if len(els) == 0 {
		return nil, nil
	}
	root, rootErr := s.openSecretsDir()
	if rootErr == nil {
		defer root.Close()
	}
	var out []secretSpec
	var values []string
	names := map[string]int{}
	for i, el := range els {
		o := el.p
		sec := secretSpec{name: o.String("name", true), data: map[string][]byte{}}
		dnsName(o, "name", sec.name)
		if j, dup := names[sec.name]; dup && sec.name != "" {
			o.Fail("name", "%q is also the name of secrets[%d]", sec.name, j)
		}
		names[sec.name] = i
		files := stringMap(o, el.raw, "data", true)
		total := 0
		for _, key := range slices.Sorted(maps.Keys(files)) {
			field := o.Field("data") + "." + key
			if msgs := validation.IsConfigMapKey(key); len(msgs) > 0 {
				o.FailPath(field, "not a valid Secret key: %s", strings.Join(msgs, "; "))
				continue
			}
			if err := checkSecretFile(files[key]); err != nil {
				o.FailPath(field, "%v", err)
				continue
			}
			if rootErr != nil {
				o.FailPath(field, "%v", rootErr)
				continue
			}
			b, err := readSecretFile(root, files[key])
			if err != nil {
				o.FailPath(field, "%v", err)
				continue
			}
			total += len(b)
			sec.data[key] = b
			values = append(values, string(b))
		}
		if total > maxSecretBytes {
			o.Fail("data", "the files hold %d bytes; a Secret holds at most 1 MiB", total)
		}
		out = append(out, sec)
	}
	return out, values
}

func planProvision(ctx context.Context, e *env, sp *provisionSpec) (changes, error) {
	return e.provision(ctx, sp, true, nil)
}

func applyProvision(ctx context.Context, e *env, sp *provisionSpec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	cs, err := e.provision(ctx, sp, false, progress)
	if err != nil {
		return nil, err
	}
	return succeeded(fmt.Sprintf("namespace %s of tenant %s: %s", sp.namespace, sp.tenant, cs.tally()), cs, map[string]any{
		"namespace":       sp.namespace,
		"service_account": sp.serviceAccount,
	}), nil
}

// provision applies (or, with dryRun, plans) the namespace and its
// objects in order: the namespace, the agent's RoleBinding (the agent may
// do nothing else in the namespace before it exists), everything else
// concurrently (the app's Role before its RoleBinding), then deletes what
// an earlier provision created and this one no longer declares (ingress
// policies, Secrets, a renamed ServiceAccount).
func (e *env) provision(ctx context.Context, sp *provisionSpec, dryRun bool, progress sdk.ProgressFunc) (changes, error) {
	nsObj := sp.namespaceObject(&e.s)
	live, err := e.get(ctx, nsObj)
	if err != nil {
		return nil, err
	}
	if live != nil {
		if err := checkOwned(live, sp.tenant); err != nil {
			return nil, err
		}
		if live.GetDeletionTimestamp() != nil {
			return nil, sdk.FailedPrecondition("namespace %s is being deleted; provision it again once it is gone", sp.namespace)
		}
	}
	fresh := live == nil
	var cs changes
	c, err := e.applyObject(ctx, nsObj, live, dryRun)
	if err != nil {
		return nil, err
	}
	cs = append(cs, c)
	sdk.Report(progress, c.resource, opWord(c.op))

	rb := sp.agentBinding(&e.s)
	var rbLive *unstructured.Unstructured
	if !fresh {
		// Not yet bound, the agent may not read it: then it is missing.
		if rbLive, err = e.get(ctx, rb); err != nil && !isForbidden(err) {
			return nil, err
		}
	}
	c, err = e.applyObject(ctx, rb, rbLive, dryRun)
	if err != nil {
		return nil, err
	}
	cs = append(cs, c)
	sdk.Report(progress, c.resource, opWord(c.op))
	bound := rbLive != nil
	retry := !dryRun && c.op != opNoop

	units := sp.objects()
	var flat []object
	for _, u := range units {
		flat = append(flat, u...)
	}
	results := make([]change, len(flat))
	var fns []func() error
	i := 0
	for _, u := range units {
		first := i
		i += len(u)
		fns = append(fns, func() error {
			for j, o := range u {
				c, err := e.applyOne(ctx, o, fresh, bound, retry, dryRun)
				if err != nil {
					return err
				}
				results[first+j] = c
			}
			return nil
		})
	}
	if err := parallel(8, fns); err != nil {
		return nil, err
	}
	cs = append(cs, results...)
	sdk.Report(progress, "namespace "+sp.namespace, fmt.Sprintf("%d objects applied", len(results)))
	if fresh || (!bound && dryRun) {
		return cs, nil
	}
	pruned, err := e.prune(ctx, sp.namespace, flat, dryRun)
	if err != nil {
		return nil, err
	}
	return append(cs, pruned...), nil
}

// applyOne applies one object of the namespace: in a fresh namespace
// there is nothing to read first; in one the agent was only just bound to
// (retry), requests are retried while the API server's authorizer has not
// seen the binding yet.
func (e *env) applyOne(ctx context.Context, o object, fresh, bound, retry, dryRun bool) (change, error) {
	var c change
	err := retryWhen(ctx, retry, func() error {
		var live *unstructured.Unstructured
		if !fresh {
			var err error
			live, err = e.get(ctx, o)
			if err != nil {
				if dryRun && !bound && isForbidden(err) {
					live = nil // not readable before the binding exists: planned as new
				} else {
					return err
				}
			}
		}
		var err error
		c, err = e.applyObject(ctx, o, live, dryRun)
		return err
	})
	return c, err
}

// retryWhen is retryForbidden if retry, else fn once.
func retryWhen(ctx context.Context, retry bool, fn func() error) error {
	if retry {
		return retryForbidden(ctx, fn)
	}
	return fn()
}

// prunable are the kinds namespace.provision creates a variable number
// of, and so may have to delete.
var prunable = []struct {
	gvr        schema.GroupVersionResource
	apiVersion string
	kind       string
}{
	{gvrNetworkPolicies, "networking.k8s.io/v1", "NetworkPolicy"},
	{gvrSecrets, "v1", "Secret"},
	{gvrServiceAccounts, "v1", "ServiceAccount"},
}

// prune deletes (or plans deleting) the objects labelled as provisioned
// that want no longer lists.
func (e *env) prune(ctx context.Context, namespace string, want []object, dryRun bool) (changes, error) {
	keep := map[string]bool{}
	for _, o := range want {
		keep[o.resource()] = true
	}
	var cs changes
	sel := LabelSource + "=" + sourceProvision
	for _, k := range prunable {
		list, err := e.client(k.gvr, namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return nil, apiError(fmt.Sprintf("list %ss in %s", k.kind, namespace), err)
		}
		for _, item := range list.Items {
			res := resourceName(k.apiVersion, k.kind, namespace, item.GetName())
			if keep[res] {
				continue
			}
			if !dryRun {
				if err := e.deleteObject(ctx, k.gvr, namespace, item.GetName(), res); err != nil {
					return nil, err
				}
			}
			cs.add(res, opDelete, "no longer declared by namespace.provision")
		}
	}
	return cs, nil
}

// checkOwned refuses a namespace that attache does not manage for tenant.
func checkOwned(ns *unstructured.Unstructured, tenant string) error {
	l := ns.GetLabels()
	switch {
	case l[LabelManagedBy] != ManagedByValue:
		return sdk.FailedPrecondition("namespace %s exists and is not managed by attache (no label %s=%s): refusing to take it over", ns.GetName(), LabelManagedBy, ManagedByValue)
	case l[LabelTenant] != tenant:
		return sdk.FailedPrecondition("namespace %s is managed by attache for tenant %q, not %q", ns.GetName(), l[LabelTenant], tenant)
	}
	return nil
}

// opWord is how progress says what happened to an object.
func opWord(op providerv1.Operation) string {
	switch op {
	case opCreate:
		return "created"
	case opUpdate:
		return "updated"
	case opDelete:
		return "deleted"
	}
	return "unchanged"
}
