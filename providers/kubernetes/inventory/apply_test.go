package inventory_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/providers/kubernetes/inventory"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// resources maps "apiVersion/Kind" to the resource the tests look objects
// up by.
var resources = map[string]schema.GroupVersionResource{
	"v1/ConfigMap":                             {Version: "v1", Resource: "configmaps"},
	"v1/Service":                               {Version: "v1", Resource: "services"},
	"v1/ServiceAccount":                        {Version: "v1", Resource: "serviceaccounts"},
	"apps/v1/Deployment":                       {Group: "apps", Version: "v1", Resource: "deployments"},
	"rbac.authorization.k8s.io/v1/Role":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"rbac.authorization.k8s.io/v1/RoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
}

// release is a small release as a chart renders it; the {{...}} fields are
// replaced by manifests.
const release = `---
# Source: web/templates/serviceaccount.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
---
# Source: web/templates/configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  greeting: {{greeting}}
---
# Source: web/templates/service.yaml
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
# Source: web/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: {{image}}
        ports:
        - containerPort: 8080
        resources:
          requests:
            cpu: "0.5"
            memory: 64Mi
        env:
        - name: MODE
          value: prod
---
# Source: web/templates/role.yaml
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: reader
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list"]
---
# Source: web/templates/rolebinding.yaml
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: reader
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: reader
subjects:
- kind: ServiceAccount
  name: web
`

// manifests renders release with greeting and image, leaving out the
// documents whose kind/name is in drop (e.g. "Role/reader").
func manifests(greeting, image string, drop ...string) string {
	s := strings.NewReplacer("{{greeting}}", greeting, "{{image}}", image).Replace(release)
	var keep []string
	for _, doc := range strings.Split(s, "\n---\n") {
		skip := false
		for _, d := range drop {
			kind, name, _ := strings.Cut(d, "/")
			if strings.Contains(doc, "\nkind: "+kind+"\n") && strings.Contains(doc, "\n  name: "+name+"\n") {
				skip = true
			}
		}
		if !skip {
			keep = append(keep, doc)
		}
	}
	return strings.Join(keep, "\n---\n")
}

const image1 = "registry.example/web@sha256:1111111111111111111111111111111111111111111111111111111111111111"

func wantOps(t *testing.T, changes []inventory.Change, want ...string) {
	t.Helper()
	got := ops(changes)
	if !slices.Equal(got, want) {
		t.Fatalf("changes:\n  got  %q\n  want %q", got, want)
	}
}

