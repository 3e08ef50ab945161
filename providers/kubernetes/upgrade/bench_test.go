package upgrade_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"attache.dev/attache/providers/kubernetes/upgrade"
)

// BenchmarkUpgradeToReady measures one Upgrade of a 3-replica Deployment to
// a new image digest, from the call until it returns with every replica of
// the new revision available (kwok's fake Pods become Ready at once, so this
// is the control plane's share: the patch, the deployment and replica set
// controllers, the scheduler, the watch). Reports ms/op; `make bench` runs
// it (docs/BENCHMARKS.md records the figure).
func BenchmarkUpgradeToReady(b *testing.B) {
	e := newEnv(b)
	e.deployment(b, "web", image(webRepo, "0"), 3)
	ctx := context.Background()
	var (
		n     int
		total time.Duration
	)
	for b.Loop() {
		n++
		start := time.Now()
		out, err := upgrade.Upgrade(ctx, e.c, nil, upgrade.Request{
			Namespace:        e.ns,
			Deployment:       "web",
			Images:           map[string]string{"web": image(webRepo, strconv.Itoa(n))},
			ProgressDeadline: time.Minute,
		})
		total += time.Since(start)
		if err != nil {
			b.Fatalf("Upgrade: %v", err)
		}
		if !out.Changed || out.RolledBack {
			b.Fatalf("Outcome = %+v, want a change and no rollback", out)
		}
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(n), "ms/op")
}
