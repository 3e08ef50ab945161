// Package inventory applies a release's rendered manifests into one tenant
// namespace and keeps a record of what it applied, so that it can
//
//   - server-side apply the objects (field manager "attache"), refusing
//     anything that would reach outside the namespace: cluster-scoped kinds,
//     Namespace objects, objects naming another namespace, RoleBindings to a
//     ClusterRole, Secrets carrying data (secrets come from secret
//     references, not manifests);
//   - record them in an inventory, a ConfigMap attache-inventory-<set> in the
//     namespace holding each object's reference, a hash of what was sent and
//     (within ConfigMap size limits) the applied object itself;
//   - prune the objects an earlier Apply of the same set created and this one
//     no longer has;
//   - report drift: recorded objects that are gone, and fields we applied
//     whose live value differs (fields the server or controllers set are
//     not drift);
//   - delete a whole set.
//
// Decode turns multi-document YAML or JSON into objects, strictly, with
// errors naming the document. Objects applied carry the annotation
// attache.dev/inventory=<set>: an existing object without it (created by
// something else, or by another set) is refused rather than taken over, and
// only objects still carrying the set's annotation are pruned or deleted.
//
// The package imports client-go, apimachinery and the standard library only.
// Imported by providers/kubernetes, which turns its Changes and Drifts into
// the provider protocol's.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// Limits on one set.
const (
	// MaxObjects is the most objects one set may hold.
	MaxObjects = 500
	// MaxBytes is the most bytes of manifests Decode accepts, and the most
	// bytes of compact JSON Apply sends for one set.
	MaxBytes = 1 << 20
)

// SetAnnotation, on every applied object, names the set whose inventory
// records it.
const SetAnnotation = "attache.dev/inventory"

// DefaultFieldManager is the field manager used when Applier.FieldManager is
// empty.
const DefaultFieldManager = "attache"

// workers bounds the requests one Apply, Drift or Delete has in flight.
const workers = 8

// ErrInvalid marks an error in the caller's input: manifests that do not
// decode, objects refused, limits exceeded, a bad set name. Retrying the same
// input cannot succeed.
var ErrInvalid = errors.New("invalid manifests")

// ErrConflict marks an object that exists but is not the set's to apply: it
// belongs to another set, or was created by something else (a provisioning
// step, a controller, a person) and so carries no SetAnnotation. Apply never
// takes such objects over.
var ErrConflict = errors.New("object not owned by the set")

// Applier applies sets of objects into namespaces. Its fields are set by the
// caller; an Applier is safe for concurrent use on different sets.
type Applier struct {
	Dynamic      dynamic.Interface
	Mapper       meta.RESTMapper // e.g. restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery))
	Client       kubernetes.Interface
	FieldManager string // DefaultFieldManager if empty
	Log          *slog.Logger
}

// Op is what Apply did (or, in a dry run, would do) to one object.
type Op int

// Operations.
const (
	Create Op = iota + 1
	Update
	Delete
	Noop
)

