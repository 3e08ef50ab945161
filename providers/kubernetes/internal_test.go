package kubernetes

import (
	"strings"
	"testing"

	"attache.dev/attache/providers/kubernetes/inventory"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestPodResources(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	c := func(cpu, mem string) corev1.Container {
		return corev1.Container{Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}}}
	}
	sidecar := c("50m", "16Mi")
	sidecar.RestartPolicy = &always
	tests := []struct {
		name     string
		spec     corev1.PodSpec
		cpu, mem string
	}{
		{"containers", corev1.PodSpec{Containers: []corev1.Container{c("100m", "64Mi"), c("200m", "32Mi")}}, "300m", "96Mi"},
		{"small init", corev1.PodSpec{Containers: []corev1.Container{c("100m", "64Mi")}, InitContainers: []corev1.Container{c("50m", "1Mi")}}, "100m", "64Mi"},
		{"large init", corev1.PodSpec{Containers: []corev1.Container{c("100m", "64Mi")}, InitContainers: []corev1.Container{c("1", "1Gi")}}, "1", "1Gi"},
		{"sidecar", corev1.PodSpec{Containers: []corev1.Container{c("100m", "64Mi")}, InitContainers: []corev1.Container{sidecar}}, "150m", "80Mi"},
		{"overhead", corev1.PodSpec{Containers: []corev1.Container{c("100m", "64Mi")}, Overhead: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("1Mi")}}, "110m", "65Mi"},
	}
	for _, tt := range tests {
		got := podResources(&corev1.Pod{Spec: tt.spec}, func(c *corev1.Container) corev1.ResourceList { return c.Resources.Requests })
		if cpu, mem := got[corev1.ResourceCPU], got[corev1.ResourceMemory]; cpu.Cmp(resource.MustParse(tt.cpu)) != 0 || mem.Cmp(resource.MustParse(tt.mem)) != 0 {
			t.Errorf("%s: cpu %s memory %s, want %s %s", tt.name, cpu.String(), mem.String(), tt.cpu, tt.mem)
		}
	}
}

func TestDriftDetail(t *testing.T) {
	var ds []inventory.Drift
	for range 100 {
		ds = append(ds, inventory.Drift{Resource: "apps/v1/Deployment tenant-acme/web", Field: "spec.replicas", Want: "3", Live: "5"})
	}
	got := driftDetail(ds)
	if len(got) > maxDriftDetail || !strings.HasPrefix(got, "apps/v1/Deployment tenant-acme/web spec.replicas want 3 live 5; ") || !strings.Contains(got, " more") {
		t.Errorf("%d bytes: %q", len(got), got)
	}
	if got := driftDetail(ds[:1]); got != "apps/v1/Deployment tenant-acme/web spec.replicas want 3 live 5" {
		t.Errorf("one drift: %q", got)
	}
}

func TestWithDrift(t *testing.T) {
	cs := changes{
		{resource: "a", op: opNoop, summary: "unchanged"},
		{resource: "b", op: opUpdate, summary: "live differs: spec.replicas"},
		{resource: "c", op: opUpdate, summary: "applied configuration changed"},
		{resource: "d", op: opCreate, summary: "create"},
	}
	ds := []inventory.Drift{
		{Resource: "b", Field: "spec.replicas", Want: "2", Live: "5"},
		{Resource: "c", Field: "data.x", Want: "1", Live: "2"},
		{Resource: "d", Field: "missing"},
	}
	var got []string
	for _, c := range withDrift(cs, ds) {
		got = append(got, c.resource+" "+opWord(c.op)+" "+c.summary)
	}
	want := []string{
		"a unchanged unchanged",
		"b updated drift: spec.replicas want 2 live 5",
		"c updated applied configuration changed (drift: data.x)",
		"d created drift: missing (deleted since the last apply); create",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDiffPaths(t *testing.T) {
	a := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"labels": map[string]any{"x": "1"}, "resourceVersion": "1"},
		"spec":     map[string]any{"a": "1", "b": []any{}},
		"data":     map[string]any{"k": "djE="},
		"status":   map[string]any{"phase": "x"},
	}}
	b := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"labels": map[string]any{"x": "2"}, "resourceVersion": "2"},
		"spec":     map[string]any{"a": "2"},
		"data":     map[string]any{"k": "djI="},
		"status":   map[string]any{"phase": "y"},
	}}
	if got := strings.Join(diffPaths(a, b), ", "); got != "metadata.labels, data.k, spec.a" {
		t.Errorf("diff %q", got)
	}
	if got := diffPaths(a, a.DeepCopy()); len(got) != 0 {
		t.Errorf("diff of equal objects: %v", got)
	}
}

func TestScrub(t *testing.T) {
	if got := scrub("password hunter22 and abc", []string{"hunter22", "abc"}); got != "password *** and abc" {
		t.Errorf("scrub: %q", got)
	}
}
