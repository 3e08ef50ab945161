package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// NeverReadyLabel on a Pod (in a Deployment: spec.template.metadata.labels),
// with any value, makes kwok run the Pod without ever making it Ready, as if
// its readiness probe always failed. See the package documentation.
const NeverReadyLabel = "attache.dev/test-never-ready"

// NeverReadyImage anywhere in a container's image reference does the same
// as NeverReadyLabel, so that an upgrade that changes only images can fail:
// e.g. "registry.example/web-test-never-ready@sha256:<64 hex digits>".
const NeverReadyImage = "test-never-ready"

const (
	fakeNodeAnnotation = "kwok.x-k8s.io/node" // kwok manages Nodes with this annotation ...
	fakeNodeValue      = "fake"               // ... set to this
	nodeTypeLabel      = "type"               // label of our fake Nodes, for listing them
	nodeTypeValue      = "kwok"
	maxNodes           = 64 // each Node gets a /16 of 10.64.0.0/10 for Pod IPs
)

// neverReadyQuery is a jq expression (kwok's stage selectors evaluate
// them on the Pod) that is true for Pods that must never become Ready.
var neverReadyQuery = fmt.Sprintf(
	`(.metadata.labels[%q] != null) or ([.spec.containers[]?.image | strings | contains(%q)] | any)`,
	NeverReadyLabel, NeverReadyImage)

// stages returns kwok's configuration: the Stages of kwok's "fast" set
// (<stageDir>/fast/kustomization.yaml: node initialization, node heartbeats
// with leases, pod ready/complete/delete) with pod-ready restricted to Pods
// that are not never-ready, plus our attache-pod-never-ready stage for those.
func stages(stageDir string) ([]byte, error) {
	files, err := kustomizeResources(filepath.Join(stageDir, "fast"), 0)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	podReady := false
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var stage map[string]any
		if err := yaml.Unmarshal(raw, &stage); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if stage["kind"] != "Stage" {
			return nil, fmt.Errorf("%s: kind %v, want Stage", f, stage["kind"])
		}
		if meta, _ := stage["metadata"].(map[string]any); meta["name"] == "pod-ready" {
			if err := addRequirement(stage, map[string]any{
				"key":      neverReadyQuery,
				"operator": "NotIn",
				"values":   []any{"true"},
			}); err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			podReady = true
		}
		b, err := yaml.Marshal(stage)
		if err != nil {
			return nil, err
		}
		out.WriteString("---\n")
		out.Write(b)
	}
	if !podReady {
		return nil, fmt.Errorf("no pod-ready stage in %s/fast (kwok's stage set changed?)", stageDir)
	}
	never, err := yaml.Marshal(map[string]any{
		"apiVersion": "kwok.x-k8s.io/v1alpha1",
		"kind":       "Stage",
		"metadata":   map[string]any{"name": "attache-pod-never-ready"},
		"spec": map[string]any{
			"resourceRef": map[string]any{"apiGroup": "v1", "kind": "Pod"},
			// kwok's pod-ready selector, and never-ready.
			"selector": map[string]any{"matchExpressions": []any{
				map[string]any{"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
				map[string]any{"key": ".status.phase", "operator": "In", "values": []any{"Pending"}},
				map[string]any{"key": neverReadyQuery, "operator": "In", "values": []any{"true"}},
			}},
			"next": map[string]any{
				"event": map[string]any{
					"type":    "Warning",
					"reason":  "Unhealthy",
					"message": "Readiness probe failed: kubetest never-ready Pod (" + NeverReadyLabel + " label or " + NeverReadyImage + " image)",
				},
				"statusTemplate": neverReadyStatus,
			},
		},
	})
	if err != nil {
		return nil, err
	}
	out.WriteString("---\n")
	out.Write(never)
	return out.Bytes(), nil
}

// neverReadyStatus is kwok's pod-ready status template (v0.8.0) with the
// containers running but not ready, as the kubelet reports a Pod whose
// readiness probe fails.
const neverReadyStatus = `{{ $now := Now }}

conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  message: 'containers with unready status: [{{ range $i, $c := .spec.containers }}{{ if $i }} {{ end }}{{ $c.name }}{{ end }}]'
  reason: ContainersNotReady
  status: "False"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  message: 'containers with unready status: [{{ range $i, $c := .spec.containers }}{{ if $i }} {{ end }}{{ $c.name }}{{ end }}]'
  reason: ContainersNotReady
  status: "False"
  type: ContainersReady

containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}

initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  {{ if eq .restartPolicy "Always" }}
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
  {{ else }}
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
  {{ end }}
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
`

// kustomizeResources lists the files a kustomization directory names in
// resources, following directories (kwok's stage sets are built that way).
func kustomizeResources(dir string, depth int) ([]string, error) {
	if depth > 5 {
		return nil, fmt.Errorf("%s: kustomizations nested too deep", dir)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(raw, &k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml: %w", dir, err)
	}
	var files []string
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		sub, err := kustomizeResources(p, depth+1)
		if err != nil {
			return nil, err
		}
		files = append(files, sub...)
	}
	return files, nil
}

// addRequirement appends a requirement to a Stage's
// spec.selector.matchExpressions.
func addRequirement(stage map[string]any, req map[string]any) error {
	spec, ok := stage["spec"].(map[string]any)
	if !ok {
		return fmt.Errorf("stage has no spec")
	}
	sel, ok := spec["selector"].(map[string]any)
	if !ok {
		sel = map[string]any{}
		spec["selector"] = sel
	}
	exprs, _ := sel["matchExpressions"].([]any)
	sel["matchExpressions"] = append(exprs, req)
	return nil
}

// createNodes creates n fake Nodes for kwok: kwok-node-<i>, annotated
// kwok.x-k8s.io/node=fake, untainted, with room for thousands of Pods.
func createNodes(ctx context.Context, cs kubernetes.Interface, n int) error {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("1000"),
		corev1.ResourceMemory: resource.MustParse("4Ti"),
		corev1.ResourcePods:   resource.MustParse("10000"),
	}
	for i := range n {
		name := "kwok-node-" + strconv.Itoa(i)
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name: name,
				Annotations: map[string]string{
					fakeNodeAnnotation:             fakeNodeValue,
					"node.alpha.kubernetes.io/ttl": "0",
				},
				Labels: map[string]string{
					nodeTypeLabel:            nodeTypeValue,
					"kubernetes.io/hostname": name,
					"kubernetes.io/os":       "linux",
					"kubernetes.io/arch":     "amd64",
					"kubernetes.io/role":     "agent",
				},
			},
			Spec: corev1.NodeSpec{
				PodCIDR:  fmt.Sprintf("10.%d.0.0/16", 64+i),
				PodCIDRs: []string{fmt.Sprintf("10.%d.0.0/16", 64+i)},
			},
			Status: corev1.NodeStatus{
				Capacity:    capacity,
				Allocatable: capacity,
			},
		}
		if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create fake node %s: %w", name, err)
		}
	}
	return nil
}
