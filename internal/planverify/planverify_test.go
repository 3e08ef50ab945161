package planverify

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/sign"
)

var (
	testNow  = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	selfID   = spiffeid.RequireFromString("spiffe://example.org/tenant/acme/agent/a1")
	allSeeds = map[string]byte{"root1": 1, "root2": 2, "plans": 3, "releases": 4, "stranger": 5, "root3": 6, "root4": 7, "plans2": 8}
)

// key derives a signer from a fixed seed, so fuzz corpora stay valid.
func key(name string) *sign.Signer {
	seed, ok := allSeeds[name]
	if !ok {
		panic("no seed for " + name)
	}
	return sign.NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
}

// makeRoot builds a root whose root role is rootKeys with threshold
// rootThreshold and whose plans role is plansKey.
func makeRoot(version, rootThreshold int, plansKey string, rootKeys ...string) *sign.Root {
	r := &sign.Root{
		Type:        sign.RootType,
		Version:     version,
		TrustDomain: "example.org",
		Expires:     testNow.Add(365 * 24 * time.Hour),
		Keys:        map[string]sign.Key{},
		Roles:       map[string]sign.RoleKeys{},
	}
	role := func(name string, threshold int, keys ...string) {
		var ids []string
		for _, k := range keys {
			s := key(k)
			r.Keys[s.KeyID()] = s.PublicKey()
			ids = append(ids, s.KeyID())
		}
		r.Roles[name] = sign.RoleKeys{KeyIDs: ids, Threshold: threshold}
	}
	role(sign.RoleRoot, rootThreshold, rootKeys...)
	role(sign.RolePlans, 1, plansKey)
	role(sign.RoleReleases, 1, "releases")
	return r
}

// testRoot is version 1: two root keys, both required; one plans key.
func testRoot() *sign.Root { return makeRoot(1, 2, "plans", "root1", "root2") }

func testPlan() *planv1.Plan {
	params, _ := structpb.NewStruct(map[string]any{"to": 3, "files": []any{"001.sql", "002.sql"}})
	return &planv1.Plan{
		PlanId:        "0193a0c0-0000-7000-8000-000000000001",
		Tenant:        "acme",
		AgentSpiffeId: selfID.String(),
		Sequence:      10,
		IssuedAt:      timestamppb.New(testNow.Add(-time.Minute)),
		ExpiresAt:     timestamppb.New(testNow.Add(time.Hour)),
		ReleaseRef:    "app@v2.0.0",
		Steps: []*planv1.Step{
			{Id: "dir", Provider: "local", Action: "dir.ensure", Resource: "tenants/acme"},
			{Id: "db", Provider: "local", Action: "sqlite.ensure", Resource: "tenants/acme/db", DependsOn: []string{"dir"}},
			{Id: "migrate", Provider: "local", Action: "sqlite.migrate", Resource: "tenants/acme/db", Params: params, DependsOn: []string{"db"},
				Compensation: &planv1.Compensation{Action: "sqlite.migrate", Params: &structpb.Struct{Fields: map[string]*structpb.Value{"to": structpb.NewNumberValue(2)}}}},
		},
	}
}

// testVerifier accepts ad hoc plans, as most tests here sign them;
// release_test.go covers the default that refuses them.
func testVerifier() *Verifier {
	return &Verifier{Root: testRoot(), Self: selfID, LastSequence: 9, Now: func() time.Time { return testNow }, AllowUnreleased: true}
}

