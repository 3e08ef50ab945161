package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"strings"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/kubernetes/inventory"
	"attache.dev/attache/providers/sdk"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
)

func init() {
	register(&providerv1.ActionInfo{
		Name:    "manifests.apply",
		Summary: "server-side apply a release's manifests into the tenant's namespace, recording them in an inventory and pruning what an earlier apply of the same set created and this one no longer has",
		Params: []*providerv1.ParamInfo{
			{Name: "tenant", Type: "string", Description: "tenant id (default: the step's tenant); its namespace must have been provisioned"},
			{Name: "set", Type: "string", Description: "inventory set, a DNS label (default app): applies of one set prune each other, other sets are left alone"},
			{Name: "manifests", Type: "string", Required: true, Description: "multi-document YAML (or JSON) of namespaced objects; no Namespace, cluster-scoped kinds, RoleBindings to ClusterRoles or Secrets with data"},
		},
	}, parseManifests, planManifests, applyManifests)
}

// manifestsSpec is a validated manifests.apply step.
type manifestsSpec struct {
	target
	set  string
	objs []*unstructured.Unstructured
}

func (*manifestsSpec) secrets() []string { return nil }

func parseManifests(e *env, step *providerv1.Step) (*manifestsSpec, error) {
	p := sdk.NewParams(step.GetParams())
	sp := &manifestsSpec{target: readTarget(p, &e.s, step)}
	sp.set = p.String("set", false)
	if sp.set == "" && !p.Has("set") {
		sp.set = "app"
	}
	if msgs := validation.IsDNS1123Label(sp.set); len(msgs) > 0 {
		p.Fail("set", "must be a DNS label, got %q", sp.set)
	}
	manifests := p.String("manifests", true)
	if manifests != "" {
		objs, err := inventory.Decode([]byte(manifests))
		if err != nil {
			p.Fail("manifests", "%v", err)
		}
		if len(objs) == 0 && err == nil {
			p.Fail("manifests", "holds no object")
		}
		sp.objs = objs
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	return sp, nil
}

// applier is the inventory applier over e's clients.
func (e *env) applier() *inventory.Applier {
	return &inventory.Applier{Dynamic: e.c.dyn, Mapper: e.c.mapper, Client: e.c.kube, FieldManager: FieldManager, Log: e.log}
}

// managedNamespace reads the tenant's namespace: nil if it does not exist,
// FailedPrecondition if attache does not manage it for the tenant or it is
// being deleted.
func (e *env) managedNamespace(ctx context.Context, t target) (*unstructured.Unstructured, error) {
	ns, err := e.client(gvrNamespaces, "").Get(ctx, t.namespace, metav1.GetOptions{})
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, apiError("read namespace "+t.namespace, err)
	}
	if err := checkOwned(ns, t.tenant); err != nil {
		return nil, err
	}
	if ns.GetDeletionTimestamp() != nil {
		return nil, sdk.FailedPrecondition("namespace %s is being deleted", t.namespace)
	}
	return ns, nil
}

// notProvisioned is the error of an action that needs the namespace.
func notProvisioned(t target) error {
	return sdk.FailedPrecondition("namespace %s of tenant %s does not exist: provision it first (namespace.provision)", t.namespace, t.tenant)
}

func planManifests(ctx context.Context, e *env, sp *manifestsSpec) (changes, error) {
	ns, err := e.managedNamespace(ctx, sp.target)
	if err != nil {
		return nil, err
	}
	if ns == nil {
		// A plan that provisions the namespace in an earlier step: every
		// object is new.
		var cs changes
		for _, o := range sp.objs {
			cs.add(resourceName(o.GetAPIVersion(), o.GetKind(), sp.namespace, o.GetName()), opCreate, "create (namespace %s is not provisioned yet)", sp.namespace)
		}
		return cs, nil
	}
	a := e.applier()
	got, err := a.Apply(ctx, sp.namespace, sp.set, sp.labels(), sp.objs, true)
	if err != nil {
		return nil, inventoryError("plan set "+sp.set+" in "+sp.namespace, err)
	}
	drifts, err := a.Drift(ctx, sp.namespace, sp.set)
	if err != nil {
		return nil, inventoryError("drift of set "+sp.set+" in "+sp.namespace, err)
	}
	return withDrift(fromInventory(got), drifts), nil
}

