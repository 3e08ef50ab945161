package kubetest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

const (
	imageV1 = "registry.example/web@sha256:1111111111111111111111111111111111111111111111111111111111111111"
	imageV2 = "registry.example/web@sha256:2222222222222222222222222222222222222222222222222222222222222222"
	// an image reference carrying the never-ready marker
	imageNeverReady = "registry.example/web-" + NeverReadyImage + "@sha256:3333333333333333333333333333333333333333333333333333333333333333"
)

func deployment(name string, replicas int32, image string, podLabels map[string]string) *appsv1.Deployment {
	l := map[string]string{"app": name}
	for k, v := range podLabels {
		l[k] = v
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: l},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name:  "web",
					Image: image,
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
						HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)},
					}},
				}}},
			},
		},
	}
}

// rolledOut reports whether d's latest generation is fully rolled out and
// available, as `kubectl rollout status` does, or what it waits for.
func rolledOut(d *appsv1.Deployment) (bool, string) {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	status := fmt.Sprintf("generation %d observed %d, replicas %d updated %d ready %d available %d of %d",
		d.Generation, s.ObservedGeneration, s.Replicas, s.UpdatedReplicas, s.ReadyReplicas, s.AvailableReplicas, want)
	if s.ObservedGeneration < d.Generation || s.UpdatedReplicas != want || s.Replicas != want || s.AvailableReplicas != want {
		return false, status
	}
	for _, c := range s.Conditions {
		if c.Type == appsv1.DeploymentAvailable && c.Status != corev1.ConditionTrue {
			return false, status + "; Available " + string(c.Status)
		}
	}
	return true, status
}

func waitRolledOut(t *testing.T, cs kubernetes.Interface, ns, name string) time.Duration {
	t.Helper()
	return waitFor(t, 60*time.Second, "rollout of "+ns+"/"+name, func() (bool, string) {
		d, err := cs.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return rolledOut(d)
	})
}

// TestDeploymentRollout: a 2-replica Deployment becomes Available on the
// fake node, an image update rolls out, scaling works, and deleting the
// namespace finishes (namespace controller + kwok deleting Pods).
func TestDeploymentRollout(t *testing.T) {
	c := sharedCluster(t)
	cs := c.Client(t)
	ctx := context.Background()
	ns := createNamespace(t, cs, "rollout")

	start := time.Now()
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("web", 2, imageV1, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRolledOut(t, cs, ns, "web")
	t.Logf("2-replica rollout took %v", time.Since(start).Round(time.Millisecond))

	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 2 {
		t.Fatalf("%d pods, want 2", len(pods.Items))
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || !podReady(&p) || !strings.HasPrefix(p.Spec.NodeName, "kwok-node-") {
			t.Errorf("pod %s: phase %s ip %q ready %v node %q; want Running, an IP, Ready, on a kwok node", p.Name, p.Status.Phase, p.Status.PodIP, podReady(&p), p.Spec.NodeName)
		}
	}

	// An image update rolls out (old Pods are deleted: kwok's pod-delete).
	start = time.Now()
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Spec.Template.Spec.Containers[0].Image = imageV2
	if _, err := cs.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRolledOut(t, cs, ns, "web")
	waitFor(t, 30*time.Second, "old pods gone", func() (bool, string) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err.Error()
		}
		for _, p := range pods.Items {
			if p.Spec.Containers[0].Image != imageV2 {
				return false, "pod " + p.Name + " still has " + p.Spec.Containers[0].Image
			}
		}
		return len(pods.Items) == 2, fmt.Sprintf("%d pods", len(pods.Items))
	})
	t.Logf("image update rollout took %v", time.Since(start).Round(time.Millisecond))

	// The namespace goes away with everything in it.
	start = time.Now()
	if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "namespace "+ns+" deleted", func() (bool, string) {
		n, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, ""
		}
		if err != nil {
			return false, err.Error()
		}
		return false, fmt.Sprintf("phase %s, conditions %v", n.Status.Phase, n.Status.Conditions)
	})
	t.Logf("namespace deletion took %v", time.Since(start).Round(time.Millisecond))
}

