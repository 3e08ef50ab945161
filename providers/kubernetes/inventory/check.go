package inventory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
)

// item is one object ready to apply: checked, put in the namespace,
// labelled, annotated, encoded and hashed.
type item struct {
	doc      int // index in objs, from 1
	set      string
	obj      *unstructured.Unstructured
	ref      ref
	resource string // Change.Resource
	mapping  *meta.RESTMapping
	body     []byte // compact JSON, as sent
	hash     string // sha256 of body, hex
}

// serverFields are metadata fields the server sets; an object copied from a
// live cluster carries them, and they are dropped before applying.
var serverFields = []string{"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"}

// prepare checks every object and turns it into an item; the first refusal
// is returned, before anything is written.
func (a *Applier) prepare(ctx context.Context, namespace, set string, labels map[string]string, objs []*unstructured.Unstructured) ([]*item, error) {
	if len(objs) > MaxObjects {
		return nil, fmt.Errorf("%w: %d objects; a set holds at most %d", ErrInvalid, len(objs), MaxObjects)
	}
	for k, v := range labels {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return nil, fmt.Errorf("%w: label key %q: %s", ErrInvalid, k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return nil, fmt.Errorf("%w: label %s value %q: %s", ErrInvalid, k, v, strings.Join(errs, "; "))
		}
	}
	items := make([]*item, 0, len(objs))
	seen := map[objKey]int{}
	total := 0
	for i, o := range objs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		it, err := a.prepareOne(i+1, namespace, set, labels, o)
		if err != nil {
			return nil, err
		}
		if d, ok := seen[it.ref.key()]; ok {
			return nil, fmt.Errorf("%w: document %d (%s): the same object as document %d", ErrInvalid, it.doc, it.resource, d)
		}
		seen[it.ref.key()] = it.doc
		total += len(it.body)
		if total > MaxBytes {
			return nil, fmt.Errorf("%w: document %d (%s): the objects exceed %d bytes of JSON", ErrInvalid, it.doc, it.resource, MaxBytes)
		}
		items = append(items, it)
	}
	return items, nil
}

// prepareOne checks object doc and builds its item.
func (a *Applier) prepareOne(doc int, namespace, set string, labels map[string]string, o *unstructured.Unstructured) (*item, error) {
	if o == nil || o.Object == nil {
		return nil, fmt.Errorf("%w: document %d: empty object", ErrInvalid, doc)
	}
	obj := o.DeepCopy()
	gvk := obj.GroupVersionKind()
	name := obj.GetName()
	what := describe(gvk, name)
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: document %d (%s): %s", ErrInvalid, doc, what, fmt.Sprintf(format, args...))
	}
	if gvk.Kind == "" || gvk.Version == "" {
		return nil, refuse("apiVersion and kind are required")
	}
	if obj.IsList() {
		return nil, refuse("lists are not supported; put each object in its own document")
	}
	if err := validName(name); err != nil {
		return nil, refuse("%v", err)
	}
	if ns := obj.GetNamespace(); ns != "" && ns != namespace {
		return nil, refuse("names namespace %q; objects go into the tenant namespace %q only", ns, namespace)
	}
	switch gvk.GroupKind() {
	case schema.GroupKind{Kind: "Namespace"}:
		return nil, refuse("Namespace objects are not allowed; the tenant namespace is provisioned, not applied")
	case schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "ClusterRole"},
		schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "ClusterRoleBinding"}:
		return nil, refuse("cluster-scoped RBAC is not allowed")
	case schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "RoleBinding"}:
		kind, _, _ := unstructured.NestedString(obj.Object, "roleRef", "kind")
		if kind == "ClusterRole" {
			role, _, _ := unstructured.NestedString(obj.Object, "roleRef", "name")
			return nil, refuse("roleRef names ClusterRole %q; bind a Role in the namespace instead", role)
		}
	case schema.GroupKind{Kind: "Secret"}:
		for _, f := range []string{"data", "stringData"} {
			if v, ok := obj.Object[f]; ok && !empty(v) {
				return nil, refuse("a Secret with %s; secret values come from secret references, not manifests", f)
			}
		}
	case schema.GroupKind{Kind: "ConfigMap"}:
		if strings.HasPrefix(name, configMapPrefix) {
			return nil, refuse("ConfigMap names starting with %q are reserved for inventories", configMapPrefix)
		}
	}

	mapping, err := a.mapping(gvk)
	if meta.IsNoMatchError(err) {
		return nil, refuse("unknown kind %s: the API server does not serve it", gvkString(gvk))
	}
	if err != nil {
		return nil, fmt.Errorf("document %d (%s): %w", doc, what, err)
	}
	if mapping.Scope.Name() != meta.RESTScopeNameNamespace {
		return nil, refuse("%s is cluster-scoped; only namespaced kinds are allowed", gvk.Kind)
	}

	for _, f := range serverFields {
		unstructured.RemoveNestedField(obj.Object, "metadata", f)
	}
	delete(obj.Object, "status")
	obj.SetNamespace(namespace)
	if len(labels) > 0 {
		l := obj.GetLabels()
		if l == nil {
			l = map[string]string{}
		}
		maps.Copy(l, labels)
		obj.SetLabels(l)
	}
	ann := obj.GetAnnotations()
	if ann == nil {
		ann = map[string]string{}
	}
	ann[SetAnnotation] = set
	obj.SetAnnotations(ann)

	body, err := json.Marshal(obj.Object)
	if err != nil {
		return nil, refuse("encoding: %v", err)
	}
	sum := sha256.Sum256(body)
	r := ref{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind, Name: name}
	return &item{
		doc:      doc,
		set:      set,
		obj:      obj,
		ref:      r,
		resource: r.resource(namespace),
		mapping:  mapping,
		body:     body,
		hash:     hex.EncodeToString(sum[:]),
	}, nil
}

// validSet checks that a set name is a DNS label.
func validSet(set string) error {
	if errs := validation.IsDNS1123Label(set); len(errs) > 0 {
		return fmt.Errorf("%w: set %q: %s", ErrInvalid, set, strings.Join(errs, "; "))
	}
	return nil
}

// validName checks that name can name an object and be a URL path segment.
func validName(name string) error {
	if name == "" {
		return fmt.Errorf("metadata.name is required")
	}
	if len(name) > validation.DNS1123SubdomainMaxLength {
		return fmt.Errorf("metadata.name is longer than %d characters", validation.DNS1123SubdomainMaxLength)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/%") {
		return fmt.Errorf("metadata.name %q may not be '.', '..' or contain '/' or '%%'", name)
	}
	return nil
}

// empty reports whether a decoded value holds nothing.
func empty(v any) bool {
	switch t := v.(type) {
	case nil:
		return true
	case map[string]any:
		return len(t) == 0
	case []any:
		return len(t) == 0
	case string:
		return t == ""
	}
	return false
}

// describe renders a kind and name for errors, before the object is mapped.
func describe(gvk schema.GroupVersionKind, name string) string {
	s := gvkString(gvk)
	if name != "" {
		s += " " + name
	}
	return s
}

// gvkString renders "apps/v1/Deployment" or "v1/ConfigMap".
func gvkString(gvk schema.GroupVersionKind) string {
	if gvk.Group == "" {
		return gvk.Version + "/" + gvk.Kind
	}
	return gvk.Group + "/" + gvk.Version + "/" + gvk.Kind
}
