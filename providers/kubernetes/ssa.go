package kubernetes

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// object is one object the provider applies itself (namespace.provision's),
// with what it is for (the change summaries say it).
type object struct {
	gvr      schema.GroupVersionResource
	obj      *unstructured.Unstructured
	describe string
}

// newObject builds an object from an apply configuration (any value that
// marshals to the object's JSON).
func newObject(gvr schema.GroupVersionResource, ac any, describe string) object {
	b, err := json.Marshal(ac)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", ac, err)) // apply configurations always marshal
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(b); err != nil {
		panic(fmt.Sprintf("unmarshal %T: %v", ac, err))
	}
	return object{gvr: gvr, obj: u, describe: describe}
}

// resourceName formats an object's resource for changes: "<apiVersion>/<Kind>
// <namespace>/<name>", or without the namespace for a cluster-scoped one.
func resourceName(apiVersion, kind, namespace, name string) string {
	if namespace == "" {
		return fmt.Sprintf("%s/%s %s", apiVersion, kind, name)
	}
	return fmt.Sprintf("%s/%s %s/%s", apiVersion, kind, namespace, name)
}

func (o object) resource() string {
	return resourceName(o.obj.GetAPIVersion(), o.obj.GetKind(), o.obj.GetNamespace(), o.obj.GetName())
}

// client returns the dynamic client for o's resource and namespace.
func (e *env) client(gvr schema.GroupVersionResource, namespace string) dynamic.ResourceInterface {
	r := e.c.dyn.Resource(gvr)
	if namespace != "" {
		return r.Namespace(namespace)
	}
	return r
}

// get returns o's live object, or nil if it does not exist.
func (e *env) get(ctx context.Context, o object) (*unstructured.Unstructured, error) {
	live, err := e.client(o.gvr, o.obj.GetNamespace()).Get(ctx, o.obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, apiError("read "+o.resource(), err)
	}
	return live, nil
}

// ssa server-side-applies o with field manager attache, forcing conflicts
// (the provider owns these objects); dryRun asks the server what it would
// do without doing it.
func (e *env) ssa(ctx context.Context, o object, dryRun bool) (*unstructured.Unstructured, error) {
	opts := metav1.ApplyOptions{FieldManager: FieldManager, Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	res, err := e.client(o.gvr, o.obj.GetNamespace()).Apply(ctx, o.obj.GetName(), o.obj, opts)
	if err != nil {
		return nil, apiError("apply "+o.resource(), err)
	}
	return res, nil
}

// applyObject applies o (or, with dryRun, asks the server what applying it
// would do) and returns the change: live is what was there before (nil:
// nothing, so the change is a create).
func (e *env) applyObject(ctx context.Context, o object, live *unstructured.Unstructured, dryRun bool) (change, error) {
	if live == nil {
		if !dryRun {
			if _, err := e.ssa(ctx, o, false); err != nil {
				return change{}, err
			}
		}
		return change{resource: o.resource(), op: opCreate, summary: o.describe}, nil
	}
	res, err := e.ssa(ctx, o, dryRun)
	if err != nil {
		return change{}, err
	}
	if paths := diffPaths(live, res); len(paths) > 0 {
		return change{resource: o.resource(), op: opUpdate, summary: fmt.Sprintf("%s (changes %s)", o.describe, strings.Join(paths, ", "))}, nil
	}
	return change{resource: o.resource(), op: opNoop, summary: o.describe + " (unchanged)"}, nil
}

// diffPaths lists where b differs from a, ignoring what the server keeps
// for itself (managed fields, resource version, generation, status): the
// labels and annotations, each key of spec, each other top-level field.
// Secret values are never part of the answer, only data key names.
func diffPaths(a, b *unstructured.Unstructured) []string {
	var out []string
	for _, f := range []string{"labels", "annotations"} {
		x, _, _ := unstructured.NestedFieldNoCopy(a.Object, "metadata", f)
		y, _, _ := unstructured.NestedFieldNoCopy(b.Object, "metadata", f)
		if !equalish(x, y) {
			out = append(out, "metadata."+f)
		}
	}
	keys := map[string]bool{}
	for k := range a.Object {
		keys[k] = true
	}
	for k := range b.Object {
		keys[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		switch k {
		case "metadata", "status", "apiVersion", "kind":
			continue
		}
		x, y := a.Object[k], b.Object[k]
		if equalish(x, y) {
			continue
		}
		xm, xok := x.(map[string]any)
		ym, yok := y.(map[string]any)
		if !xok || !yok || (k != "spec" && k != "data") {
			out = append(out, k)
			continue
		}
		sub := map[string]bool{}
		for s := range xm {
			sub[s] = true
		}
		for s := range ym {
			sub[s] = true
		}
		for _, s := range slices.Sorted(maps.Keys(sub)) {
			if !equalish(xm[s], ym[s]) {
				out = append(out, k+"."+s)
			}
		}
	}
	return out
}

// equalish compares two decoded JSON values, an absent one equal to an
// empty one.
func equalish(x, y any) bool {
	empty := func(v any) bool {
		switch t := v.(type) {
		case nil:
			return true
		case map[string]any:
			return len(t) == 0
		case []any:
			return len(t) == 0
		}
		return false
	}
	if empty(x) && empty(y) {
		return true
	}
	return reflect.DeepEqual(x, y)
}

// deleteObject deletes one object; one already gone is not an error.
func (e *env) deleteObject(ctx context.Context, gvr schema.GroupVersionResource, namespace, name, resource string) error {
	err := e.client(gvr, namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return apiError("delete "+resource, err)
	}
	return nil
}

// parallel runs fns with at most limit at once and returns the first error
// (the others still run to the end).
func parallel(limit int, fns []func() error) error {
	sem := make(chan struct{}, limit)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for _, fn := range fns {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := fn(); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}

// rbacPropagation is how long requests in a namespace are retried while
// they are Forbidden right after the provider bound the agent there: the
// API server's authorizer learns of a new RoleBinding through a watch.
const rbacPropagation = 10 * time.Second

// retryForbidden calls fn until it is not Forbidden (by an API error or a
// PermissionDenied status), for at most rbacPropagation.
func retryForbidden(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(rbacPropagation)
	wait := 20 * time.Millisecond
	for {
		err := fn()
		if err == nil || !isForbidden(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// isForbidden reports a Forbidden API error or a PermissionDenied status.
func isForbidden(err error) bool {
	return apierrors.IsForbidden(err) || status.Code(err) == codes.PermissionDenied
}

// isNotFound reports a NotFound API error.
func isNotFound(err error) bool { return apierrors.IsNotFound(err) }
