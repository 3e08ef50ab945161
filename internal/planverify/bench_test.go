package planverify

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
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

// BenchmarkEd25519Floor is the bare ed25519.Verify that BenchmarkVerify
// performs, on the same bytes: the DSSE PAE of the same signed plan, its
// signature and the plans public key. It is the ceiling for BenchmarkVerify
// on the same machine, telling the cost of the rules (decoding, validation,
// binding) from the cost of the curve.
func BenchmarkEd25519Floor(b *testing.B) {
	env := signPlan(b, testPlan(), "plans")
	var e dsse.Envelope
	if err := json.Unmarshal(env, &e); err != nil || len(e.Signatures) != 1 {
		b.Fatalf("envelope: %v", err)
	}
	payload, err := base64.StdEncoding.DecodeString(e.Payload)
	if err != nil {
		b.Fatal(err)
	}
	sig, err := base64.StdEncoding.DecodeString(e.Signatures[0].Sig)
	if err != nil {
		b.Fatal(err)
	}
	pae := dsse.PAE(e.PayloadType, payload)
	pub := ed25519.PublicKey(key("plans").PublicKey().Public)
	b.SetBytes(int64(len(pae)))
	b.ResetTimer()
	for b.Loop() {
		if !ed25519.Verify(pub, pae, sig) {
			b.Fatal("bad signature")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
}

// BenchmarkVerifyReleased verifies a signed plan rendered from a signed
// release (2 steps with migrations, manifests and flags): both signatures,
// the release's strict decode and validation, and its rendering compared
// with the plan's steps.
func BenchmarkVerifyReleased(b *testing.B) {
	ctx := context.Background()
	r := testRelease(b)
	env := signPlan(b, releasedPlan(b, r, signRelease(b, r, "releases")), "plans")
	v := strictVerifier()
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
