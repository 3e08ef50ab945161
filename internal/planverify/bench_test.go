package planverify

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"testing"
)

// BenchmarkVerify verifies a signed 3-step plan with params against a root
// with a one-key plans role and reports verifications per second; run it
// with -cpu 1 for the per-core figure (target: at least 20,000/s).
func BenchmarkVerify(b *testing.B) {
	ctx := context.Background()
	env := signPlan(b, testPlan(), "plans")
	v := testVerifier()
	b.SetBytes(int64(len(env)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := v.Verify(ctx, env); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
}

// BenchmarkEd25519Floor is one bare ed25519 verification of a message the
// size of BenchmarkVerify's DSSE PAE: the floor under BenchmarkVerify on the
// same machine, to tell the cost of the rules from the cost of the curve.
func BenchmarkEd25519Floor(b *testing.B) {
	s := key("plans")
	pub := ed25519.PublicKey(s.PublicKey().Public)
	msg := signPlan(b, testPlan(), "plans") // any bytes of about the right size
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{allSeeds["plans"]}, ed25519.SeedSize))
	sig := ed25519.Sign(priv, msg)
	b.ResetTimer()
	for b.Loop() {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("bad signature")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
}
