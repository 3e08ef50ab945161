package kubernetes

import (
	"context"
	"fmt"
	"strings"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func init() {
	register(&providerv1.ActionInfo{
		Name:    "namespace.erase",
		Summary: "delete a tenant's inventories' objects and its namespace, wait until the namespace is gone, then verify no namespace labelled for the tenant remains",
		Params: []*providerv1.ParamInfo{
			{Name: "tenant", Type: "string", Description: "tenant id (default: the step's tenant)"},
			{Name: "confirm", Type: "string", Required: true, Description: "the tenant id again, as a typed confirmation"},
			{Name: "timeout", Type: "string", Description: "how long to wait for the namespace to be gone (Go duration, default 5m, at most 1h)"},
		},
	}, parseErase, planErase, applyErase)
}

// DefaultEraseTimeout bounds the wait for a deleted namespace to be gone.
const DefaultEraseTimeout = 5 * time.Minute

// eraseSpec is a validated namespace.erase step.
type eraseSpec struct {
	target
	timeout time.Duration
}

func (*eraseSpec) secrets() []string { return nil }

func parseErase(e *env, step *providerv1.Step) (*eraseSpec, error) {
	p := sdk.NewParams(step.GetParams())
	sp := &eraseSpec{target: readTarget(p, &e.s, step)}
	confirm := p.String("confirm", true)
	if confirm != "" && sp.tenant != "" && confirm != sp.tenant {
		p.Fail("confirm", "must be the tenant id %q, got %q", sp.tenant, confirm)
	}
	sp.timeout = p.Duration("timeout", false)
	switch {
	case sp.timeout == 0:
		sp.timeout = DefaultEraseTimeout
	case sp.timeout > time.Hour:
		p.Fail("timeout", "at most 1h, got %s", sp.timeout)
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	return sp, nil
}

// eraseState is what namespace.erase finds.
type eraseState struct {
	ns   *unstructured.Unstructured // nil: gone
	sets []string
	cs   changes
}

func (e *env) eraseState(ctx context.Context, sp *eraseSpec) (*eraseState, error) {
	st := &eraseState{}
	nsRes := resourceName("v1", "Namespace", "", sp.namespace)
	ns, err := e.client(gvrNamespaces, "").Get(ctx, sp.namespace, metav1.GetOptions{})
	switch {
	case isNotFound(err):
		st.cs.add(nsRes, opNoop, "namespace of tenant %s does not exist", sp.tenant)
		return st, nil
	case err != nil:
		return nil, apiError("read namespace "+sp.namespace, err)
	}
	if err := checkOwned(ns, sp.tenant); err != nil {
		return nil, err
	}
	st.ns = ns
	if ns.GetDeletionTimestamp() == nil {
		sets, err := e.applier().Sets(ctx, sp.namespace)
		if err != nil {
			return nil, apiError("list the inventories in "+sp.namespace, err)
		}
		st.sets = sets
		for _, set := range sets {
			st.cs.add(fmt.Sprintf("inventory %s/%s", sp.namespace, set), opDelete, "delete the objects of set %s, then its inventory", set)
		}
	}
	st.cs.add(nsRes, opDelete, "delete the namespace of tenant %s and everything in it, and wait until it is gone", sp.tenant)
	return st, nil
}

func planErase(ctx context.Context, e *env, sp *eraseSpec) (changes, error) {
	st, err := e.eraseState(ctx, sp)
	if err != nil {
		return nil, err
	}
	return st.cs, nil
}

func applyErase(ctx context.Context, e *env, sp *eraseSpec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	st, err := e.eraseState(ctx, sp)
	if err != nil {
		return nil, err
	}
	nsRes := resourceName("v1", "Namespace", "", sp.namespace)
	if st.ns != nil {
		a := e.applier()
		for _, set := range st.sets {
			sdk.Report(progress, nsRes, "deleting the objects of set "+set)
			if err := a.Delete(ctx, sp.namespace, set); err != nil {
				return nil, apiError(fmt.Sprintf("delete set %s in %s", set, sp.namespace), err)
			}
		}
		if st.ns.GetDeletionTimestamp() == nil {
			uid := st.ns.GetUID()
			err := e.client(gvrNamespaces, "").Delete(ctx, sp.namespace, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
			if err != nil && !isNotFound(err) {
				return nil, apiError("delete namespace "+sp.namespace, err)
			}
		}
		sdk.Report(progress, nsRes, "namespace deleted; waiting for the namespace controller to remove its contents")
		if left, err := e.waitGone(ctx, sp, progress); err != nil {
			return nil, err
		} else if left != "" {
			outputs := map[string]any{"namespace": sp.namespace, "verification": left}
			return failed(left, st.cs, outputs), nil
		}
	}
	verification, clean, err := e.verifyErased(ctx, sp)
	if err != nil {
		return nil, err
	}
	outputs := map[string]any{"namespace": sp.namespace, "verification": verification}
	if !clean {
		return failed("erase did not remove everything: "+verification, st.cs, outputs), nil
	}
	return succeeded(verification, st.cs, outputs), nil
}

// waitGone polls until the namespace is gone, reporting progress every few
// seconds; after the step's timeout it returns what is left ("" once gone).
func (e *env) waitGone(ctx context.Context, sp *eraseSpec, progress sdk.ProgressFunc) (string, error) {
	start := time.Now()
	deadline := start.Add(sp.timeout)
	lastReport := start
	wait := 100 * time.Millisecond
	for {
		ns, err := e.client(gvrNamespaces, "").Get(ctx, sp.namespace, metav1.GetOptions{})
		switch {
		case isNotFound(err):
			return "", nil
		case err != nil:
			return "", apiError("read namespace "+sp.namespace, err)
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("namespace %s still exists %s after it was deleted: %s", sp.namespace, sp.timeout, terminatingState(ns)), nil
		}
		if time.Since(lastReport) >= 5*time.Second {
			lastReport = time.Now()
			sdk.Report(progress, resourceName("v1", "Namespace", "", sp.namespace),
				fmt.Sprintf("terminating for %s: %s", time.Since(start).Round(time.Second), terminatingState(ns)))
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// terminatingState summarizes a terminating namespace's conditions (what
// the namespace controller still waits for).
func terminatingState(ns *unstructured.Unstructured) string {
	conds, _, _ := unstructured.NestedSlice(ns.Object, "status", "conditions")
	var parts []string
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["status"] != "True" {
			continue
		}
		parts = append(parts, fmt.Sprintf("%v: %v", m["type"], m["message"]))
	}
	if len(parts) == 0 {
		phase, _, _ := unstructured.NestedString(ns.Object, "status", "phase")
		return "phase " + phase
	}
	return strings.Join(parts, "; ")
}

// verifyErased checks that no namespace labelled for the tenant remains
// (among those named with namespace_prefix: another prefix is another
// provider configuration's). Every object the provider creates for a
// tenant is namespaced and lives in the tenant's namespace, and the
// namespace controller removes a namespace only after everything in it is
// gone, so no such namespace means nothing of the tenant's remains.
func (e *env) verifyErased(ctx context.Context, sp *eraseSpec) (string, bool, error) {
	sel := LabelTenant + "=" + sp.tenant
	list, err := e.client(gvrNamespaces, "").List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return "", false, apiError("list namespaces labelled "+sel, err)
	}
	var left []string
	for _, ns := range list.Items {
		if strings.HasPrefix(ns.GetName(), e.s.NamespacePrefix) {
			left = append(left, ns.GetName())
		}
	}
	if len(left) > 0 {
		return fmt.Sprintf("%s labelled %s remain: %s", plural(len(left), "namespace"), sel, strings.Join(left, ", ")), false, nil
	}
	return fmt.Sprintf("no namespace %s* labelled %s remains (namespace %s is gone, and with it every object created for the tenant: all are namespaced)",
		e.s.NamespacePrefix, sel, sp.namespace), true, nil
}
