package inventory_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"attache.dev/attache/providers/kubernetes/inventory"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

const okConfigMap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\ndata:\n  a: b\n"

func configMaps(n, size int) []*unstructured.Unstructured {
	objs := make([]*unstructured.Unstructured, n)
	for i := range objs {
		objs[i] = &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": "cm-" + strconv.Itoa(i)},
			"data":     map[string]any{"v": strings.Repeat("v", size)},
		}}
	}
	return objs
}

func TestApplyRefuses(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name      string
		set       string
		manifests string
		objs      []*unstructured.Unstructured // instead of manifests
		want      []string                     // in the error
	}{
		{
			name:      "cluster-scoped kind",
			manifests: okConfigMap + "---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata:\n  name: high\nvalue: 1000\n",
			want:      []string{"document 2", "scheduling.k8s.io/v1/PriorityClass high", "cluster-scoped"},
		},
		{
			name:      "ClusterRole",
			manifests: "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: god\nrules: []\n",
			want:      []string{"document 1", "rbac.authorization.k8s.io/v1/ClusterRole god", "cluster-scoped"},
		},
		{
			name:      "ClusterRoleBinding",
			manifests: okConfigMap + "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: me\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\n",
			want:      []string{"document 2", "ClusterRoleBinding me"},
		},
		{
			name:      "Namespace",
			manifests: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-system\n",
			want:      []string{"document 1", "v1/Namespace kube-system", "not allowed"},
		},
		{
			name:      "another namespace",
			manifests: okConfigMap + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sneaky\n  namespace: kube-system\n",
			want:      []string{"document 2", "v1/ConfigMap sneaky", `names namespace "kube-system"`},
		},
		{
			name:      "RoleBinding to a ClusterRole",
			manifests: okConfigMap + "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: admin\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: admin\nsubjects:\n- kind: ServiceAccount\n  name: default\n",
			want:      []string{"document 2", "RoleBinding admin", `ClusterRole "admin"`},
		},
		{
			name:      "Secret with data",
			manifests: "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\ndata:\n  password: aHVudGVyMg==\n",
			want:      []string{"document 1", "v1/Secret creds", "with data", "secret references"},
		},
		{
			name:      "Secret with stringData",
			manifests: okConfigMap + "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: hunter2\n",
			want:      []string{"document 2", "v1/Secret creds", "with stringData"},
		},
		{
			name:      "duplicate object",
			manifests: okConfigMap + "---\n" + okConfigMap,
			want:      []string{"document 2", "v1/ConfigMap", "/ok", "same object as document 1"},
		},
		{
			name:      "duplicate object in another version",
			manifests: "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\nspec:\n  scaleTargetRef: {kind: Deployment, name: web, apiVersion: apps/v1}\n  maxReplicas: 3\n---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: web\nspec:\n  scaleTargetRef: {kind: Deployment, name: web, apiVersion: apps/v1}\n  maxReplicas: 3\n",
			want:      []string{"document 2", "HorizontalPodAutoscaler", "same object as document 1"},
		},
		{
			name:      "unknown kind",
			manifests: okConfigMap + "---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
			want:      []string{"document 2", "unknown kind example.com/v1/Widget"},
		},
		{
			name:      "an inventory's name",
			manifests: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: attache-inventory-web\n",
			want:      []string{"document 1", "reserved for inventories"},
		},
		{
			name: "too many objects",
			objs: configMaps(inventory.MaxObjects+1, 1),
			want: []string{"501 objects", "at most 500"},
		},
		{
			name: "too many bytes",
			objs: configMaps(3, 400<<10),
			want: []string{"document 3", "exceed 1048576 bytes"},
		},
		{
			name:      "set not a DNS label",
			set:       "Web_1",
			manifests: okConfigMap,
			want:      []string{`set "Web_1"`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs := tc.objs
			if objs == nil {
				var err error
				objs, err = inventory.Decode([]byte(tc.manifests))
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
			}
			set := tc.set
			if set == "" {
				set = "web"
			}
			e.writes.Store(0)
			for _, dryRun := range []bool{true, false} {
				_, err := e.applier.Apply(context.Background(), e.ns, set, e.labels, objs, dryRun)
				if err == nil {
					t.Fatalf("Apply(dryRun=%v) succeeded", dryRun)
				}
				if !errors.Is(err, inventory.ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
			}
			if w := e.writes.Load(); w != 0 {
				t.Errorf("a refused Apply made %d write requests", w)
			}
		})
	}
	if _, err := e.admin.CoreV1().ConfigMaps(e.ns).Get(context.Background(), "attache-inventory-web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("refused applies wrote an inventory (get: %v)", err)
	}
	if e.get(t, "v1", "ConfigMap", "ok") != nil {
		t.Fatal("a refused Apply created the valid object beside the refused one")
	}
}
