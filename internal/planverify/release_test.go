package planverify

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/sign"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

const testReleaseYAML = `
name: sampleapp
version: 1.4.0
images:
  web: registry.example.com/sampleapp@` + testDigest + `
manifests: |
  kind: ConfigMap
migrations:
  - {version: 1, name: create_accounts, sql: "CREATE TABLE accounts (id int)"}
flags: {checkout_v2: "false"}
tiers:
  pool: {replicas: "2"}
steps:
  - id: migrate
    provider: local
    action: sqlite.migrate
    resource: "tenants/{{tenant}}/db"
    params: {migrations: "{{migrations}}"}
    on_rollback: skip
  - id: app
    provider: local
    action: app.deploy
    resource: "tenants/{{tenant}}/app"
    params:
      image: "{{images.web}}"
      replicas: "{{values.replicas}}"
      flags: "{{flags}}"
      manifests: "{{manifests}}"
    depends_on: [migrate]
`

func testRelease(t testing.TB) *release.Release {
	t.Helper()
	r, err := release.ParseYAML([]byte(testReleaseYAML))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func signRelease(t testing.TB, r *release.Release, signers ...string) []byte {
	t.Helper()
	var ss []*sign.Signer
	for _, n := range signers {
		ss = append(ss, key(n))
	}
	env, err := release.Sign(context.Background(), r, ss...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// releasedPlan is testPlan with its steps rendered from r (signed as env)
// for tenant acme on the pool tier.
func releasedPlan(t testing.TB, r *release.Release, env []byte) *planv1.Plan {
	t.Helper()
	p := testPlan()
	p.ReleaseRef = release.Ref(r)
	p.ReleaseEnvelope = env
	p.ReleaseContext = &planv1.ReleaseContext{Tenant: "acme", Tier: "pool", Flags: map[string]string{"checkout_v2": "true"}}
	steps, err := release.Render(r, p.ReleaseContext)
	if err != nil {
		t.Fatal(err)
	}
	p.Steps = steps
	return p
}

func strictVerifier() *Verifier {
	v := testVerifier()
	v.AllowUnreleased = false
	return v
}

func TestVerifyReleasedPlan(t *testing.T) {
	ctx := context.Background()
	r := testRelease(t)
	env := signRelease(t, r, "releases")
	good := releasedPlan(t, r, env)

	got, err := strictVerifier().Verify(ctx, signPlan(t, good, "plans"))
	if err != nil {
		t.Fatalf("plan rendered from a signed release refused: %v", err)
	}
	if !proto.Equal(got, good) {
		t.Fatal("verified plan differs from the signed one")
	}
	rollback := releasedPlan(t, r, env)
	rollback.ReleaseContext.Rollback = true
	if rollback.Steps, err = release.Render(r, rollback.ReleaseContext); err != nil {
		t.Fatal(err)
	}
	if _, err := strictVerifier().Verify(ctx, signPlan(t, rollback, "plans")); err != nil {
		t.Fatalf("rollback plan refused: %v", err)
	}
	// An agent serving a cell renders for another tenant of the cell.
	cell := releasedPlan(t, r, env)
	cell.ReleaseContext.Tenant = "globex"
	if cell.Steps, err = release.Render(r, cell.ReleaseContext); err != nil {
		t.Fatal(err)
	}
	if _, err := strictVerifier().Verify(ctx, signPlan(t, cell, "plans")); err != nil {
		t.Fatalf("plan for another tenant of the cell refused: %v", err)
	}
}

// TestStolenPlansKey is the two-key property: whoever holds the control
// plane's plans key (a compromised control plane) signs plans the agent
// checks the signature of, but still cannot make the agent run an image,
// manifest, migration or step that the release key did not sign.
func TestStolenPlansKey(t *testing.T) {
	ctx := context.Background()
	r := testRelease(t)
	env := signRelease(t, r, "releases")
	param := func(p *planv1.Plan, step int) map[string]*structpb.Value {
		return p.Steps[step].GetParams().GetFields()
	}

	forged := func() *release.Release {
		f := testRelease(t)
		f.Images["web"] = "evil.example.com/miner@" + testDigest
		return f
	}
	cases := []struct {
		name   string
		mutate func(p *planv1.Plan)
		detail string
	}{
		{"changed image digest", func(p *planv1.Plan) {
			param(p, 1)["image"] = structpb.NewStringValue("registry.example.com/sampleapp@sha256:" + strings.Repeat("f", 64))
		}, `step "app" params.image: plan has "registry.example.com/sampleapp@sha256:ffff`},
		{"added step", func(p *planv1.Plan) {
			p.Steps = append(p.Steps, &planv1.Step{Id: "exfiltrate", Provider: "local", Action: "exec", Resource: "tenants/acme", DependsOn: []string{"app"}})
		}, `plan step 2 is "exfiltrate", but release sampleapp@1.4.0 renders no step there`},
		{"changed migration SQL", func(p *planv1.Plan) {
			m := param(p, 0)["migrations"].GetListValue().GetValues()[0].GetStructValue().GetFields()
			m["sql"] = structpb.NewStringValue("DROP TABLE accounts")
		}, `step "migrate" params.migrations[0].sql: plan has "DROP TABLE accounts", release renders "CREATE TABLE accounts (id int)"`},
		{"changed manifest", func(p *planv1.Plan) {
			param(p, 1)["manifests"] = structpb.NewStringValue("kind: ClusterRoleBinding")
		}, `step "app" params.manifests: plan has "kind: ClusterRoleBinding", release renders "kind: ConfigMap\n"`},
		{"migration dropped without a rollback", func(p *planv1.Plan) {
			p.Steps = p.Steps[1:]
			p.Steps[0].DependsOn = nil
		}, `plan step 0 is "app", but release sampleapp@1.4.0 renders "migrate" there`},
		{"undeclared flag", func(p *planv1.Plan) {
			p.ReleaseContext.Flags = map[string]string{"debug": "true"}
		}, `flag "debug" is not declared by release sampleapp@1.4.0`},
		{"release_ref of another release", func(p *planv1.Plan) { p.ReleaseRef = "sampleapp@1.5.0" }, `plan release_ref is "sampleapp@1.5.0"`},
		{"release signed with the plans key", func(p *planv1.Plan) {
			f := forged()
			p.ReleaseEnvelope = signRelease(t, f, "plans")
			p.Steps, _ = release.Render(f, p.ReleaseContext)
		}, "the release it carries is refused: release signature not valid: releases role needs 1 signature from its keys, got 0"},
		{"release signed by a stranger", func(p *planv1.Plan) {
			f := forged()
			p.ReleaseEnvelope = signRelease(t, f, "stranger")
			p.Steps, _ = release.Render(f, p.ReleaseContext)
		}, "release signature not valid"},
		{"release envelope tampered", func(p *planv1.Plan) {
			p.ReleaseEnvelope = tamperPayload(t, env, 60)
		}, "release signature not valid"},
		{"release envelope cut", func(p *planv1.Plan) { p.ReleaseEnvelope = env[:len(env)/2] }, "release signature not valid"},
		{"release context without a tenant", func(p *planv1.Plan) { p.ReleaseContext.Tenant = "" }, `release_context tenant "" is not a valid tenant name`},
		{"release context tenant invalid", func(p *planv1.Plan) { p.ReleaseContext.Tenant = "../acme" }, `release_context tenant "../acme" is not a valid tenant name`},
		{"no release context", func(p *planv1.Plan) { p.ReleaseContext = nil }, "release_context tenant"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := releasedPlan(t, r, env)
			tc.mutate(p)
			for _, allow := range []bool{false, true} {
				v := testVerifier()
				v.AllowUnreleased = allow
				got, err := v.Verify(ctx, signPlan(t, p, "plans"))
				if got != nil || !errors.Is(err, ErrRelease) {
					t.Fatalf("AllowUnreleased=%v: want ErrRelease, got %v", allow, err)
				}
				for _, e := range allErrs {
					if e != ErrRelease && errors.Is(err, e) {
						t.Fatalf("error also matches %v: %v", e, err)
					}
				}
				if !strings.Contains(err.Error(), tc.detail) {
					t.Fatalf("error %q does not contain %q", err, tc.detail)
				}
			}
		})
	}
}

func TestVerifyUnreleased(t *testing.T) {
	ctx := context.Background()
	env := signPlan(t, testPlan(), "plans")
	_, err := strictVerifier().Verify(ctx, env)
	if !errors.Is(err, ErrUnreleased) {
		t.Fatalf("ad hoc plan: want ErrUnreleased, got %v", err)
	}
	for _, want := range []string{"plan 0193a0c0-0000-7000-8000-000000000001 carries no signed release", "--allow-unreleased-plans"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	v := strictVerifier()
	v.AllowUnreleased = true
	if _, err := v.Verify(ctx, env); err != nil {
		t.Fatalf("ad hoc plan with AllowUnreleased: %v", err)
	}
	// The earlier checks still come first: a replayed ad hoc plan is a
	// replay, not an unreleased plan.
	v = strictVerifier()
	v.LastSequence = 10
	if _, err := v.Verify(ctx, env); !errors.Is(err, ErrReplay) {
		t.Fatalf("replayed ad hoc plan: %v", err)
	}
}