// TestManyPods: a fake node takes hundreds of Pods.
func TestManyPods(t *testing.T) {
	c := sharedCluster(t)
	cs := c.Client(t)
	ns := createNamespace(t, cs, "many")
	start := time.Now()
	if _, err := cs.AppsV1().Deployments(ns).Create(context.Background(), deployment("many", 300, imageV1, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRolledOut(t, cs, ns, "many")
	t.Logf("300-replica rollout took %v", time.Since(start).Round(time.Millisecond))
	if err := cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestNeverReady: Pods marked with NeverReadyLabel or NeverReadyImage run
// but never become Ready, so their Deployment reports
// ProgressDeadlineExceeded, while unmarked Pods beside them are Ready.
func TestNeverReady(t *testing.T) {
	c := sharedCluster(t)
	cs := c.Client(t)
	tests := []struct {
		name      string
		image     string
		podLabels map[string]string
		upgradeTo string // if set: roll out image first, then update to this image
	}{
		{name: "label", image: imageV1, podLabels: map[string]string{NeverReadyLabel: "true"}},
		{name: "label with any value", image: imageV1, podLabels: map[string]string{NeverReadyLabel: ""}},
		{name: "image", image: imageNeverReady},
		{name: "upgrade to never-ready image", image: imageV1, upgradeTo: imageNeverReady},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			ns := createNamespace(t, cs, "never-ready")
			t.Cleanup(func() { cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })

			d := deployment("web", 2, tt.image, tt.podLabels)
			deadline := int32(5)
			d.Spec.ProgressDeadlineSeconds = &deadline
			if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			// A Pod without the marker, beside them, becomes Ready.
			if _, err := cs.AppsV1().Deployments(ns).Create(ctx, deployment("control", 1, imageV1, nil), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if tt.upgradeTo != "" {
				waitRolledOut(t, cs, ns, "web")
				d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				d.Spec.Template.Spec.Containers[0].Image = tt.upgradeTo
				if _, err := cs.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			}

			start := time.Now()
			var final *appsv1.Deployment
			waitFor(t, 60*time.Second, "ProgressDeadlineExceeded", func() (bool, string) {
				d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
				if err != nil {
					return false, err.Error()
				}
				final = d
				for _, c := range d.Status.Conditions {
					if c.Type == appsv1.DeploymentProgressing {
						return c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded",
							fmt.Sprintf("Progressing %s %s: %s", c.Status, c.Reason, c.Message)
					}
				}
				return false, "no Progressing condition"
			})
			t.Logf("ProgressDeadlineExceeded after %v", time.Since(start).Round(time.Millisecond))
			if ok, status := rolledOut(final); ok {
				t.Errorf("deployment rolled out: %s", status)
			}
			if tt.upgradeTo != "" && final.Status.AvailableReplicas != 2 {
				t.Errorf("old pods: %d available, want 2 (the old ReplicaSet keeps serving)", final.Status.AvailableReplicas)
			}

			// The marked Pods run but are not Ready, like a failing readiness probe.
			sel := labels.SelectorFromSet(map[string]string{"app": "web"}).String()
			pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
			if err != nil {
				t.Fatal(err)
			}
			marked := 0
			for _, p := range pods.Items {
				_, labelled := p.Labels[NeverReadyLabel]
				if !labelled && !strings.Contains(p.Spec.Containers[0].Image, NeverReadyImage) {
					continue
				}
				marked++
				if p.Status.Phase != corev1.PodRunning || podReady(&p) || p.Status.PodIP == "" {
					t.Errorf("pod %s: phase %s ready %v ip %q; want Running, not Ready, an IP", p.Name, p.Status.Phase, podReady(&p), p.Status.PodIP)
				}
				for _, cond := range p.Status.Conditions {
					if cond.Type == corev1.PodReady && (cond.Reason != "ContainersNotReady" || !strings.Contains(cond.Message, "[web]")) {
						t.Errorf("pod %s Ready condition %s/%s, want ContainersNotReady naming [web]", p.Name, cond.Reason, cond.Message)
					}
				}
				if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].Ready || p.Status.ContainerStatuses[0].State.Running == nil {
					t.Errorf("pod %s container statuses %+v, want running and not ready", p.Name, p.Status.ContainerStatuses)
				}
			}
			if marked == 0 {
				t.Fatalf("no marked pods among %d", len(pods.Items))
			}
			// kwok reports it as the kubelet would.
			waitFor(t, 10*time.Second, "Unhealthy event", func() (bool, string) {
				ev, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=Unhealthy"})
				if err != nil {
					return false, err.Error()
				}
				return len(ev.Items) > 0, fmt.Sprintf("%d events", len(ev.Items))
			})
			waitRolledOut(t, cs, ns, "control")
		})
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
