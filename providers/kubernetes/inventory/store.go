package inventory

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// The inventory ConfigMap: name prefix, its data key, and the labels it
// carries besides the ones Apply is given.
const (
	configMapPrefix = "attache-inventory-"
	dataKey         = "inventory.json"
	managedByLabel  = "app.kubernetes.io/managed-by"
	managedByValue  = "attache"
	setLabel        = "attache.dev/inventory"
)

// objectBudget bounds the bytes of applied objects an inventory records; a
// ConfigMap holds at most 1 MiB. Entries past it are recorded without their
// object, and Drift reports only whether such objects still exist.
const objectBudget = 900 << 10

// ref names an object of a set.
type ref struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
	Name    string `json:"name"`
}

// objKey identifies an object whatever version it is applied as.
type objKey struct{ group, kind, name string }

func (r ref) key() objKey { return objKey{r.Group, r.Kind, r.Name} }

func (r ref) groupVersionKind() schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: r.Group, Version: r.Version, Kind: r.Kind}
}

// resource renders "apps/v1/Deployment tenant-acme/web".
func (r ref) resource(namespace string) string {
	return gvkString(r.groupVersionKind()) + " " + namespace + "/" + r.Name
}

// entry is one recorded object: its reference, the hash of what was sent
// and, within objectBudget, what was sent.
type entry struct {
	ref
	Hash   string          `json:"hash"`
	Object json.RawMessage `json:"object,omitempty"`
}

// inventory is what a set's ConfigMap records; raw is the data as loaded,
// to skip writing an unchanged inventory.
type inventory struct {
	Entries []entry
	exists  bool
	raw     string
	labels  map[string]string
}

func (inv *inventory) index() map[objKey]entry {
	m := make(map[objKey]entry, len(inv.Entries))
	for _, e := range inv.Entries {
		m[e.key()] = e
	}
	return m
}

func configMapName(set string) string { return configMapPrefix + set }

// load reads a set's inventory; a set never applied has an empty one.
func (a *Applier) load(ctx context.Context, namespace, set string) (*inventory, error) {
	cm, err := a.Client.CoreV1().ConfigMaps(namespace).Get(ctx, configMapName(set), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &inventory{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading inventory %s/%s: %w", namespace, configMapName(set), err)
	}
	inv := &inventory{exists: true, raw: cm.Data[dataKey], labels: cm.Labels}
	if inv.raw != "" {
		if err := json.Unmarshal([]byte(inv.raw), &inv.Entries); err != nil {
			return nil, fmt.Errorf("inventory %s/%s: %s: %w", namespace, configMapName(set), dataKey, err)
		}
	}
	return inv, nil
}

// encode renders entries for the ConfigMap, dropping the objects of the
// largest entries until the objects fit objectBudget.
func encode(entries []entry) (string, error) {
	out := make([]entry, len(entries))
	copy(out, entries)
	total := 0
	for _, e := range out {
		total += len(e.Object)
	}
	if total > objectBudget {
		order := make([]int, len(out))
		for i := range order {
			order[i] = i
		}
		sort.SliceStable(order, func(x, y int) bool { return len(out[order[x]].Object) > len(out[order[y]].Object) })
		for _, i := range order {
			if total <= objectBudget {
				break
			}
			total -= len(out[i].Object)
			out[i].Object = nil
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// store writes next as the set's inventory unless it is what old already
// holds, with server-side apply.
func (a *Applier) store(ctx context.Context, namespace, set string, labels map[string]string, old, next *inventory) error {
	data, err := encode(next.Entries)
	if err != nil {
		return fmt.Errorf("encoding inventory %s/%s: %w", namespace, configMapName(set), err)
	}
	want := map[string]string{}
	maps.Copy(want, labels)
	want[managedByLabel] = managedByValue
	want[setLabel] = set
	if old.exists && old.raw == data && subset(want, old.labels) {
		return nil
	}
	cm := map[string]any{
		"apiVersion": "v1",
		"kind":       "ConfigMap",
		"metadata": map[string]any{
			"name":      configMapName(set),
			"namespace": namespace,
			"labels":    want,
		},
		"data": map[string]string{dataKey: data},
	}
	body, err := json.Marshal(cm)
	if err != nil {
		return fmt.Errorf("encoding inventory %s/%s: %w", namespace, configMapName(set), err)
	}
	force := true
	_, err = a.Client.CoreV1().ConfigMaps(namespace).Patch(ctx, configMapName(set), types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: a.fieldManager(), Force: &force})
	if err != nil {
		return fmt.Errorf("writing inventory %s/%s: %w", namespace, configMapName(set), err)
	}
	return nil
}

// subset reports whether every label of want is in have.
func subset(want, have map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}
