package plan

import (
	"context"
	"testing"
)

// BenchmarkSign signs the sample plan (4 steps with params) with one ed25519
// key and reports signs per second (on one core with -cpu 1).
func BenchmarkSign(b *testing.B) {
	ctx := context.Background()
	p := samplePlan(b)
	s := seededSigner(1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := Sign(ctx, p, s); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
}
