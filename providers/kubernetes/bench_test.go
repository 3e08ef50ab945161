package kubernetes_test

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/kubernetes"
)

// benchEnvInt reads a positive integer from the environment.
func benchEnvInt(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return v
}

// BenchmarkProvisionNamespaces provisions N tenant namespaces
// (ATTACHE_BENCH_K8S_NAMESPACES, default 500, the figure) through
// the provider in-process, ATTACHE_BENCH_K8S_WORKERS (default 16) steps at
// a time, acting as the agent's ServiceAccount against the real API server,
// and reports namespaces per second (the target: at least 20).
// Each namespace gets the full set: namespace, the agent's RoleBinding, two
// NetworkPolicies and one declared ingress allowance, ResourceQuota,
// LimitRange, ServiceAccount, Role, RoleBinding and a Secret: 12 requests.
// ATTACHE_BENCH_K8S_QPS overrides the client's qps (default: the
// configuration's default).
func BenchmarkProvisionNamespaces(b *testing.B) {
	n := benchEnvInt(b, "ATTACHE_BENCH_K8S_NAMESPACES", 500)
	workers := benchEnvInt(b, "ATTACHE_BENCH_K8S_WORKERS", 16)
	qps := benchEnvInt(b, "ATTACHE_BENCH_K8S_QPS", kubernetes.DefaultQPS)
	for range b.N {
		b.StopTimer()
		e := newEnv(b, true)
		e.cfg.QPS, e.cfg.Burst = float64(qps), 2*qps
		e.writeSecret(b, "db.pw", "pw-bench-0123456789")
		p := e.provider(b, nil)
		params := map[string]any{
			"ingress": []any{map[string]any{"name": "ingress", "from_namespace_labels": map[string]any{"kubernetes.io/metadata.name": "ingress-nginx"}, "ports": []any{8080.0}}},
			"secrets": []any{map[string]any{"name": "db", "data": map[string]any{"password": "db.pw"}}},
		}
		b.StartTimer()
		start := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		var mu sync.Mutex
		var lat []time.Duration
		for range workers {
			wg.Go(func() {
				for {
					i := next.Add(1) - 1
					if i >= int64(n) {
						return
					}
					t0 := time.Now()
					tenant := fmt.Sprintf("c%05d", i)
					res, err := p.Apply(b.Context(), step("prov", "namespace.provision", tenant, params), nil)
					if err != nil || res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
						b.Errorf("provision %s: %v %s", tenant, err, res.GetMessage())
						return
					}
					mu.Lock()
					lat = append(lat, time.Since(t0))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		took := time.Since(start)
		b.StopTimer()
		if len(lat) != n {
			b.Fatalf("%d of %d namespaces provisioned", len(lat), n)
		}
		var sum time.Duration
		for _, d := range lat {
			sum += d
		}
		b.ReportMetric(float64(n)/took.Seconds(), "namespaces/s")
		b.ReportMetric(float64(sum.Milliseconds())/float64(n), "ms/namespace")
		b.ReportMetric(took.Seconds(), "total-s")
		b.StartTimer()
	}
}
