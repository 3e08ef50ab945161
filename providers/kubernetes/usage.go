package kubernetes

import (
	"context"
	"sync"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Meters Usage reports per tenant namespace (the agent prefixes them with
// the provider's name: kubernetes.requests.cpu_cores).
const (
	MeterRequestsCPU    = "requests.cpu_cores"
	MeterRequestsMemory = "requests.memory_bytes"
	MeterLimitsCPU      = "limits.cpu_cores"
	MeterLimitsMemory   = "limits.memory_bytes"
	MeterPods           = "pods"
)

// Usage reports, per tenant namespace (only req.tenants if set), the CPU
// and memory its pods request and are limited to, and how many pods there
// are, over the pods that have not terminated (phase Succeeded or Failed).
// A pod counts what the scheduler reserves for it: its containers (and
// sidecar init containers) summed, or its largest init container if that
// is more, plus the pod overhead.
func (p *Provider) Usage(ctx context.Context, req *providerv1.UsageRequest) (*providerv1.UsageResponse, error) {
	e, err := p.getEnv()
	if err != nil {
		return nil, err
	}
	tenants, err := e.tenantNamespaces(ctx, req.GetTenants())
	if err != nil {
		return nil, err
	}
	now := timestamppb.Now()
	per := make([][]*providerv1.UsageSample, len(tenants))
	errs := make([]error, len(tenants))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, t := range tenants {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			per[i], errs[i] = e.namespaceUsage(ctx, t, now)
		})
	}
	wg.Wait()
	resp := &providerv1.UsageResponse{}
	for i := range tenants {
		if errs[i] != nil {
			return nil, errs[i]
		}
		resp.Samples = append(resp.Samples, per[i]...)
	}
	return resp, nil
}

// namespaceUsage sums one namespace's pods.
func (e *env) namespaceUsage(ctx context.Context, t tenantNS, now *timestamppb.Timestamp) ([]*providerv1.UsageSample, error) {
	pods, err := e.c.kube.CoreV1().Pods(t.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, apiError("list pods in "+t.namespace, err)
	}
	var reqCPU, reqMem, limCPU, limMem resource.Quantity
	n := 0
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		n++
		req := podResources(pod, func(c *corev1.Container) corev1.ResourceList { return c.Resources.Requests })
		lim := podResources(pod, func(c *corev1.Container) corev1.ResourceList { return c.Resources.Limits })
		reqCPU.Add(req[corev1.ResourceCPU])
		reqMem.Add(req[corev1.ResourceMemory])
		limCPU.Add(lim[corev1.ResourceCPU])
		limMem.Add(lim[corev1.ResourceMemory])
	}
	sample := func(meter string, v float64) *providerv1.UsageSample {
		return &providerv1.UsageSample{Tenant: t.tenant, Meter: meter, Value: v, Time: now}
	}
	return []*providerv1.UsageSample{
		sample(MeterRequestsCPU, cores(reqCPU)),
		sample(MeterRequestsMemory, float64(reqMem.Value())),
		sample(MeterLimitsCPU, cores(limCPU)),
		sample(MeterLimitsMemory, float64(limMem.Value())),
		sample(MeterPods, float64(n)),
	}, nil
}

// cores converts a CPU quantity to cores.
func cores(q resource.Quantity) float64 { return float64(q.MilliValue()) / 1000 }

// podResources is a pod's effective CPU and memory of one kind (requests or
// limits): the sum over its containers and sidecar (restartable) init
// containers, or the largest regular init container (with the sidecars
// started before it) if that is more, plus the pod's overhead.
func podResources(pod *corev1.Pod, of func(*corev1.Container) corev1.ResourceList) corev1.ResourceList {
	out := corev1.ResourceList{}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		var sum, sidecars, initMax resource.Quantity
		for i := range pod.Spec.Containers {
			sum.Add(of(&pod.Spec.Containers[i])[name])
		}
		for i := range pod.Spec.InitContainers {
			c := &pod.Spec.InitContainers[i]
			q := of(c)[name]
			if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
				sidecars.Add(q)
				continue
			}
			during := sidecars.DeepCopy()
			during.Add(q)
			if during.Cmp(initMax) > 0 {
				initMax = during
			}
		}
		sum.Add(sidecars)
		if initMax.Cmp(sum) > 0 {
			sum = initMax
		}
		sum.Add(pod.Spec.Overhead[name])
		out[name] = sum
	}
	return out
}