func (o Op) String() string {
	switch o {
	case Create:
		return "create"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Noop:
		return "noop"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// Change is one object's entry in Apply's result.
type Change struct {
	Resource string // "apps/v1/Deployment tenant-acme/web"
	Op       Op
	Summary  string
}

// Drift is one difference between what the last Apply recorded and what is
// live.
type Drift struct {
	Resource string
	Field    string // dotted path, e.g. "spec.replicas", or "missing" for an object that is gone
	Want     string // bounded
	Live     string // bounded
}

// String renders a drift as "apps/v1/Deployment ns/web spec.replicas want 3 live 5".
func (d Drift) String() string {
	if d.Field == "missing" {
		return d.Resource + " missing"
	}
	return fmt.Sprintf("%s %s want %s live %s", d.Resource, d.Field, d.Want, d.Live)
}

// Apply server-side-applies objs, all into namespace, labelled with labels
// and annotated with SetAnnotation=set; records them in the set's inventory;
// and deletes (propagation Background) the objects the set's inventory
// recorded that objs no longer has. Every object is checked before anything
// is written; a refused object fails the whole Apply with an error wrapping
// ErrInvalid and naming the object's document (its index in objs, from 1)
// and kind/name.
//
// An object that exists but does not carry SetAnnotation=set is refused
// with an error wrapping ErrConflict: Apply creates objects and updates its
// own, and never takes over objects something else created.
//
// An object whose applied configuration is unchanged since the last Apply and
// whose live fields still match it is a Noop and is not written, so a second
// identical Apply writes nothing. Objects in the inventory are applied with
// Force; others without, so that fields another manager owns are a conflict,
// not taken over.
//
// dryRun applies and deletes with server-side dry run, records nothing, and
// reports what would be pruned as Delete changes. If an Apply fails part way
// the inventory still records the objects it may have applied and everything
// it recorded before and has not deleted, so that a later Apply prunes what
// it has to.
func (a *Applier) Apply(ctx context.Context, namespace, set string, labels map[string]string, objs []*unstructured.Unstructured, dryRun bool) ([]Change, error) {
	if err := a.check(namespace, set); err != nil {
		return nil, err
	}
	items, err := a.prepare(ctx, namespace, set, labels, objs)
	if err != nil {
		return nil, err
	}
	inv, err := a.load(ctx, namespace, set)
	if err != nil {
		return nil, err
	}
	old := inv.index()

	results := make([]applied, len(items))
	err = a.applyAll(ctx, items, old, results, dryRun)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		if !dryRun {
			a.recordPartial(ctx, namespace, set, labels, inv, items, results)
		}
		return nil, err
	}

	changes := make([]Change, 0, len(items))
	keep := map[objKey]bool{}
	next := &inventory{}
	for i, it := range items {
		changes = append(changes, results[i].change)
		keep[it.ref.key()] = true
		next.Entries = append(next.Entries, entry{ref: it.ref, Hash: it.hash, Object: it.body})
	}

	var prune []entry
	for _, e := range inv.Entries {
		if !keep[e.key()] {
			prune = append(prune, e)
		}
	}
	deleted, err := a.deleteEntries(ctx, namespace, set, prune, dryRun)
	if err != nil {
		if !dryRun {
			// Keep what was not pruned recorded, to prune it next time.
			next.Entries = append(next.Entries, prune...)
			a.storeAfterFailure(ctx, namespace, set, labels, inv, next)
		}
		return nil, err
	}
	changes = append(changes, deleted...)
	if dryRun {
		return changes, nil
	}
	if err := a.store(ctx, namespace, set, labels, inv, next); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	a.log().InfoContext(ctx, "applied manifests", "namespace", namespace, "set", set, "objects", len(items), "pruned", len(prune), "changed", countChanged(changes))
	return changes, nil
}

// check validates the Applier and the namespace and set names.
func (a *Applier) check(namespace, set string) error {
	if a.Dynamic == nil || a.Mapper == nil || a.Client == nil {
		return errors.New("inventory: Applier needs Dynamic, Mapper and Client")
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return fmt.Errorf("%w: namespace %q: %s", ErrInvalid, namespace, strings.Join(errs, "; "))
	}
	if err := validSet(set); err != nil {
		return err
	}
	return nil
}

func (a *Applier) fieldManager() string {
	if a.FieldManager == "" {
		return DefaultFieldManager
	}
	return a.FieldManager
}

func (a *Applier) log() *slog.Logger {
	if a.Log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return a.Log
}

// applied is the plan and the outcome of applying one item.
type applied struct {
	change    Change
	write     bool   // the item needs an apply request
	force     bool   // with Force: the inventory records the object
	liveRV    string // resourceVersion of the live object, "" if none
	attempted bool   // an apply request was sent: the object may exist now
	done      bool   // applied (or found unchanged): the inventory may record it
}

// applyAll looks at every item's live object first — deciding its Change,
// and refusing objects the set does not own before anything is written —
// then applies the items that need it in kind order (see rank), the items of
// one rank concurrently. It fills results.
func (a *Applier) applyAll(ctx context.Context, items []*item, old map[objKey]entry, results []applied, dryRun bool) error {
	err := forEach(ctx, len(items), func(ctx context.Context, i int) error {
		prev, recorded := old[items[i].ref.key()]
		return a.planOne(ctx, items[i], prev, recorded, &results[i])
	})
	if err != nil {
		return err
	}

	byRank := map[int][]int{}
	var ranks []int
	for i, it := range items {
		if !results[i].write {
			continue
		}
		r := rank(it.ref.Kind)
		if _, ok := byRank[r]; !ok {
			ranks = append(ranks, r)
		}
		byRank[r] = append(byRank[r], i)
	}
	sort.Ints(ranks)
	for _, r := range ranks {
		idx := byRank[r]
		err := forEach(ctx, len(idx), func(ctx context.Context, j int) error {
			return a.applyOne(ctx, items[idx[j]], dryRun, &results[idx[j]])
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// planOne fetches an item's live object, checks the set owns it, and decides
// the item's Change: Create if it does not exist; Update if its applied
// configuration changed since prev or its live fields differ from it; Noop
// (no write) otherwise.
func (a *Applier) planOne(ctx context.Context, it *item, prev entry, recorded bool, result *applied) error {
	live, err := a.Dynamic.Resource(it.mapping.Resource).Namespace(it.obj.GetNamespace()).Get(ctx, it.ref.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		live = nil
	case err != nil:
		return fmt.Errorf("document %d (%s): get: %w", it.doc, it.resource, err)
	}

	change := Change{Resource: it.resource}
	if live == nil {
		change.Op, change.Summary = Create, "create"
		*result = applied{change: change, write: true, force: recorded}
		return nil
	}
	switch owner := live.GetAnnotations()[SetAnnotation]; owner {
	case it.set:
	case "":
		return fmt.Errorf("%w: document %d (%s): the object exists and was not applied by set %q (no %s annotation); objects created otherwise are not taken over", ErrConflict, it.doc, it.resource, it.set, SetAnnotation)
	default:
		return fmt.Errorf("%w: document %d (%s): the object belongs to inventory set %q; remove it there first", ErrConflict, it.doc, it.resource, owner)
	}

	diffs := compare(it.obj.Object, live.Object, 3)
	switch {
	case !recorded:
		change.Op, change.Summary = Update, "applied by this set before but not in its inventory"
	case prev.Hash != it.hash:
		change.Op, change.Summary = Update, "applied configuration changed"
		if len(diffs) > 0 {
			change.Summary += "; " + summarize(diffs)
		}
	case len(diffs) > 0:
		change.Op, change.Summary = Update, "live differs: "+summarize(diffs)
	default:
		change.Op, change.Summary = Noop, "unchanged"
		*result = applied{change: change, done: true}
		return nil
	}
	*result = applied{change: change, write: true, force: recorded, liveRV: live.GetResourceVersion()}
	return nil
}

// applyOne server-side-applies an item as planned.
func (a *Applier) applyOne(ctx context.Context, it *item, dryRun bool, result *applied) error {
	force := result.force
	opts := metav1.PatchOptions{FieldManager: a.fieldManager(), Force: &force}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	result.attempted = !dryRun
	out, err := a.Dynamic.Resource(it.mapping.Resource).Namespace(it.obj.GetNamespace()).
		Patch(ctx, it.ref.Name, types.ApplyPatchType, it.body, opts)
	if err != nil {
		return fmt.Errorf("document %d (%s): apply: %w", it.doc, it.resource, err)
	}
	if !dryRun && result.force && result.liveRV != "" && out.GetResourceVersion() == result.liveRV {
		result.change.Op, result.change.Summary = Noop, "re-applied; the live object did not change"
	}
	result.done = true
	a.log().DebugContext(ctx, "applied object", "resource", it.resource, "op", result.change.Op.String(), "dry_run", dryRun)
	return nil
}

// recordPartial records, after a failed Apply, the objects it applied (or
// may have: requests cut short) on top of what the inventory held, so that a
// later Apply can prune them.
func (a *Applier) recordPartial(ctx context.Context, namespace, set string, labels map[string]string, inv *inventory, items []*item, results []applied) {
	merged := &inventory{Entries: append([]entry(nil), inv.Entries...)}
	pos := map[objKey]int{}
	for i, e := range merged.Entries {
		pos[e.key()] = i
	}
	n := 0
	for i, it := range items {
		e := entry{ref: it.ref, Hash: it.hash, Object: it.body}
		p, recorded := pos[e.key()]
		switch {
		case results[i].done:
		case results[i].attempted && !recorded:
			// It may exist now; an empty hash makes the next Apply apply it.
			e.Hash = ""
		default:
			continue // unchanged, or keep what was recorded
		}
		n++
		if recorded {
			merged.Entries[p] = e
		} else {
			pos[e.key()] = len(merged.Entries)
			merged.Entries = append(merged.Entries, e)
		}
	}
	if n > 0 {
		a.storeAfterFailure(ctx, namespace, set, labels, inv, merged)
	}
}

// storeAfterFailure stores an inventory after a failed Apply: best effort,
// and bounded in time even when ctx is cancelled.
func (a *Applier) storeAfterFailure(ctx context.Context, namespace, set string, labels map[string]string, old, next *inventory) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := a.store(ctx, namespace, set, labels, old, next); err != nil {
		a.log().WarnContext(ctx, "recording a failed apply in the inventory", "namespace", namespace, "set", set, "error", err)
	}
}

// deleteEntries deletes the objects of entries that still carry the set's
// annotation, with propagation Background and the live UID as precondition;
// dryRun deletes with server-side dry run.
func (a *Applier) deleteEntries(ctx context.Context, namespace, set string, entries []entry, dryRun bool) ([]Change, error) {
	changes := make([]Change, len(entries))
	err := forEach(ctx, len(entries), func(ctx context.Context, i int) error {
		c, err := a.deleteEntry(ctx, namespace, set, entries[i], dryRun)
		changes[i] = c
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return changes, nil
}

func (a *Applier) deleteEntry(ctx context.Context, namespace, set string, e entry, dryRun bool) (Change, error) {
	resource := e.resource(namespace)
	change := Change{Resource: resource, Op: Delete, Summary: "prune: no longer in the manifests"}
	mapping, err := a.mapping(e.groupVersionKind())
	if err != nil {
		return change, fmt.Errorf("prune %s: %w", resource, err)
	}
	res := a.Dynamic.Resource(mapping.Resource).Namespace(namespace)
	live, err := res.Get(ctx, e.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		change.Summary = "prune: already gone"
		return change, nil
	}
	if err != nil {
		return change, fmt.Errorf("prune %s: get: %w", resource, err)
	}
	if owner := live.GetAnnotations()[SetAnnotation]; owner != set {
		a.log().WarnContext(ctx, "not pruning an object the set no longer owns", "resource", resource, "owner", owner)
		return Change{Resource: resource, Op: Noop, Summary: fmt.Sprintf("left alone: annotation %s is %q, not %q", SetAnnotation, owner, set)}, nil
	}
	policy := metav1.DeletePropagationBackground
	opts := metav1.DeleteOptions{PropagationPolicy: &policy, Preconditions: metav1.NewUIDPreconditions(string(live.GetUID()))}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	err = res.Delete(ctx, e.Name, opts)
	if err != nil && !apierrors.IsNotFound(err) {
		return change, fmt.Errorf("prune %s: delete: %w", resource, err)
	}
	a.log().DebugContext(ctx, "pruned object", "resource", resource, "dry_run", dryRun)
	return change, nil
}

// mapping finds the REST mapping of gvk, resetting a resettable mapper once
// when it does not know the kind (it may have been installed since the
// mapper's discovery).
func (a *Applier) mapping(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	m, err := a.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		if r, ok := a.Mapper.(meta.ResettableRESTMapper); ok {
			r.Reset()
			m, err = a.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
	}
	if meta.IsNoMatchError(err) {
		return nil, fmt.Errorf("unknown kind %s: %w", gvkString(gvk), err)
	}
	if err != nil {
		return nil, fmt.Errorf("mapping kind %s: %w", gvkString(gvk), err)
	}
	return m, nil
}

// forEach runs fn(0..n-1) with at most workers calls at a time, stopping at
// the first error (which it returns) or when ctx is done.
func forEach(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	if n == 0 {
		return ctx.Err()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		next  = make(chan int)
	)
	fail := func(err error) {
		once.Do(func() { first = err; cancel() })
	}
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					fail(err)
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

func countChanged(cs []Change) int {
	n := 0
	for _, c := range cs {
		if c.Op != Noop {
			n++
		}
	}
	return n
}

// summarize renders at most a few field differences for a Change summary.
func summarize(diffs []fieldDiff) string {
	parts := make([]string, 0, len(diffs))
	for _, d := range diffs {
		parts = append(parts, fmt.Sprintf("%s want %s live %s", d.path, d.want, d.live))
	}
	return strings.Join(parts, "; ")
}

// rank orders kinds the way Helm installs them, so that what a workload uses
// (quota, service accounts, config, RBAC, services) exists before it.
func rank(kind string) int {
	order := []string{
		"NetworkPolicy", "ResourceQuota", "LimitRange", "PodDisruptionBudget",
		"ServiceAccount", "Secret", "ConfigMap", "PersistentVolumeClaim",
		"Role", "RoleBinding", "Service",
		"Pod", "ReplicaSet", "Deployment", "StatefulSet", "Job", "CronJob",
		"HorizontalPodAutoscaler", "Ingress",
	}
	for i, k := range order {
		if k == kind {
			return i
		}
	}
	return len(order)
}