func TestApplyCreatesRecordsAndIsIdempotent(t *testing.T) {
	e := newEnv(t)
	ns := e.ns
	changes := e.apply(t, "web", manifests("hello", image1), false)
	wantOps(t, changes,
		"create v1/ServiceAccount "+ns+"/web",
		"create v1/ConfigMap "+ns+"/web-config",
		"create v1/Service "+ns+"/web",
		"create apps/v1/Deployment "+ns+"/web",
		"create rbac.authorization.k8s.io/v1/Role "+ns+"/reader",
		"create rbac.authorization.k8s.io/v1/RoleBinding "+ns+"/reader",
	)

	// Every object is in the namespace, labelled and annotated with its set.
	for _, k := range []struct{ apiVersion, kind, name string }{
		{"v1", "ServiceAccount", "web"}, {"v1", "ConfigMap", "web-config"}, {"v1", "Service", "web"},
		{"apps/v1", "Deployment", "web"}, {"rbac.authorization.k8s.io/v1", "Role", "reader"},
		{"rbac.authorization.k8s.io/v1", "RoleBinding", "reader"},
	} {
		obj := e.get(t, k.apiVersion, k.kind, k.name)
		if obj == nil {
			t.Fatalf("%s %s was not created", k.kind, k.name)
		}
		for key, v := range e.labels {
			if obj.GetLabels()[key] != v {
				t.Errorf("%s %s: label %s = %q, want %q", k.kind, k.name, key, obj.GetLabels()[key], v)
			}
		}
		if got := obj.GetAnnotations()[inventory.SetAnnotation]; got != "web" {
			t.Errorf("%s %s: annotation %s = %q, want web", k.kind, k.name, inventory.SetAnnotation, got)
		}
		managed := false
		for _, f := range obj.GetManagedFields() {
			if f.Manager == "attache" && f.Operation == metav1.ManagedFieldsOperationApply {
				managed = true
			}
		}
		if !managed {
			t.Errorf("%s %s: no Apply managed fields of manager attache", k.kind, k.name)
		}
	}

	// The inventory records each object with its hash and applied object.
	cm, err := e.admin.CoreV1().ConfigMaps(ns).Get(context.Background(), "attache-inventory-web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("inventory ConfigMap: %v", err)
	}
	if cm.Labels["app.kubernetes.io/managed-by"] != "attache" || cm.Labels["attache.dev/tenant"] != "acme" {
		t.Errorf("inventory labels = %v", cm.Labels)
	}
	var entries []struct {
		Group, Version, Kind, Name, Hash string
		Object                           map[string]any
	}
	if err := json.Unmarshal([]byte(cm.Data["inventory.json"]), &entries); err != nil {
		t.Fatalf("inventory data: %v", err)
	}
	if len(entries) != 6 {
		t.Fatalf("inventory has %d entries, want 6", len(entries))
	}
	for _, en := range entries {
		if len(en.Hash) != 64 || en.Object == nil || en.Version == "" || en.Kind == "" || en.Name == "" {
			t.Errorf("inventory entry %+v incomplete", en)
		}
	}
	if entries[3].Group != "apps" || entries[3].Kind != "Deployment" || entries[3].Name != "web" {
		t.Errorf("entry 4 = %s/%s/%s, want apps/Deployment/web", entries[3].Group, entries[3].Kind, entries[3].Name)
	}

	// Apply twice = once: only Noops, and not one write request.
	e.writes.Store(0)
	changes = e.apply(t, "web", manifests("hello", image1), false)
	if n := countOps(changes)[inventory.Noop]; n != 6 || len(changes) != 6 {
		t.Fatalf("second apply: %q, want 6 noops", ops(changes))
	}
	if w := e.writes.Load(); w != 0 {
		t.Fatalf("second apply made %d write requests, want 0", w)
	}

	// Still none once the controllers have defaulted and reported status.
	waitDeploymentObserved(t, e, "web")
	e.writes.Store(0)
	changes = e.apply(t, "web", manifests("hello", image1), false)
	if n := countOps(changes)[inventory.Noop]; n != 6 {
		t.Fatalf("apply after the controllers ran: %q, want 6 noops", ops(changes))
	}
	if w := e.writes.Load(); w != 0 {
		t.Fatalf("apply after the controllers ran made %d write requests, want 0", w)
	}
}

func TestApplyUpdatesOnlyWhatChanged(t *testing.T) {
	e := newEnv(t)
	e.apply(t, "web", manifests("hello", image1), false)
	e.writes.Store(0)
	changes := e.apply(t, "web", manifests("bonjour", image1), false)
	c := countOps(changes)
	if c[inventory.Update] != 1 || c[inventory.Noop] != 5 || len(changes) != 6 {
		t.Fatalf("changes %q, want 1 update and 5 noops", ops(changes))
	}
	if changes[1].Op != inventory.Update || changes[1].Resource != "v1/ConfigMap "+e.ns+"/web-config" {
		t.Fatalf("update is %q, want the ConfigMap", ops(changes[1:2]))
	}
	if !strings.Contains(changes[1].Summary, "data.greeting want bonjour live hello") {
		t.Errorf("summary %q does not name data.greeting", changes[1].Summary)
	}
	// The apply and the inventory.
	if w := e.writes.Load(); w != 2 {
		t.Errorf("%d write requests, want 2 (the ConfigMap, the inventory)", w)
	}
	got, _, _ := unstructured.NestedString(e.get(t, "v1", "ConfigMap", "web-config").Object, "data", "greeting")
	if got != "bonjour" {
		t.Fatalf("greeting = %q after the update", got)
	}
}