func signPlan(t testing.TB, p *planv1.Plan, signers ...string) []byte {
	t.Helper()
	var ss []*sign.Signer
	for _, n := range signers {
		ss = append(ss, key(n))
	}
	env, err := plan.Sign(context.Background(), p, ss...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// signRaw signs any payload, bypassing plan.Sign's validation.
func signRaw(t testing.TB, payloadType string, payload []byte, signers ...string) []byte {
	t.Helper()
	var ss []*sign.Signer
	for _, n := range signers {
		ss = append(ss, key(n))
	}
	env, err := sign.SignPayload(context.Background(), payloadType, payload, ss...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func mutatePlan(f func(p *planv1.Plan)) *planv1.Plan {
	p := testPlan()
	f(p)
	return p
}

// tamperPayload flips one byte of the envelope's decoded payload.
func tamperPayload(t testing.TB, env []byte, at int) []byte {
	t.Helper()
	var e map[string]any
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	payload, err := base64.StdEncoding.DecodeString(e["payload"].(string))
	if err != nil {
		t.Fatal(err)
	}
	payload[at%len(payload)] ^= 0x01
	e["payload"] = base64.StdEncoding.EncodeToString(payload)
	out, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var allErrs = []error{ErrTooLarge, ErrRootExpired, ErrSignature, ErrPayloadType, ErrMalformed, ErrInvalid,
	ErrWrongTenant, ErrWrongAgent, ErrReplay, ErrExpired, ErrFromFuture, ErrRelease, ErrUnreleased}

func TestVerify(t *testing.T) {
	good := signPlan(t, testPlan(), "plans")
	marshal := func(p *planv1.Plan) []byte {
		b, err := plan.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	withUnknown := protowire.AppendVarint(protowire.AppendTag(marshal(testPlan()), 99, protowire.VarintType), 1)

	cases := []struct {
		name     string
		envelope []byte
		verifier func(v *Verifier)
		want     error  // nil: accepted
		detail   string // substring of the error
	}{
		{name: "valid", envelope: good},
		{name: "valid at the skew limit", envelope: signPlan(t, mutatePlan(func(p *planv1.Plan) {
			p.IssuedAt = timestamppb.New(testNow.Add(DefaultClockSkew))
		}), "plans")},
		{name: "valid with a stranger's extra signature", envelope: signPlan(t, testPlan(), "plans", "stranger")},
		{name: "oversized", envelope: append(bytes.Clone(good), bytes.Repeat([]byte(" "), plan.MaxPlanBytes)...),
			want: ErrTooLarge, detail: "limit 1048576"},
		{name: "root expired", envelope: good, verifier: func(v *Verifier) { v.Root.Expires = testNow },
			want: ErrRootExpired, detail: "waiting for a rotated root"},
		{name: "tampered payload byte", envelope: tamperPayload(t, good, 40), want: ErrSignature, detail: "plans role needs 1 signature from its keys, got 0"},
		{name: "tampered payload type", envelope: bytes.Replace(good, []byte(plan.PayloadType), []byte("application/vnd.attache.plan+protobuX"), 1),
			want: ErrSignature},
		{name: "signature by unknown key", envelope: signPlan(t, testPlan(), "stranger"), want: ErrSignature},
		{name: "signature by root key, not plans", envelope: signPlan(t, testPlan(), "root1"), want: ErrSignature},
		{name: "not an envelope", envelope: []byte(`{"hello":1}`), want: ErrSignature},
		{name: "not JSON", envelope: []byte("\x00garbage"), want: ErrSignature},
		{name: "no signatures", envelope: []byte(`{"payloadType":"` + plan.PayloadType + `","payload":"","signatures":[]}`), want: ErrSignature},
		{name: "wrong payload type", envelope: signRaw(t, sign.RootPayloadType, marshal(testPlan()), "plans"),
			want: ErrPayloadType, detail: `want "application/vnd.attache.plan+protobuf"`},
		{name: "payload not a plan", envelope: signRaw(t, plan.PayloadType, []byte("\xff\xff\xff"), "plans"), want: ErrMalformed},
		{name: "payload with unknown field", envelope: signRaw(t, plan.PayloadType, withUnknown, "plans"), want: ErrMalformed, detail: "does not know"},
		{name: "plan invalid", envelope: signRaw(t, plan.PayloadType, marshal(mutatePlan(func(p *planv1.Plan) {
			p.Steps[0].DependsOn = []string{"migrate"}
		})), "plans"), want: ErrInvalid, detail: "cycle"},
		{name: "plan for another tenant", envelope: signPlan(t, mutatePlan(func(p *planv1.Plan) {
			p.Tenant = "beta"
			p.AgentSpiffeId = "spiffe://example.org/tenant/beta/agent/a1"
		}), "plans"), want: ErrWrongTenant, detail: `tenant "beta"`},
		{name: "plan for another agent of the same tenant", envelope: signPlan(t, mutatePlan(func(p *planv1.Plan) {
			p.AgentSpiffeId = "spiffe://example.org/tenant/acme/agent/a2"
		}), "plans"), want: ErrWrongAgent, detail: "agent/a2"},
		{name: "plan for an agent of another trust domain", envelope: signPlan(t, mutatePlan(func(p *planv1.Plan) {
			p.AgentSpiffeId = "spiffe://other.org/tenant/acme/agent/a1"
		}), "plans"), want: ErrWrongAgent},
		{name: "replayed equal sequence", envelope: good, verifier: func(v *Verifier) { v.LastSequence = 10 },
			want: ErrReplay, detail: "sequence 10, last accepted 10 (replayed)"},
		{name: "replayed older sequence", envelope: good, verifier: func(v *Verifier) { v.LastSequence = 11 },
			want: ErrReplay, detail: "(rolled back)"},
		{name: "expired", envelope: good, verifier: func(v *Verifier) { v.Now = func() time.Time { return testNow.Add(2 * time.Hour) } },
			want: ErrExpired},
		{name: "expired exactly at expires_at", envelope: good, verifier: func(v *Verifier) { v.Now = func() time.Time { return testNow.Add(time.Hour) } },
			want: ErrExpired},
		{name: "from the future beyond skew", envelope: signPlan(t, mutatePlan(func(p *planv1.Plan) {
			p.IssuedAt = timestamppb.New(testNow.Add(DefaultClockSkew + time.Second))
		}), "plans"), want: ErrFromFuture, detail: "allowance 5m0s"},
		{name: "from the future beyond a custom skew", envelope: signPlan(t, mutatePlan(func(p *planv1.Plan) {
			p.IssuedAt = timestamppb.New(testNow.Add(2 * time.Minute))
		}), "plans"), verifier: func(v *Verifier) { v.ClockSkew = time.Minute }, want: ErrFromFuture},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := testVerifier()
			if tc.verifier != nil {
				tc.verifier(v)
			}
			p, err := v.Verify(context.Background(), tc.envelope)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if p.GetSequence() == 0 || p.GetAgentSpiffeId() != selfID.String() {
					t.Fatalf("accepted plan %v", p)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if p != nil {
				t.Error("refusal returned a plan")
			}
			var matched []error
			for _, e := range allErrs {
				if errors.Is(err, e) {
					matched = append(matched, e)
				}
			}
			if len(matched) != 1 || matched[0] != tc.want {
				t.Fatalf("error %q matches %v, want exactly %v", err, matched, tc.want)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %q does not contain %q", err, tc.detail)
			}
		})
	}
}

func TestVerifyAcceptedPlanEqualsSigned(t *testing.T) {
	want := testPlan()
	got, err := testVerifier().Verify(context.Background(), signPlan(t, want, "plans"))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Error("verified plan differs from the signed one")
	}
}

func TestVerifierMisconfigured(t *testing.T) {
	good := signPlan(t, testPlan(), "plans")
	for name, v := range map[string]*Verifier{
		"no root":            {Self: selfID},
		"self not an agent":  {Root: testRoot(), Self: spiffeid.RequireFromString("spiffe://example.org/controlplane")},
		"self in another td": {Root: testRoot(), Self: spiffeid.RequireFromString("spiffe://other.org/tenant/acme/agent/a1")},
	} {
		_, err := v.Verify(context.Background(), good)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		for _, e := range allErrs {
			if errors.Is(err, e) {
				t.Errorf("%s: misconfiguration reported as plan refusal %v: %v", name, e, err)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := testVerifier().Verify(ctx, good); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

func TestFollowRoot(t *testing.T) {
	ctx := context.Background()
	v1 := testRoot()
	// Version 2 rotates the root keys (root3, root4) and the plans key.
	v2 := makeRoot(2, 2, "plans2", "root3", "root4")
	signRoot := func(r *sign.Root, signers ...string) []byte {
		var ss []*sign.Signer
		for _, n := range signers {
			ss = append(ss, key(n))
		}
		env, err := sign.SignRoot(ctx, r, ss...)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}

	t.Run("rotation accepted", func(t *testing.T) {
		v := testVerifier()
		next, err := v.FollowRoot(ctx, signRoot(v2, "root1", "root2", "root3", "root4"))
		if err != nil {
			t.Fatal(err)
		}
		if next.Version != 2 {
			t.Fatalf("version %d", next.Version)
		}
		v.Root = next
		// The new plans key is trusted, the old one no longer.
		if _, err := v.Verify(ctx, signPlan(t, testPlan(), "plans2")); err != nil {
			t.Errorf("plan signed by the rotated-in key refused: %v", err)
		}
		if _, err := v.Verify(ctx, signPlan(t, testPlan(), "plans")); !errors.Is(err, ErrSignature) {
			t.Errorf("plan signed by the rotated-out key: %v", err)
		}
	})
	t.Run("rotation from an expired root accepted", func(t *testing.T) {
		old := testRoot()
		old.Expires = testNow.Add(-time.Hour)
		if _, err := FollowRootAt(ctx, old, signRoot(v2, "root1", "root2", "root3", "root4"), testNow); err != nil {
			t.Fatal(err)
		}
	})
	refusals := []struct {
		name, detail string
		env          []byte
	}{
		{"signed by too few old keys", "previous root role needs 2 signatures from its keys, got 1", signRoot(v2, "root1", "root3", "root4")},
		{"not signed by the new keys", "new root role needs 2 signatures", signRoot(v2, "root1", "root2")},
		{"signed by strangers only", "previous root role needs 2 signatures from its keys, got 0", signRoot(v2, "stranger", "root3", "root4")},
		{"version skipped", "version 3 does not follow version 1", signRoot(makeRoot(3, 2, "plans2", "root3", "root4"), "root1", "root2", "root3", "root4")},
		{"same version again", "version 1 does not follow version 1", signRoot(v1, "root1", "root2")},
		{"not a root", "payload type", signPlan(t, testPlan(), "plans")},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			r, err := FollowRootAt(ctx, v1, tc.env, testNow)
			if !errors.Is(err, ErrRootRotation) {
				t.Fatalf("want ErrRootRotation, got root %v, %v", r, err)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %q does not contain %q", err, tc.detail)
			}
		})
	}
	t.Run("new root already expired", func(t *testing.T) {
		_, err := FollowRootAt(ctx, v1, signRoot(v2, "root1", "root2", "root3", "root4"), v2.Expires)
		if !errors.Is(err, ErrRootRotation) || !errors.Is(err, sign.ErrRootExpired) {
			t.Fatalf("want ErrRootRotation wrapping sign.ErrRootExpired, got %v", err)
		}
	})
}

func TestFollowRootChain(t *testing.T) {
	ctx := context.Background()
	signRoot := func(r *sign.Root, signers ...string) []byte {
		t.Helper()
		var ss []*sign.Signer
		for _, n := range signers {
			ss = append(ss, key(n))
		}
		env, err := sign.SignRoot(ctx, r, ss...)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	// v1 (root1+root2, threshold 2) → v2 (root3+root4, expired a day ago)
	// → v3 (root3+root4, plans2, in force): an agent offline across both
	// rotations meets the expired v2 on its way.
	v2 := makeRoot(2, 2, "plans", "root3", "root4")
	v2.Expires = testNow.Add(-24 * time.Hour)
	envV2 := signRoot(v2, "root1", "root2", "root3", "root4")
	v3 := makeRoot(3, 2, "plans2", "root3", "root4")
	envV3 := signRoot(v3, "root3", "root4")
	expiredV3 := makeRoot(3, 2, "plans2", "root3", "root4")
	expiredV3.Expires = testNow.Add(-time.Minute)
	envExpiredV3 := signRoot(expiredV3, "root3", "root4")

	t.Run("followed across an expired intermediate", func(t *testing.T) {
		v := testVerifier()
		roots, err := v.FollowRootChain(ctx, [][]byte{envV2, envV3})
		if err != nil {
			t.Fatal(err)
		}
		if len(roots) != 2 || roots[0].Version != 2 || roots[1].Version != 3 {
			t.Fatalf("roots %+v", roots)
		}
		if v.Root.Version != 1 {
			t.Fatal("FollowRootChain changed the verifier")
		}
		v.Root = roots[1]
		if _, err := v.Verify(ctx, signPlan(t, testPlan(), "plans2")); err != nil {
			t.Fatalf("plan under the followed root: %v", err)
		}
	})
	t.Run("the expired intermediate alone is refused", func(t *testing.T) {
		_, err := FollowRootChainAt(ctx, testRoot(), [][]byte{envV2}, testNow)
		if !errors.Is(err, ErrRootRotation) || !errors.Is(err, ErrRootExpired) {
			t.Fatalf("got %v, want ErrRootRotation and ErrRootExpired", err)
		}
		// FollowRoot is the chain of one.
		if _, err := FollowRootAt(ctx, testRoot(), envV2, testNow); !errors.Is(err, ErrRootExpired) {
			t.Fatalf("FollowRootAt = %v", err)
		}
	})
	t.Run("final root expired", func(t *testing.T) {
		roots, err := FollowRootChainAt(ctx, testRoot(), [][]byte{envV2, envExpiredV3}, testNow)
		if roots != nil || !errors.Is(err, ErrRootRotation) || !errors.Is(err, ErrRootExpired) {
			t.Fatalf("got %v, %v; want ErrRootRotation and ErrRootExpired", roots, err)
		}
		if !strings.Contains(err.Error(), "final root version 3") {
			t.Fatalf("error %q does not name the final root", err)
		}
	})
	t.Run("a refused link refuses the chain", func(t *testing.T) {
		tooFew := signRoot(v3, "root3") // threshold 2
		_, err := FollowRootChainAt(ctx, testRoot(), [][]byte{envV2, tooFew}, testNow)
		if !errors.Is(err, ErrRootRotation) || errors.Is(err, ErrRootExpired) || !strings.Contains(err.Error(), "root 2 of 2") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("empty chain", func(t *testing.T) {
		if roots, err := FollowRootChainAt(ctx, testRoot(), nil, testNow); roots != nil || err != nil {
			t.Fatalf("got %v, %v", roots, err)
		}
	})
}
