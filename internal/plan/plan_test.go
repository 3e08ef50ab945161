package plan

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/sign"
)

var (
	testNow   = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	testAgent = spiffeid.RequireFromString("spiffe://example.org/tenant/acme/agent/a1")
)

const sampleYAML = `
version: 1
release: app@v2.0.0
expires_in: 2h
steps:
  - id: dir
    provider: local
    action: dir.ensure
    resource: tenants/acme
    params: {mode: 0750, owner: app}
  - id: db
    provider: local
    action: sqlite.ensure
    resource: tenants/acme/db
    depends_on: [dir]
  - id: migrate
    provider: local
    action: sqlite.migrate
    resource: tenants/acme/db
    params:
      to: 3
      files: [001.sql, 002.sql, 003.sql]
      nested: {a: {b: [1, 2.5, true, null]}}
    depends_on: [db]
    compensation:
      action: sqlite.migrate
      params: {to: 2}
  - id: app
    provider: local
    action: process.upgrade
    resource: app
    depends_on: [migrate]
`

// seededSigner derives a key from a fixed seed so fuzz corpora stay valid.
func seededSigner(seed byte) *sign.Signer {
	return sign.NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
}

func samplePlan(t testing.TB) *planv1.Plan {
	t.Helper()
	d, err := ParseYAML([]byte(sampleYAML))
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.Build("acme", testAgent, 7, testNow)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseYAMLAndBuild(t *testing.T) {
	p := samplePlan(t)
	if p.GetTenant() != "acme" || p.GetAgentSpiffeId() != testAgent.String() || p.GetSequence() != 7 {
		t.Errorf("binding: tenant %q agent %q seq %d", p.GetTenant(), p.GetAgentSpiffeId(), p.GetSequence())
	}
	if !p.GetIssuedAt().AsTime().Equal(testNow) || !p.GetExpiresAt().AsTime().Equal(testNow.Add(2*time.Hour)) {
		t.Errorf("times: issued %s expires %s", p.GetIssuedAt().AsTime(), p.GetExpiresAt().AsTime())
	}
	if p.GetReleaseRef() != "app@v2.0.0" || p.GetDryRun() {
		t.Errorf("release %q dry_run %v", p.GetReleaseRef(), p.GetDryRun())
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(p.GetPlanId()) {
		t.Errorf("plan id %q is not a UUIDv7", p.GetPlanId())
	}
	if len(p.GetSteps()) != 4 {
		t.Fatalf("%d steps", len(p.GetSteps()))
	}
	m := p.GetSteps()[2]
	if got := m.GetParams().GetFields()["to"].GetNumberValue(); got != 3 {
		t.Errorf("migrate params.to = %v", got)
	}
	// YAML 1.1 (go-yaml v2, under sigs.k8s.io/yaml): a leading 0 is octal,
	// which is what a file mode means.
	if got := p.GetSteps()[0].GetParams().GetFields()["mode"].GetNumberValue(); got != 0o750 {
		t.Errorf("dir params.mode = %v, want 0750 octal", got)
	}
	if m.GetCompensation().GetAction() != "sqlite.migrate" || m.GetCompensation().GetParams().GetFields()["to"].GetNumberValue() != 2 {
		t.Errorf("compensation = %v", m.GetCompensation())
	}
	if got := m.GetParams().GetFields()["nested"].GetStructValue().GetFields()["a"].GetStructValue().GetFields()["b"].GetListValue().GetValues(); len(got) != 4 {
		t.Errorf("nested list = %v", got)
	}

	// Defaults and dry run.
	d, err := ParseYAML([]byte("version: 1\nsteps: [{id: a, provider: local, action: noop, resource: x}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	d.DryRun = true
	p2, err := d.Build("acme", testAgent, 1, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if life := p2.GetExpiresAt().AsTime().Sub(p2.GetIssuedAt().AsTime()); life != DefaultLifetime || !p2.GetDryRun() {
		t.Errorf("default lifetime %s, dry_run %v", life, p2.GetDryRun())
	}
	// Build shares nothing with the draft.
	p2.Steps[0].Id = "changed"
	if d.Steps[0].GetId() != "a" {
		t.Error("Build's plan shares steps with the draft")
	}
}

func TestParseYAMLErrors(t *testing.T) {
	step := "{id: a, provider: local, action: noop, resource: x}"
	cases := []struct {
		name, yaml string
		want       []string // substrings, all required
	}{
		{"unknown top key", "version: 1\nrelase: x\nsteps: [" + step + "]", []string{`unknown key "relase"`}},
		{"unknown step key", "version: 1\nsteps: [{id: a, provider: p, action: a, resource: x, dependson: [b]}]", []string{`steps[0] "a": unknown key "dependson"`}},
		{"unknown compensation key", "version: 1\nsteps: [{id: a, provider: p, action: a, resource: x, compensation: {action: b, parms: {}}}]", []string{`compensation: unknown key "parms"`}},
		{"missing version", "steps: [" + step + "]", []string{"version is missing"}},
		{"wrong version", "version: 2\nsteps: [" + step + "]", []string{"version is 2, want 1"}},
		{"missing steps", "version: 1", []string{"steps is missing"}},
		{"steps not a list", "version: 1\nsteps: {a: 1}", []string{"steps is a mapping, want a list"}},
		{"expires_in too long", "version: 1\nexpires_in: 8d\nsteps: [" + step + "]", []string{"expires_in is 8d, limit 168h0m0s"}},
		{"expires_in hours too long", "version: 1\nexpires_in: 169h\nsteps: [" + step + "]", []string{"expires_in is 169h, limit"}},
		{"expires_in garbage", "version: 1\nexpires_in: soon\nsteps: [" + step + "]", []string{`expires_in: "soon" is not a duration`}},
		{"expires_in negative", "version: 1\nexpires_in: -1h\nsteps: [" + step + "]", []string{"want more than 0"}},
		{"expires_in number", "version: 1\nexpires_in: 3600\nsteps: [" + step + "]", []string{"expires_in is a number"}},
		{"missing field", "version: 1\nsteps: [{id: a, action: noop, resource: x}]", []string{`steps[0] "a": provider is missing`}},
		{"wrong type", "version: 1\nsteps: [{id: a, provider: [x], action: noop, resource: x}]", []string{`steps[0] "a": provider is a list, want a string`}},
		{"params not a mapping", "version: 1\nsteps: [{id: a, provider: p, action: a, resource: x, params: [1]}]", []string{"params: is a list, want a mapping"}},
		{"big integer", "version: 1\nsteps: [{id: a, provider: p, action: a, resource: x, params: {count: {m: [9007199254740993]}}}]", []string{"params.count.m[0]: integer 9007199254740993 is beyond"}},
		{"duplicate key", "version: 1\nversion: 1\nsteps: [" + step + "]", []string{"version"}},
		{"not a mapping", "- a\n- b", []string{"the document is a list"}},
		{"many problems at once", "version: 3\nfoo: 1\nsteps: [{id: a, bar: 1}]", []string{"version is 3", `unknown key "foo"`, `unknown key "bar"`, "provider is missing", "action is missing", "resource is missing"}},
		{"too big", "version: 1\n#" + strings.Repeat("x", MaxYAMLBytes), []string{"limit 4194304"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseYAML([]byte(tc.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestBuildValidates(t *testing.T) {
	d, err := ParseYAML([]byte("version: 1\nsteps:\n- {id: a, provider: p, action: x, resource: r, depends_on: [b]}\n- {id: b, provider: p, action: x, resource: r, depends_on: [a]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Build("acme", testAgent, 1, testNow); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cyclic draft built: %v", err)
	}
	d, _ = ParseYAML([]byte("version: 1\nsteps: [{id: a, provider: p, action: x, resource: r}]\n"))
	if _, err := d.Build("other", testAgent, 1, testNow); err == nil || !strings.Contains(err.Error(), `is an agent of tenant "acme", but the plan is for tenant "other"`) {
		t.Errorf("agent of another tenant: %v", err)
	}
	if _, err := d.Build("acme", testAgent, 0, testNow); err == nil || !strings.Contains(err.Error(), "sequence is 0") {
		t.Errorf("sequence 0: %v", err)
	}
}

func num(f float64) *structpb.Value { return structpb.NewNumberValue(f) }

func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(p *planv1.Plan)
		want   []string
	}{
		{"valid", func(*planv1.Plan) {}, nil},
		{"empty plan id", func(p *planv1.Plan) { p.PlanId = "" }, []string{"plan_id is empty"}},
		{"bad plan id", func(p *planv1.Plan) { p.PlanId = "a b" }, []string{"plan_id \"a b\" is not well-formed"}},
		{"bad tenant", func(p *planv1.Plan) { p.Tenant = "Acme" }, []string{`tenant "Acme" is not a valid tenant name`}},
		{"agent not an agent id", func(p *planv1.Plan) { p.AgentSpiffeId = "spiffe://example.org/controlplane" }, []string{"agent_spiffe_id: not an agent SPIFFE ID"}},
		{"agent not a spiffe id", func(p *planv1.Plan) { p.AgentSpiffeId = "https://x" }, []string{"agent_spiffe_id \"https://x\""}},
		{"agent of other tenant", func(p *planv1.Plan) {
			p.AgentSpiffeId = "spiffe://example.org/tenant/beta/agent/a1"
		}, []string{`is an agent of tenant "beta", but the plan is for tenant "acme"`}},
		{"sequence 0", func(p *planv1.Plan) { p.Sequence = 0 }, []string{"sequence is 0"}},
		{"no issued_at", func(p *planv1.Plan) { p.IssuedAt = nil }, []string{"issued_at is not set"}},
		{"bad expires_at", func(p *planv1.Plan) { p.ExpiresAt = &timestamppb.Timestamp{Nanos: -1} }, []string{"expires_at:"}},
		{"expires before issued", func(p *planv1.Plan) { p.ExpiresAt = p.IssuedAt }, []string{"is not after issued_at"}},
		{"lifetime too long", func(p *planv1.Plan) {
			p.ExpiresAt = timestamppb.New(p.IssuedAt.AsTime().Add(MaxLifetime + time.Second))
		}, []string{"limit 168h0m0s"}},
		{"release ref with space", func(p *planv1.Plan) { p.ReleaseRef = "app v2" }, []string{"release_ref \"app v2\" holds whitespace"}},
		{"no steps", func(p *planv1.Plan) { p.Steps = nil }, []string{"plan has no steps"}},
		{"too many steps", func(p *planv1.Plan) {
			for i := range MaxSteps {
				p.Steps = append(p.Steps, &planv1.Step{Id: fmt.Sprintf("s%d", i), Provider: "p", Action: "a", Resource: "r"})
			}
		}, []string{"plan has 1004 steps, limit 1000"}},
		{"nil step", func(p *planv1.Plan) { p.Steps[1] = nil }, []string{"steps[1]: step is nil", `steps[2] "migrate": depends_on[0] names unknown step "db"`}},
		{"duplicate id", func(p *planv1.Plan) { p.Steps[3].Id = "db" }, []string{`steps[3] "db": id is also the id of steps[1]`}},
		{"bad id", func(p *planv1.Plan) { p.Steps[0].Id = "Dir_1"; p.Steps[1].DependsOn = nil }, []string{`steps[0] "Dir_1": id is not a lowercase DNS label`}},
		{"empty id", func(p *planv1.Plan) { p.Steps[3].Id = "" }, []string{"steps[3]: id is empty"}},
		{"bad provider", func(p *planv1.Plan) { p.Steps[0].Provider = "Local" }, []string{`steps[0] "dir": provider "Local" is not well-formed`}},
		{"empty action", func(p *planv1.Plan) { p.Steps[1].Action = "" }, []string{`steps[1] "db": action is empty`}},
		{"long action", func(p *planv1.Plan) { p.Steps[1].Action = strings.Repeat("a", 65) }, []string{`steps[1] "db": action is 65 bytes, limit 64`}},
		{"empty resource", func(p *planv1.Plan) { p.Steps[1].Resource = "" }, []string{`steps[1] "db": resource is empty`}},
		{"resource with newline", func(p *planv1.Plan) { p.Steps[1].Resource = "a\nb" }, []string{`steps[1] "db": resource "a\nb" holds whitespace`}},
		{"unknown dependency", func(p *planv1.Plan) { p.Steps[1].DependsOn = []string{"nope"} }, []string{`steps[1] "db": depends_on[0] names unknown step "nope"`}},
		{"self dependency", func(p *planv1.Plan) { p.Steps[1].DependsOn = []string{"db"} }, []string{`steps[1] "db": depends_on[0]: the step depends on itself`}},
		{"duplicate dependency", func(p *planv1.Plan) { p.Steps[1].DependsOn = []string{"dir", "dir"} }, []string{`depends_on[1] lists "dir" twice`}},
		{"empty dependency", func(p *planv1.Plan) { p.Steps[1].DependsOn = []string{""} }, []string{`steps[1] "db": depends_on[0] is empty`}},
		{"cycle", func(p *planv1.Plan) { p.Steps[0].DependsOn = []string{"app"} }, []string{`depends_on forms a cycle: "dir" -> "app" -> "migrate" -> "db" -> "dir"`}},
		{"forward dependency is fine", func(p *planv1.Plan) {
			p.Steps[0].DependsOn = nil
			p.Steps[1].DependsOn = []string{"app"}
			p.Steps[3].DependsOn = nil
		}, nil},
		{"bad compensation", func(p *planv1.Plan) { p.Steps[2].Compensation = &planv1.Compensation{} }, []string{`steps[2] "migrate": compensation.action is empty`}},
		{"compensation NaN", func(p *planv1.Plan) {
			p.Steps[2].Compensation.Params.Fields["to"] = num(math.NaN())
		}, []string{`steps[2] "migrate": compensation.params.to: number is NaN or infinite`}},
		{"params Inf in list", func(p *planv1.Plan) {
			p.Steps[2].Params.Fields["files"].GetListValue().Values[1] = num(math.Inf(1))
		}, []string{`params.files[1]: number is NaN or infinite`}},
		{"params unset value", func(p *planv1.Plan) {
			p.Steps[2].Params.Fields["odd key"] = &structpb.Value{}
		}, []string{`params["odd key"]: value has no kind set`}},
		{"params too deep", func(p *planv1.Plan) {
			v := structpb.NewStringValue("x")
			for range MaxParamsDepth {
				v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{v}})
			}
			p.Steps[0].Params.Fields["deep"] = v
		}, []string{"params.deep[0][0]", "nested deeper than 32 levels"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := samplePlan(t)
			tc.mutate(p)
			err := Validate(p)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("valid plan refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
	if err := Validate(nil); err == nil {
		t.Error("nil plan accepted")
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	p := samplePlan(t)
	p.Tenant = ""
	p.Steps[0].Provider = ""
	p.Steps[3].Action = "X"
	err := Validate(p)
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) < 3 {
		t.Fatalf("want every problem joined, got %v", err)
	}
}

func ids(steps []*planv1.Step) string {
	var out []string
	for _, s := range steps {
		out = append(out, s.GetId())
	}
	return strings.Join(out, " ")
}

func TestOrder(t *testing.T) {
	mk := func(specs ...string) *planv1.Plan {
		p := samplePlan(t)
		p.Steps = nil
		for _, spec := range specs {
			id, deps, _ := strings.Cut(spec, ":")
			s := &planv1.Step{Id: id, Provider: "p", Action: "a", Resource: "r"}
			if deps != "" {
				s.DependsOn = strings.Split(deps, ",")
			}
			p.Steps = append(p.Steps, s)
		}
		return p
	}
	cases := []struct {
		specs []string
		want  string
	}{
		{[]string{"a", "b", "c"}, "a b c"},
		{[]string{"a:c", "b", "c"}, "b c a"},
		{[]string{"a:b", "b:c", "c"}, "c b a"},
		{[]string{"d:a,b", "c", "a", "b:a"}, "c a b d"},
		{[]string{"x", "y:x", "z", "w:y"}, "x y z w"},
	}
	for _, tc := range cases {
		got, err := Order(mk(tc.specs...))
		if err != nil {
			t.Fatal(err)
		}
		if ids(got) != tc.want {
			t.Errorf("Order(%v) = %s, want %s", tc.specs, ids(got), tc.want)
		}
	}
	if _, err := Order(mk("a:b", "b:a")); err == nil {
		t.Error("cycle ordered")
	}
}

func TestSignRoundTrip(t *testing.T) {
	ctx := context.Background()
	p := samplePlan(t)
	s := seededSigner(1)
	env, err := Sign(ctx, p, s)
	if err != nil {
		t.Fatal(err)
	}
	size, _ := envelopeSize(mustMarshalLen(t, p), []*sign.Signer{s})
	if size != len(env) {
		t.Errorf("envelopeSize = %d, real envelope %d bytes", size, len(env))
	}
	var e struct {
		PayloadType string `json:"payloadType"`
	}
	if err := json.Unmarshal(env, &e); err != nil || e.PayloadType != PayloadType {
		t.Fatalf("payloadType %q, %v", e.PayloadType, err)
	}
	root := &sign.Root{
		Type: sign.RootType, Version: 1, TrustDomain: "example.org", Expires: testNow.Add(time.Hour),
		Keys: map[string]sign.Key{s.KeyID(): s.PublicKey()},
		Roles: map[string]sign.RoleKeys{
			sign.RoleRoot: {KeyIDs: []string{s.KeyID()}, Threshold: 1}, sign.RolePlans: {KeyIDs: []string{s.KeyID()}, Threshold: 1},
			sign.RoleReleases: {KeyIDs: []string{s.KeyID()}, Threshold: 1},
		},
	}
	payload, err := sign.VerifyPayload(ctx, root, sign.RolePlans, PayloadType, env)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, p) {
		t.Error("signed plan does not round-trip")
	}
	again, _ := Marshal(got)
	if !bytes.Equal(again, payload) {
		t.Error("re-encoding is not deterministic")
	}

	// Two signers: size still exact.
	env2, err := Sign(ctx, p, s, seededSigner(2))
	if err != nil {
		t.Fatal(err)
	}
	if size, _ := envelopeSize(mustMarshalLen(t, p), []*sign.Signer{s, seededSigner(2)}); size != len(env2) {
		t.Errorf("envelopeSize = %d for two signers, real %d", size, len(env2))
	}

	// Invalid plans are not signed.
	p.Steps[0].Provider = ""
	if _, err := Sign(ctx, p, s); err == nil {
		t.Error("invalid plan signed")
	}
}

func mustMarshalLen(t *testing.T, p *planv1.Plan) int {
	b, err := Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return len(b)
}

func TestSignRefusesOversized(t *testing.T) {
	p := samplePlan(t)
	// Grow the plan until its envelope is just past the limit.
	p.Steps[0].Params.Fields["blob"] = structpb.NewStringValue(strings.Repeat("x", MaxPlanBytes*3/4))
	_, err := Sign(context.Background(), p, seededSigner(1))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("want ErrTooLarge, got %v", err)
	}
	if !regexp.MustCompile(`would be \d+ bytes .*limit 1048576 bytes`).MatchString(err.Error()) {
		t.Errorf("error does not give size and limit: %v", err)
	}
	// Just under the limit is fine.
	p = samplePlan(t)
	p.Steps[0].Params.Fields["blob"] = structpb.NewStringValue("")
	overhead, _ := envelopeSize(mustMarshalLen(t, p), []*sign.Signer{seededSigner(1)})
	room := (MaxPlanBytes-overhead)/4*3 - 32 // base64 grows 4/3; a few bytes for the nested length varints
	p.Steps[0].Params.Fields["blob"] = structpb.NewStringValue(strings.Repeat("x", room))
	env, err := Sign(context.Background(), p, seededSigner(1))
	if err != nil {
		t.Fatalf("plan just under the limit refused: %v", err)
	}
	if len(env) > MaxPlanBytes || len(env) < MaxPlanBytes-64 {
		t.Errorf("envelope is %d bytes; want just under %d", len(env), MaxPlanBytes)
	}
}

func TestUnmarshalRefusesUnknownFields(t *testing.T) {
	p := samplePlan(t)
	b, _ := Marshal(p)
	// An unknown top-level field 99.
	top := protowire.AppendTag(bytes.Clone(b), 99, protowire.VarintType)
	top = protowire.AppendVarint(top, 1)
	if _, err := Unmarshal(top); err == nil || !strings.Contains(err.Error(), "plan has fields this agent does not know") {
		t.Errorf("unknown top-level field: %v", err)
	}
	// An unknown field inside a nested params value.
	p.Steps[2].Params.Fields["nested"].GetStructValue().ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 50, protowire.VarintType), 3))
	b, _ = Marshal(p)
	if _, err := Unmarshal(b); err == nil || !strings.Contains(err.Error(), `plan.steps[2].params.nested has fields`) {
		t.Errorf("unknown nested field: %v", err)
	}
	// An unknown field inside the release context.
	p = samplePlan(t)
	p.ReleaseContext = &planv1.ReleaseContext{Tenant: "acme", Tier: "pool"}
	p.ReleaseContext.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 50, protowire.VarintType), 3))
	b, _ = Marshal(p)
	if _, err := Unmarshal(b); err == nil || !strings.Contains(err.Error(), `plan.release_context has fields`) {
		t.Errorf("unknown release context field: %v", err)
	}
	if _, err := Unmarshal([]byte{0xff}); err == nil {
		t.Error("garbage decoded")
	}
}

func TestMarshalDeterministic(t *testing.T) {
	p := samplePlan(t)
	for i := range 50 {
		p.Steps[0].Params.Fields[fmt.Sprintf("k%02d", i)] = num(float64(i))
	}
	first, _ := Marshal(p)
	for range 20 {
		b, _ := Marshal(proto.Clone(p).(*planv1.Plan))
		if !bytes.Equal(b, first) {
			t.Fatal("encoding differs between runs")
		}
	}
}

// TestHandPatterns checks the hand-written matchers against the regular
// expressions they implement.
func TestHandPatterns(t *testing.T) {
	res := []struct {
		re *regexp.Regexp
		fn func(string) bool
	}{
		{regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`), validStepID},
		{regexp.MustCompile(`^[a-z][a-z0-9._-]*$`), validName},
		{regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`), validPlanID},
	}
	inputs := []string{"", "a", "A", "0", "-", "a-", "-a", "a-b", "a.b", "a_b", "a..b", "é", "ab\n", "a b", "Ab", "0a",
		".a", "_a", "a/b", strings.Repeat("a", 63), strings.Repeat("a", 64), "x\x00", "UUID-1.2_3", "a\u00e9"}
	for _, in := range inputs {
		for i, r := range res {
			if got, want := r.fn(in), r.re.MatchString(in); got != want {
				t.Errorf("matcher %d(%q) = %v, regexp says %v", i, in, got, want)
			}
		}
	}
}

func TestParseYAMLRefusesSecondDocument(t *testing.T) {
	one := "version: 1\nsteps:\n  - id: a\n    provider: local\n    action: tenant.provision\n    resource: r\n"
	if _, err := ParseYAML([]byte(one)); err != nil {
		t.Fatalf("one document: %v", err)
	}
	for _, in := range []string{one + "---\n" + one, one + "...\nversion: 1\n"} {
		if _, err := ParseYAML([]byte(in)); err == nil || !strings.Contains(err.Error(), "more than one document") {
			t.Errorf("ParseYAML(%q) = %v, want a refusal of the second document", in, err)
		}
	}
}

func TestOutputKeys(t *testing.T) {
	got := OutputKeys(map[string]int{"rows": 1, "verification": 2, "a": 3})
	if want := []string{"verification", "a", "rows"}; !slices.Equal(got, want) {
		t.Fatalf("OutputKeys = %q, want %q", got, want)
	}
	if got := OutputKeys(map[string]string{"b": "", "a": ""}); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("without a verification: %q", got)
	}
}