func TestApplyPrunesWhatIsGone(t *testing.T) {
	e := newEnv(t)
	ns := e.ns
	e.apply(t, "web", manifests("hello", image1), false)
	changes := e.apply(t, "web", manifests("hello", image1, "Role/reader", "RoleBinding/reader", "Deployment/web"), false)
	wantOps(t, changes,
		"noop v1/ServiceAccount "+ns+"/web",
		"noop v1/ConfigMap "+ns+"/web-config",
		"noop v1/Service "+ns+"/web",
		"delete apps/v1/Deployment "+ns+"/web",
		"delete rbac.authorization.k8s.io/v1/Role "+ns+"/reader",
		"delete rbac.authorization.k8s.io/v1/RoleBinding "+ns+"/reader",
	)
	for _, k := range [][3]string{
		{"apps/v1", "Deployment", "web"},
		{"rbac.authorization.k8s.io/v1", "Role", "reader"},
		{"rbac.authorization.k8s.io/v1", "RoleBinding", "reader"},
	} {
		eventually(t, 30*time.Second, k[1]+" "+k[2]+" deleted", func() (bool, error) {
			return e.get(t, k[0], k[1], k[2]) == nil, nil
		})
	}
	// Background propagation: the Deployment's ReplicaSets go too.
	eventually(t, 60*time.Second, "ReplicaSets garbage-collected", func() (bool, error) {
		rs, err := e.admin.AppsV1().ReplicaSets(ns).List(context.Background(), metav1.ListOptions{})
		return err == nil && len(rs.Items) == 0, err
	})
	// Pruned once: the next apply is all Noop.
	changes = e.apply(t, "web", manifests("hello", image1, "Role/reader", "RoleBinding/reader", "Deployment/web"), false)
	if c := countOps(changes); c[inventory.Noop] != 3 || len(changes) != 3 {
		t.Fatalf("apply after pruning: %q", ops(changes))
	}
	// Adding the objects back creates them again.
	changes = e.apply(t, "web", manifests("hello", image1), false)
	if c := countOps(changes); c[inventory.Create] != 3 || c[inventory.Noop] != 3 {
		t.Fatalf("apply adding back: %q", ops(changes))
	}
}

