package planverify

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/sign"
)

// checkAccepted re-checks every rule for an accepted envelope independently
// of Verify's code path: ed25519 over the DSSE PAE with the root's plans
// keys, strict decode, validation, binding, sequence and clock.
func checkAccepted(t *testing.T, v *Verifier, envelope []byte, got *planv1.Plan) {
	t.Helper()
	if len(envelope) > plan.MaxPlanBytes {
		t.Fatalf("accepted a %d-byte envelope", len(envelope))
	}
	var e struct {
		PayloadType string
		Payload     string
		Signatures  []struct{ Sig string }
	}
	if err := json.Unmarshal(envelope, &e); err != nil {
		t.Fatalf("accepted envelope does not decode: %v", err)
	}
	if e.PayloadType != plan.PayloadType {
		t.Fatalf("accepted payload type %q", e.PayloadType)
	}
	payload, err := base64.StdEncoding.DecodeString(e.Payload)
	if err != nil {
		if payload, err = base64.URLEncoding.DecodeString(e.Payload); err != nil {
			t.Fatalf("accepted payload is not base64: %v", err)
		}
	}
	pae := dsse.PAE(e.PayloadType, payload)
	rk := v.Root.Roles["plans"]
	n := 0
	for _, id := range rk.KeyIDs {
		for _, s := range e.Signatures {
			sig, err := base64.StdEncoding.DecodeString(s.Sig)
			if err != nil {
				sig, _ = base64.URLEncoding.DecodeString(s.Sig)
			}
			if bytesVerify(v.Root.Keys[id].Public, pae, sig) {
				n++
				break
			}
		}
	}
	if n < rk.Threshold {
		t.Fatalf("accepted with %d valid plans signatures, threshold %d", n, rk.Threshold)
	}
	p, err := plan.Unmarshal(payload)
	if err != nil {
		t.Fatalf("accepted payload does not decode: %v", err)
	}
	if !proto.Equal(p, got) {
		t.Fatal("Verify returned a plan other than the signed one")
	}
	if err := plan.Validate(p); err != nil {
		t.Fatalf("accepted plan does not validate: %v", err)
	}
	now := v.Now()
	switch {
	case p.GetTenant() != "acme":
		t.Fatalf("accepted plan for tenant %q", p.GetTenant())
	case p.GetAgentSpiffeId() != v.Self.String():
		t.Fatalf("accepted plan for agent %q", p.GetAgentSpiffeId())
	case p.GetSequence() <= v.LastSequence:
		t.Fatalf("accepted sequence %d after %d", p.GetSequence(), v.LastSequence)
	case !now.Before(p.GetExpiresAt().AsTime()):
		t.Fatalf("accepted a plan expired at %s", p.GetExpiresAt().AsTime())
	case p.GetIssuedAt().AsTime().After(now.Add(DefaultClockSkew)):
		t.Fatalf("accepted a plan issued at %s", p.GetIssuedAt().AsTime())
	}
	b1, _ := plan.Marshal(p)
	b2, _ := plan.Marshal(proto.Clone(p).(*planv1.Plan))
	if !bytes.Equal(b1, b2) {
		t.Fatal("accepted plan does not re-encode deterministically")
	}
	if len(p.GetReleaseEnvelope()) == 0 {
		if !v.AllowUnreleased {
			t.Fatal("accepted a plan without a release")
		}
		return
	}
	rel, err := release.Verify(context.Background(), v.Root, p.GetReleaseEnvelope())
	if err != nil {
		t.Fatalf("accepted a plan whose release does not verify: %v", err)
	}
	if err := release.CheckPlan(rel, p); err != nil {
		t.Fatalf("accepted a plan that is not its release's rendering: %v", err)
	}
}

// smallPlan is a one-step plan, so that seeds (and the inputs the fuzzer
// minimizes) stay short.
func smallPlan() *planv1.Plan {
	p := testPlan()
	p.ReleaseRef = ""
	p.Steps = p.Steps[:1]
	return p
}

// FuzzVerify feeds Verify arbitrary bytes. With asPayload false they are the
// envelope; with asPayload true they are a plan payload that the fuzz target
// signs with the plans key first, so that mutations reach the decoding,
// validation, binding, sequence and clock rules rather than all dying at the
// signature. Verify must never panic, every refusal must match exactly one
// reason, and anything accepted must satisfy every rule (checkAccepted).
func FuzzVerify(f *testing.F) {
	good := signPlan(f, smallPlan(), "plans")
	payload, err := plan.Marshal(smallPlan())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, false)
	f.Add(signPlan(f, smallPlan(), "plans", "stranger"), false)
	f.Add(signPlan(f, smallPlan(), "stranger"), false)
	f.Add(signRaw(f, "application/json", []byte("{}"), "plans"), false)
	f.Add(tamperPayload(f, good, 7), false)
	f.Add([]byte(`{"payloadType":"`+plan.PayloadType+`","payload":"","signatures":[{"keyid":"","sig":""}]}`), false)
	f.Add([]byte("{}"), false)
	f.Add([]byte{}, false)
	f.Add(payload, true)
	for _, mut := range []func(p *planv1.Plan){
		func(p *planv1.Plan) { p.Sequence = 9 },
		func(p *planv1.Plan) { p.Tenant, p.AgentSpiffeId = "beta", "spiffe://example.org/tenant/beta/agent/a1" },
		func(p *planv1.Plan) { p.AgentSpiffeId = "spiffe://example.org/tenant/acme/agent/a2" },
		func(p *planv1.Plan) { p.IssuedAt = timestamppb.New(testNow.Add(DefaultClockSkew * 2)) },
		func(p *planv1.Plan) { p.ExpiresAt = timestamppb.New(testNow) },
	} {
		p := smallPlan()
		mut(p)
		b, err := plan.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
	}
	f.Add([]byte("\x0a\x01x"), true)
	// A plan rendered from a small signed release, and one that departs
	// from it, so that mutations reach the release checks.
	rel, err := release.ParseYAML([]byte("name: a\nversion: \"1\"\nsteps: [{id: s, provider: local, action: x, resource: \"t/{{tenant}}\"}]\n"))
	if err != nil {
		f.Fatal(err)
	}
	released := smallPlan()
	released.ReleaseRef = release.Ref(rel)
	released.ReleaseEnvelope = signRelease(f, rel, "releases")
	released.ReleaseContext = &planv1.ReleaseContext{Tenant: "acme", Tier: "pool"}
	if released.Steps, err = release.Render(rel, released.ReleaseContext); err != nil {
		f.Fatal(err)
	}
	for _, resource := range []string{"t/acme", "t/evil"} {
		released.Steps[0].Resource = resource
		b, err := plan.Marshal(released)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
	}
	plansKey := key("plans")
	f.Fuzz(func(t *testing.T, data []byte, asPayload bool) {
		envelope := data
		if asPayload {
			env, err := sign.SignPayload(context.Background(), plan.PayloadType, data, plansKey)
			if err != nil {
				return // too large to sign
			}
			envelope = env
		}
		v := testVerifier()
		p, err := v.Verify(context.Background(), envelope)
		if err != nil {
			if p != nil {
				t.Fatal("refusal returned a plan")
			}
			n := 0
			for _, e := range allErrs {
				if errorsIs(err, e) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("refusal matches %d reasons: %v", n, err)
			}
			return
		}
		checkAccepted(t, v, envelope, p)
	})
}