func applyManifests(ctx context.Context, e *env, sp *manifestsSpec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	ns, err := e.managedNamespace(ctx, sp.target)
	if err != nil {
		return nil, err
	}
	if ns == nil {
		return nil, notProvisioned(sp.target)
	}
	sdk.Report(progress, "namespace "+sp.namespace, fmt.Sprintf("applying %s of set %s", plural(len(sp.objs), "object"), sp.set))
	got, err := e.applier().Apply(ctx, sp.namespace, sp.set, sp.labels(), sp.objs, false)
	if err != nil {
		return nil, inventoryError("apply set "+sp.set+" in "+sp.namespace, err)
	}
	cs := fromInventory(got)
	return succeeded(fmt.Sprintf("set %s in namespace %s: %s", sp.set, sp.namespace, cs.tally()), cs, map[string]any{
		"namespace": sp.namespace,
		"set":       sp.set,
		"objects":   len(sp.objs),
	}), nil
}

// labels are the labels on every object a manifests.apply writes.
func (t target) labels() map[string]string {
	return map[string]string{LabelManagedBy: ManagedByValue, LabelTenant: t.tenant}
}

// inventoryError maps the inventory's errors: refused manifests are
// InvalidArgument naming params.manifests, API errors as apiError.
func inventoryError(what string, err error) error {
	if errors.Is(err, inventory.ErrInvalid) {
		return sdk.InvalidArgument("params.manifests", "%v", err)
	}
	return apiError(what, err)
}

// fromInventory converts the inventory's changes.
func fromInventory(in []inventory.Change) changes {
	cs := make(changes, 0, len(in))
	for _, c := range in {
		op := opNoop
		switch c.Op {
		case inventory.Create:
			op = opCreate
		case inventory.Update:
			op = opUpdate
		case inventory.Delete:
			op = opDelete
		}
		cs = append(cs, change{resource: c.Resource, op: op, summary: c.Summary})
	}
	return cs
}

// withDrift reports drift in a plan: an object the plan re-applies only
// because its live fields differ from what was applied becomes one UPDATE
// per drifted field, "drift: spec.replicas want 3 live 5" (the apply puts
// them back); a recorded object that is gone is a CREATE saying so; drift
// on an object the plan changes anyway is added to its summary.
func withDrift(cs changes, drifts []inventory.Drift) changes {
	if len(drifts) == 0 {
		return cs
	}
	byRes := map[string][]inventory.Drift{}
	for _, d := range drifts {
		byRes[d.Resource] = append(byRes[d.Resource], d)
	}
	out := make(changes, 0, len(cs)+len(drifts))
	for _, c := range cs {
		ds, ok := byRes[c.resource]
		if !ok {
			out = append(out, c)
			continue
		}
		delete(byRes, c.resource)
		switch {
		case c.op == opNoop || strings.HasPrefix(c.summary, "live differs: "):
			for _, d := range ds {
				out = append(out, change{resource: c.resource, op: opUpdate, summary: driftSummary(d)})
			}
		case c.op == opCreate && len(ds) == 1 && ds[0].Field == "missing":
			c.summary = driftSummary(ds[0]) + "; " + c.summary
			out = append(out, c)
		default:
			c.summary += fmt.Sprintf(" (drift: %s)", driftFields(ds))
			out = append(out, c)
		}
	}
	for _, d := range drifts { // recorded objects the plan does not list
		if _, ok := byRes[d.Resource]; ok {
			out = append(out, change{resource: d.Resource, op: opUpdate, summary: driftSummary(d)})
		}
	}
	return out
}

// driftSummary formats one drift for a plan.
func driftSummary(d inventory.Drift) string {
	if d.Field == "missing" {
		return "drift: missing (deleted since the last apply)"
	}
	return fmt.Sprintf("drift: %s want %s live %s", d.Field, d.Want, d.Live)
}

// driftFields lists the drifted fields of one object.
func driftFields(ds []inventory.Drift) string {
	s := ""
	for i, d := range ds {
		if i > 0 {
			s += ", "
		}
		s += d.Field
	}
	return s
}