func TestPruneLeavesObjectsItNoLongerOwns(t *testing.T) {
	e := newEnv(t)
	e.apply(t, "web", manifests("hello", image1), false)
	// Someone takes the ConfigMap over for another set (or another tool).
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"other"}}}`, inventory.SetAnnotation)
	_, err := e.admin.CoreV1().ConfigMaps(e.ns).Patch(context.Background(), "web-config", types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	changes := e.apply(t, "web", manifests("hello", image1, "ConfigMap/web-config"), false)
	last := changes[len(changes)-1]
	if last.Op != inventory.Noop || !strings.Contains(last.Summary, "left alone") {
		t.Fatalf("last change %+v, want the ConfigMap left alone", last)
	}
	if e.get(t, "v1", "ConfigMap", "web-config") == nil {
		t.Fatal("the ConfigMap another set owns was deleted")
	}
}

func TestApplyRefusesAnObjectOfAnotherSet(t *testing.T) {
	e := newEnv(t)
	e.apply(t, "a", manifests("hello", image1), false)
	objs, err := inventory.Decode([]byte(manifests("hello", image1)))
	if err != nil {
		t.Fatal(err)
	}
	for _, dryRun := range []bool{true, false} {
		_, err = e.applier.Apply(context.Background(), e.ns, "b", e.labels, objs, dryRun)
		if !errors.Is(err, inventory.ErrConflict) || !strings.Contains(err.Error(), `belongs to inventory set "a"`) {
			t.Fatalf("Apply of set b (dry run %v) = %v, want a conflict naming set a", dryRun, err)
		}
	}
}

func TestApplyDoesNotTakeOverObjectsCreatedOtherwise(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// What namespace.provision or a person created: a ResourceQuota of the
	// same name as one in the manifests.
	quota := &corev1.ResourceQuota{
		ObjectMeta: metav1.ObjectMeta{Name: "quota", Labels: e.labels},
		Spec:       corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourcePods: resource.MustParse("10")}},
	}
	if _, err := e.admin.CoreV1().ResourceQuotas(e.ns).Create(ctx, quota, metav1.CreateOptions{FieldManager: "attache"}); err != nil {
		t.Fatal(err)
	}
	objs, err := inventory.Decode([]byte(okConfigMap + "---\napiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: quota\nspec:\n  hard:\n    pods: \"1000\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	e.writes.Store(0)
	_, err = e.applier.Apply(ctx, e.ns, "web", e.labels, objs, false)
	if !errors.Is(err, inventory.ErrConflict) || !strings.Contains(err.Error(), "document 2 (v1/ResourceQuota "+e.ns+"/quota)") {
		t.Fatalf("Apply = %v, want a conflict naming document 2", err)
	}
	if w := e.writes.Load(); w != 0 {
		t.Errorf("the refused Apply made %d write requests; ownership is checked before writing", w)
	}
	live, err := e.admin.CoreV1().ResourceQuotas(e.ns).Get(ctx, "quota", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := live.Spec.Hard[corev1.ResourcePods]; got.Cmp(resource.MustParse("10")) != 0 {
		t.Fatalf("the quota was taken over: pods %s", got.String())
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	e := newEnv(t)
	ns := e.ns
	ctx := context.Background()

	changes := e.apply(t, "web", manifests("hello", image1), true)
	if c := countOps(changes); c[inventory.Create] != 6 || len(changes) != 6 {
		t.Fatalf("dry run on an empty namespace: %q", ops(changes))
	}
	if e.get(t, "v1", "ConfigMap", "web-config") != nil || e.get(t, "apps/v1", "Deployment", "web") != nil {
		t.Fatal("a dry run created objects")
	}
	if _, err := e.admin.CoreV1().ConfigMaps(ns).Get(ctx, "attache-inventory-web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a dry run wrote the inventory (get: %v)", err)
	}

	e.apply(t, "web", manifests("hello", image1), false)
	before, err := e.admin.CoreV1().ConfigMaps(ns).Get(ctx, "attache-inventory-web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	changes = e.apply(t, "web", manifests("bonjour", image1, "Role/reader"), true)
	wantOps(t, changes,
		"noop v1/ServiceAccount "+ns+"/web",
		"update v1/ConfigMap "+ns+"/web-config",
		"noop v1/Service "+ns+"/web",
		"noop apps/v1/Deployment "+ns+"/web",
		"noop rbac.authorization.k8s.io/v1/RoleBinding "+ns+"/reader",
		"delete rbac.authorization.k8s.io/v1/Role "+ns+"/reader",
	)
	if got, _, _ := unstructured.NestedString(e.get(t, "v1", "ConfigMap", "web-config").Object, "data", "greeting"); got != "hello" {
		t.Errorf("a dry run changed the greeting to %q", got)
	}
	if e.get(t, "rbac.authorization.k8s.io/v1", "Role", "reader") == nil {
		t.Error("a dry run pruned the Role")
	}
	after, err := e.admin.CoreV1().ConfigMaps(ns).Get(ctx, "attache-inventory-web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != before.ResourceVersion {
		t.Error("a dry run rewrote the inventory")
	}
	// The server validated the dry run: an invalid object fails it.
	bad := strings.Replace(manifests("hello", image1), "replicas: 3", "replicas: -1", 1)
	objs, err := inventory.Decode([]byte(bad))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.applier.Apply(ctx, ns, "web", e.labels, objs, true); err == nil || !strings.Contains(err.Error(), "Deployment") {
		t.Fatalf("dry run of an invalid Deployment = %v, want the server's refusal", err)
	}
}

func TestSetsAndDelete(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.apply(t, "web", manifests("hello", image1), false)
	e.apply(t, "extra", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\ndata:\n  a: b\n", false)

	sets, err := e.applier.Sets(ctx, e.ns)
	if err != nil || !slices.Equal(sets, []string{"extra", "web"}) {
		t.Fatalf("Sets = %v, %v; want [extra web]", sets, err)
	}
	if err := e.applier.Delete(ctx, e.ns, "web"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	for _, k := range [][3]string{
		{"v1", "ServiceAccount", "web"}, {"v1", "ConfigMap", "web-config"}, {"v1", "Service", "web"},
		{"apps/v1", "Deployment", "web"}, {"rbac.authorization.k8s.io/v1", "Role", "reader"},
	} {
		eventually(t, 30*time.Second, k[1]+" "+k[2]+" deleted", func() (bool, error) {
			return e.get(t, k[0], k[1], k[2]) == nil, nil
		})
	}
	if e.get(t, "v1", "ConfigMap", "extra") == nil {
		t.Fatal("Delete of set web deleted set extra's ConfigMap")
	}
	sets, err = e.applier.Sets(ctx, e.ns)
	if err != nil || !slices.Equal(sets, []string{"extra"}) {
		t.Fatalf("Sets after Delete = %v, %v; want [extra]", sets, err)
	}
	if err := e.applier.Delete(ctx, e.ns, "web"); err != nil {
		t.Fatalf("Delete of a deleted set: %v", err)
	}
	drift, err := e.applier.Drift(ctx, e.ns, "web")
	if err != nil || len(drift) != 0 {
		t.Fatalf("Drift of a deleted set = %v, %v", drift, err)
	}
}

func TestCancellation(t *testing.T) {
	e := newEnv(t)
	var b strings.Builder
	for i := range 300 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-%d\ndata:\n  i: %q\n", i, fmt.Sprint(i))
	}
	objs, err := inventory.Decode([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.applier.Apply(ctx, e.ns, "many", e.labels, objs, false); !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply with a cancelled context = %v", err)
	}
	if _, err := e.applier.Drift(ctx, e.ns, "many"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Drift with a cancelled context = %v", err)
	}

	// Cancelled part way: it returns promptly with ctx's error, and what it
	// applied is recorded, so that a later Apply prunes it.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for e.writes.Load() < 20 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	start := time.Now()
	_, err = e.applier.Apply(ctx, e.ns, "many", e.labels, objs, false)
	took := time.Since(start)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply cancelled part way = %v, want context.Canceled", err)
	}
	if took > 5*time.Second {
		t.Errorf("Apply took %v to return after cancellation", took)
	}
	list, err := e.admin.CoreV1().ConfigMaps(e.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "attache.dev/tenant=acme"})
	if err != nil {
		t.Fatal(err)
	}
	created := 0
	for _, cm := range list.Items {
		if strings.HasPrefix(cm.Name, "cm-") {
			created++
		}
	}
	if created == 0 || created == 300 {
		t.Fatalf("%d ConfigMaps created before the cancellation; want some, not all", created)
	}
	changes := e.apply(t, "many", "", false)
	if c := countOps(changes); c[inventory.Delete] < created {
		t.Fatalf("apply of nothing after the cancelled apply: %d deletes, want at least %d", c[inventory.Delete], created)
	}
	eventually(t, 10*time.Second, "everything the cancelled apply created pruned", func() (bool, error) {
		list, err := e.admin.CoreV1().ConfigMaps(e.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "attache.dev/tenant=acme"})
		if err != nil {
			return false, err
		}
		for _, cm := range list.Items {
			if strings.HasPrefix(cm.Name, "cm-") {
				return false, nil
			}
		}
		return true, nil
	})
	t.Logf("cancelled after %d of 300 objects, returned in %v", created, took)
}

// waitDeploymentObserved waits until the deployment controller has seen the
// Deployment's generation and reported its status.
func waitDeploymentObserved(t *testing.T, e *env, name string) {
	t.Helper()
	eventually(t, 60*time.Second, "deployment "+name+" observed", func() (bool, error) {
		d, err := e.admin.AppsV1().Deployments(e.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return d.Status.ObservedGeneration == d.Generation && d.Status.Replicas > 0, nil
	})
}
