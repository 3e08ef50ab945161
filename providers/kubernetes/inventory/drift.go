package inventory

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// maxDriftPerObject bounds the drifts Drift reports for one object.
const maxDriftPerObject = 20

// Drift compares what the last Apply of set recorded with what is live:
// objects that are gone (Field "missing") and fields of the applied objects
// whose live value differs. Only fields in the applied configuration count
// — metadata other than labels and annotations, status, and whatever the
// server or controllers set are ignored. An object recorded without its
// applied configuration (inventory past its size budget) is only checked to
// exist. A set never applied has no drift. Drifts come in inventory order,
// at most maxDriftPerObject per object.
func (a *Applier) Drift(ctx context.Context, namespace, set string) ([]Drift, error) {
	if err := a.check(namespace, set); err != nil {
		return nil, err
	}
	inv, err := a.load(ctx, namespace, set)
	if err != nil {
		return nil, err
	}
	found := make([][]Drift, len(inv.Entries))
	err = forEach(ctx, len(inv.Entries), func(ctx context.Context, i int) error {
		d, err := a.driftOne(ctx, namespace, inv.Entries[i])
		found[i] = d
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	var out []Drift
	for _, d := range found {
		out = append(out, d...)
	}
	return out, nil
}

func (a *Applier) driftOne(ctx context.Context, namespace string, e entry) ([]Drift, error) {
	resource := e.resource(namespace)
	mapping, err := a.mapping(e.groupVersionKind())
	if meta.IsNoMatchError(err) {
		// The kind is no longer served (its CustomResourceDefinition was
		// removed, say): neither is the object.
		return []Drift{{Resource: resource, Field: "missing", Want: "present", Live: "kind not served"}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("drift of %s: %w", resource, err)
	}
	live, err := a.Dynamic.Resource(mapping.Resource).Namespace(namespace).Get(ctx, e.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return []Drift{{Resource: resource, Field: "missing", Want: "present", Live: "absent"}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("drift of %s: get: %w", resource, err)
	}
	if len(e.Object) == 0 {
		return nil, nil
	}
	var applied map[string]any
	if err := json.Unmarshal(e.Object, &applied); err != nil {
		return nil, fmt.Errorf("drift of %s: recorded object: %w", resource, err)
	}
	diffs := compare(applied, live.Object, maxDriftPerObject)
	out := make([]Drift, len(diffs))
	for i, d := range diffs {
		out[i] = Drift{Resource: resource, Field: d.path, Want: d.want, Live: d.live}
	}
	return out, nil
}

// Delete deletes every object the set's inventory records that still
// carries the set's annotation (propagation Background), then the
// inventory. Deleting a set that does not exist succeeds.
func (a *Applier) Delete(ctx context.Context, namespace, set string) error {
	if err := a.check(namespace, set); err != nil {
		return err
	}
	inv, err := a.load(ctx, namespace, set)
	if err != nil {
		return err
	}
	if !inv.exists {
		return nil
	}
	if _, err := a.deleteEntries(ctx, namespace, set, inv.Entries, false); err != nil {
		return err
	}
	err = a.Client.CoreV1().ConfigMaps(namespace).Delete(ctx, configMapName(set), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("deleting inventory %s/%s: %w", namespace, configMapName(set), err)
	}
	a.log().InfoContext(ctx, "deleted set", "namespace", namespace, "set", set, "objects", len(inv.Entries))
	return nil
}

// Sets lists the sets with an inventory in namespace, sorted.
func (a *Applier) Sets(ctx context.Context, namespace string) ([]string, error) {
	if a.Client == nil {
		return nil, fmt.Errorf("inventory: Applier needs Client")
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return nil, fmt.Errorf("%w: namespace %q: %s", ErrInvalid, namespace, strings.Join(errs, "; "))
	}
	list, err := a.Client.CoreV1().ConfigMaps(namespace).List(ctx, metav1.ListOptions{LabelSelector: setLabel + "," + managedByLabel + "=" + managedByValue})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("listing inventories in %s: %w", namespace, err)
	}
	var sets []string
	for _, cm := range list.Items {
		set := cm.Labels[setLabel]
		if cm.Name == configMapName(set) && validSet(set) == nil {
			sets = append(sets, set)
		}
	}
	sort.Strings(sets)
	return sets, nil
}
