package release

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

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/sign"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

const sampleYAML = `
name: sampleapp
version: 1.4.0
images:
  web: registry.example.com/sampleapp@` + digest + `
  worker: registry.example.com:5000/team/worker:1.4.0@` + digest + `
manifests: |
  apiVersion: v1
  kind: ConfigMap
migrations:
  - {version: 1, name: create_accounts, sql: "CREATE TABLE accounts (id int)"}
  - {version: 3, name: add_email, sql: "ALTER TABLE accounts ADD email text"}
flags: {checkout_v2: "false", theme: classic}
tiers:
  pool: {replicas: "2"}
  silo: {replicas: "5"}
steps:
  - id: provision
    provider: local
    action: tenant.provision
    resource: "tenants/{{tenant}}"
    params: {tier: "{{ tier }}"}
  - id: migrate
    provider: local
    action: sqlite.migrate
    resource: "tenants/{{tenant}}/db"
    params: {migrations: "{{migrations}}"}
    depends_on: [provision]
    on_rollback: skip
  - id: app
    provider: local
    action: app.deploy
    resource: "tenants/{{tenant}}/app"
    params:
      image: "{{images.web}}"
      command: ["{{name}}", "--version={{version}}", 3]
      replicas: "{{values.replicas}}"
      flags: "{{flags}}"
      images: "{{images}}"
      manifests: "{{manifests}}"
      nested: {deep: [{x: "{{tenant}}-{{tier}}"}], enabled: true, none: null}
    depends_on: [migrate]
    compensation:
      action: app.rollback
      params: {image: "{{images.web}}"}
`

func sample(t testing.TB) *Release {
	t.Helper()
	r, err := ParseYAML([]byte(sampleYAML))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	return r
}

func seeded(seed byte) *sign.Signer {
	return sign.NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
}

var (
	rootKey    = seeded(1)
	plansKey   = seeded(2)
	releaseKey = seeded(3)
	stranger   = seeded(4)
)

func testRoot() *sign.Root {
	r := &sign.Root{
		Type: sign.RootType, Version: 1, TrustDomain: "example.org",
		Expires: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		Keys:    map[string]sign.Key{},
		Roles:   map[string]sign.RoleKeys{},
	}
	for role, s := range map[string]*sign.Signer{sign.RoleRoot: rootKey, sign.RolePlans: plansKey, sign.RoleReleases: releaseKey} {
		r.Keys[s.KeyID()] = s.PublicKey()
		r.Roles[role] = sign.RoleKeys{KeyIDs: []string{s.KeyID()}, Threshold: 1}
	}
	return r
}

func ctxFor(tenant, tier string) *planv1.ReleaseContext {
	return &planv1.ReleaseContext{Tenant: tenant, Tier: tier}
}

func TestParseAndRender(t *testing.T) {
	r := sample(t)
	if Ref(r) != "sampleapp@1.4.0" {
		t.Fatalf("Ref = %q", Ref(r))
	}
	c := ctxFor("acme", "silo")
	c.Flags = map[string]string{"checkout_v2": "true"}
	steps, err := Render(r, c)
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 3 {
		t.Fatalf("%d steps", len(steps))
	}
	if err := plan.ValidateSteps(steps); err != nil {
		t.Fatalf("rendered steps do not validate: %v", err)
	}
	if got := steps[0].GetResource(); got != "tenants/acme" {
		t.Errorf("resource %q", got)
	}
	if got := steps[0].GetParams().AsMap()["tier"]; got != "silo" {
		t.Errorf("{{ tier }} rendered %v", got)
	}
	migs := steps[1].GetParams().AsMap()["migrations"].([]any)
	if len(migs) != 2 || migs[1].(map[string]any)["version"] != 3.0 || migs[1].(map[string]any)["sql"] != "ALTER TABLE accounts ADD email text" ||
		migs[0].(map[string]any)["name"] != "create_accounts" {
		t.Errorf("{{migrations}} rendered %v", migs)
	}
	app := steps[2].GetParams().AsMap()
	want := map[string]any{
		"image":     "registry.example.com/sampleapp@" + digest,
		"command":   []any{"sampleapp", "--version=1.4.0", 3.0},
		"replicas":  "5",
		"flags":     map[string]any{"checkout_v2": "true", "theme": "classic"},
		"images":    map[string]any{"web": "registry.example.com/sampleapp@" + digest, "worker": "registry.example.com:5000/team/worker:1.4.0@" + digest},
		"manifests": "apiVersion: v1\nkind: ConfigMap\n",
		"nested":    map[string]any{"deep": []any{map[string]any{"x": "acme-silo"}}, "enabled": true, "none": nil},
	}
	wantS, _ := structpb.NewStruct(want)
	gotS, _ := structpb.NewStruct(app)
	if !proto.Equal(gotS, wantS) {
		t.Errorf("app params\n got %v\nwant %v", app, want)
	}
	if got := steps[2].GetCompensation().GetParams().AsMap()["image"]; got != "registry.example.com/sampleapp@"+digest {
		t.Errorf("compensation params image %v", got)
	}
	if !equalStrings(steps[2].GetDependsOn(), []string{"migrate"}) {
		t.Errorf("depends_on %v", steps[2].GetDependsOn())
	}

	// Pool has other values; the defaults stand without overrides.
	pool, err := Render(r, ctxFor("beta", "pool"))
	if err != nil {
		t.Fatal(err)
	}
	p := pool[2].GetParams().AsMap()
	if p["replicas"] != "2" || p["flags"].(map[string]any)["checkout_v2"] != "false" {
		t.Errorf("pool params %v", p)
	}
	// Rendering is deterministic.
	again, _ := Render(r, ctxFor("beta", "pool"))
	for i := range pool {
		if !proto.Equal(pool[i], again[i]) {
			t.Fatalf("step %d differs between two renderings", i)
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRenderRefuses(t *testing.T) {
	r := sample(t)
	for _, tc := range []struct {
		name string
		c    *planv1.ReleaseContext
		want string
	}{
		{"no context", nil, "no release context"},
		{"tier lacks a value", ctxFor("acme", "bridge"), `step "app" params.replicas: {{values.replicas}}: tier "bridge" has no value "replicas"`},
		{"unknown tier", ctxFor("acme", "gold"), `tier "gold" is not one of pool, bridge, silo, byoc`},
		{"no tier", ctxFor("acme", ""), `tier "" is not one of`},
		{"bad tenant", ctxFor("Acme", "pool"), `tenant "Acme" is not a valid tenant name`},
		{"unknown flag", &planv1.ReleaseContext{Tenant: "acme", Tier: "pool", Flags: map[string]string{"evil": "1"}},
			`flag "evil" is not declared by release sampleapp@1.4.0 (declared: checkout_v2, theme)`},
		{"flag too long", &planv1.ReleaseContext{Tenant: "acme", Tier: "pool", Flags: map[string]string{"theme": strings.Repeat("x", MaxFlagValueBytes+1)}},
			`flag "theme": value is 1025 bytes, limit 1024`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			steps, err := Render(r, tc.c)
			if err == nil || steps != nil {
				t.Fatalf("rendered %d steps, err %v", len(steps), err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestMergeFlags(t *testing.T) {
	r := sample(t)
	got, err := MergeFlags(r, map[string]string{"theme": "dark"})
	if err != nil {
		t.Fatal(err)
	}
	if got["theme"] != "dark" || got["checkout_v2"] != "false" || len(got) != 2 {
		t.Fatalf("merged %v", got)
	}
	if r.Flags["theme"] != "classic" {
		t.Fatal("MergeFlags changed the release")
	}
	if _, err := MergeFlags(r, map[string]string{"a": "1", "b": "2"}); err == nil || !strings.Contains(err.Error(), `flag "a"`) || !strings.Contains(err.Error(), `flag "b"`) {
		t.Fatalf("unknown flags: %v", err)
	}
	none := &Release{}
	if _, err := MergeFlags(none, map[string]string{"x": "1"}); err == nil || !strings.Contains(err.Error(), "(declared: none)") {
		t.Fatalf("release without flags: %v", err)
	}
}

func TestRenderRollback(t *testing.T) {
	r := sample(t)
	c := ctxFor("acme", "pool")
	c.Rollback = true
	steps, err := Render(r, c)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range steps {
		ids = append(ids, s.GetId())
	}
	if !equalStrings(ids, []string{"provision", "app"}) {
		t.Fatalf("rollback steps %v", ids)
	}
	// app depended on migrate (skipped), which depended on provision.
	if !equalStrings(steps[1].GetDependsOn(), []string{"provision"}) {
		t.Fatalf("app depends on %v after a rollback", steps[1].GetDependsOn())
	}
	if err := plan.ValidateSteps(steps); err != nil {
		t.Fatal(err)
	}

	// Every step skipped: nothing to run on a rollback, which Validate
	// refuses.
	all := sample(t)
	for i := range all.Steps {
		all.Steps[i].OnRollback = OnRollbackSkip
	}
	if _, err := Render(all, c); err == nil || !strings.Contains(err.Error(), "renders no steps for a rollback") {
		t.Fatalf("all skipped: %v", err)
	}
	if err := all.Validate(); err == nil || !strings.Contains(err.Error(), "rendered for a rollback on tier pool") {
		t.Fatalf("Validate of an all-skip release: %v", err)
	}
}

func TestValidate(t *testing.T) {
	mut := func(f func(r *Release)) func(*testing.T) *Release {
		return func(t *testing.T) *Release {
			r := sample(t)
			f(r)
			return r
		}
	}
	step := func(i int, f func(s *StepTemplate)) func(*testing.T) *Release {
		return mut(func(r *Release) { f(&r.Steps[i]) })
	}
	for _, tc := range []struct {
		name string
		rel  func(*testing.T) *Release
		want string
	}{
		{"name", mut(func(r *Release) { r.Name = "Sample_App" }), `name "Sample_App" is not a lowercase DNS label`},
		{"empty name", mut(func(r *Release) { r.Name = "" }), `name "" is not`},
		{"version", mut(func(r *Release) { r.Version = "v1 beta" }), `version "v1 beta" is not well-formed`},
		{"version too long", mut(func(r *Release) { r.Version = strings.Repeat("1", 65) }), "version"},
		{"image not pinned", mut(func(r *Release) { r.Images["web"] = "registry.example.com/sampleapp:1.4.0" }), `images.web: "registry.example.com/sampleapp:1.4.0" is not an image reference pinned by digest`},
		{"image digest short", mut(func(r *Release) { r.Images["web"] = "app@sha256:abc" }), "images.web"},
		{"image digest upper", mut(func(r *Release) { r.Images["web"] = "app@" + strings.ToUpper(digest) }), "images.web"},
		{"image name", mut(func(r *Release) { r.Images["Web"] = "app@" + digest }), `images.Web: image name is not well-formed`},
		{"too many images", mut(func(r *Release) {
			for i := range MaxImages + 1 {
				r.Images["i"+strings.Repeat("x", i)] = "app@" + digest
			}
		}), "images has 67 entries, limit 64"},
		{"manifests too large", mut(func(r *Release) { r.Manifests = strings.Repeat("x", MaxManifestsBytes+1) }), "manifests is 524289 bytes, limit 524288"},
		{"manifests not utf-8", mut(func(r *Release) { r.Manifests = "\xff" }), "manifests is not valid UTF-8"},
		{"migration version zero", mut(func(r *Release) { r.Migrations[0].Version = 0 }), "migrations[0].version is 0, want 1 or more"},
		{"migration version not increasing", mut(func(r *Release) { r.Migrations[1].Version = 1 }), "migrations[1].version is 1, not greater than the version before it (1)"},
		{"migration version too big", mut(func(r *Release) { r.Migrations[1].Version = 1<<53 + 1 }), "migrations[1].version is 9007199254740993, limit 2^53"},
		{"migration name", mut(func(r *Release) { r.Migrations[0].Name = "create accounts" }), `migrations[0].name "create accounts" is not well-formed`},
		{"migration sql empty", mut(func(r *Release) { r.Migrations[0].SQL = " \n" }), "migrations[0].sql is empty"},
		{"flag key", mut(func(r *Release) { r.Flags["Checkout"] = "x" }), "flags.Checkout: flag name is not well-formed"},
		{"flag value", mut(func(r *Release) { r.Flags["theme"] = strings.Repeat("x", 1025) }), "flags.theme: value is 1025 bytes, limit 1024"},
		{"too many flags", mut(func(r *Release) {
			for i := range MaxFlags {
				r.Flags["f"+strings.Repeat("x", i)] = ""
			}
		}), "flags has 66 entries, limit 64"},
		{"unknown tier", mut(func(r *Release) { r.Tiers["gold"] = map[string]string{} }), "tiers.gold: unknown tier (want one of pool, bridge, silo, byoc)"},
		{"tier key", mut(func(r *Release) { r.Tiers["pool"]["Replicas"] = "1" }), "tiers.pool.Replicas: key is not well-formed"},
		{"tier value", mut(func(r *Release) { r.Tiers["pool"]["replicas"] = strings.Repeat("9", 1025) }), "tiers.pool.replicas: value is 1025 bytes, limit 1024"},
		{"tier lacks a value a step uses", mut(func(r *Release) { r.Tiers["bridge"] = map[string]string{} }),
			`rendered for tier bridge: step "app" params.replicas: {{values.replicas}}: tier "bridge" has no value "replicas"`},
		{"values without tiers", mut(func(r *Release) { r.Tiers = nil }), `rendered for tier pool: step "app" params.replicas: {{values.replicas}}: tier "pool" has no value "replicas"`},
		{"no steps", mut(func(r *Release) { r.Steps = nil }), "steps is empty"},
		{"on_rollback", step(1, func(s *StepTemplate) { s.OnRollback = "never" }), `steps[1] "migrate": on_rollback is "never", want run or skip`},
		{"unknown placeholder", step(2, func(s *StepTemplate) { s.Params["image"] = "{{image.web}}" }), `steps[2] "app": params.image: unknown placeholder {{image.web}}`},
		{"placeholder typo in resource", step(0, func(s *StepTemplate) { s.Resource = "tenants/{{tennant}}" }), `steps[0] "provision": resource: unknown placeholder {{tennant}}`},
		{"unknown image", step(2, func(s *StepTemplate) { s.Params["image"] = "{{images.api}}" }), `params.image: {{images.api}}: the release has no image "api"`},
		{"flag inside a string", step(2, func(s *StepTemplate) { s.Params["image"] = "app:{{flags}}" }), "flags are never substituted inside strings"},
		{"single flag placeholder", step(2, func(s *StepTemplate) { s.Params["image"] = "{{flags.theme}}" }), "flags are never substituted inside strings"},
		{"manifests in resource", step(0, func(s *StepTemplate) { s.Resource = "{{manifests}}" }), `resource: {{manifests}} must be the whole value of a parameter`},
		{"unterminated", step(0, func(s *StepTemplate) { s.Resource = "tenants/{{tenant" }), `resource: "{{" without a closing "}}"`},
		{"empty placeholder", step(2, func(s *StepTemplate) { s.Params["x"] = "a{{ }}" }), "params.x: empty placeholder"},
		{"placeholder in a key", step(2, func(s *StepTemplate) { s.Params["{{tenant}}"] = "x" }), "placeholders are substituted in values, not in keys"},
		{"placeholder deep in compensation", step(2, func(s *StepTemplate) { s.Compensation.Params["a"] = []any{map[string]any{"b": "{{nope}}"}} }),
			`compensation.params.a[0].b: unknown placeholder {{nope}}`},
		{"param type", step(2, func(s *StepTemplate) { s.Params["x"] = struct{}{} }), "params.x: unsupported value of type struct {}"},
		{"param NaN", step(2, func(s *StepTemplate) { s.Params["x"] = nan() }), "params.x: number is NaN or infinite"},
		{"param int too big", step(2, func(s *StepTemplate) { s.Params["x"] = int64(1<<53 + 1) }), "beyond ±2^53"},
		// Step rules of internal/plan, checked on the rendered steps.
		{"step id", step(0, func(s *StepTemplate) { s.ID = "Provision" }), `steps[0] "Provision": id is not a lowercase DNS label`},
		{"duplicate id", step(1, func(s *StepTemplate) { s.ID = "provision"; s.DependsOn = nil }), `id is also the id of steps[0]`},
		{"unknown dependency", step(2, func(s *StepTemplate) { s.DependsOn = []string{"migrat"} }), `depends_on[0] names unknown step "migrat"`},
		{"cycle", step(0, func(s *StepTemplate) { s.DependsOn = []string{"app"} }), "depends_on forms a cycle"},
		{"provider", step(0, func(s *StepTemplate) { s.Provider = "Local" }), `provider "Local" is not well-formed`},
		{"action", step(0, func(s *StepTemplate) { s.Action = "" }), "action is empty"},
		{"resource empty", step(0, func(s *StepTemplate) { s.Resource = "" }), "resource is empty"},
		{"resource renders with a space", mut(func(r *Release) {
			r.Tiers["pool"]["replicas"] = "2 pods"
			r.Steps[0].Resource = "x/{{values.replicas}}"
		}),
			`rendered for tier pool: steps[0] "provision": resource "x/2 pods" holds whitespace`},
		{"compensation action", step(2, func(s *StepTemplate) { s.Compensation.Action = "Undo" }), `compensation.action "Undo" is not well-formed`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.rel(t).Validate()
			if err == nil {
				t.Fatal("valid")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func nan() float64 {
	zero := 0.0
	return zero / zero
}

func TestParseYAMLRefuses(t *testing.T) {
	base := "name: a\nversion: \"1\"\nsteps: [{id: s, provider: p, action: x, resource: r}]\n"
	if _, err := ParseYAML([]byte(base)); err != nil {
		t.Fatalf("base: %v", err)
	}
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown step key", "name: a\nversion: \"1\"\nsteps: [{id: s, provider: p, action: x, resource: r}, {id: t, provider: p, action: x, resource: r}, {id: u, provider: p, action: x, resource: r, dependson: [s]}]\n",
			"steps[2].dependson: unknown key (allowed: id, provider, action, resource, params, depends_on, compensation, on_rollback)"},
		{"unknown top key", base + "image: x\n", "image: unknown key"},
		{"unknown compensation key", "name: a\nversion: \"1\"\nsteps: [{id: s, provider: p, action: x, resource: r, compensation: {action: y, parms: {}}}]\n", "steps[0].compensation.parms: unknown key"},
		{"unknown migration key", base + "migrations: [{version: 1, name: a, sql: x, checksum: y}]\n", "migrations[0].checksum: unknown key"},
		{"version a number", "name: a\nversion: 1.4\nsteps: []\n", "version: is a number, want a string (quote it)"},
		{"flag a boolean", base + "flags: {a: false}\n", "flags.a: is a boolean, want a string (quote it)"},
		{"tier value a number", base + "tiers: {pool: {replicas: 2}}\n", "tiers.pool.replicas: is a number, want a string (quote it)"},
		{"migration version a string", base + "migrations: [{version: \"1\", name: a, sql: x}]\n", `migrations[0].version: is "1", want a whole number`},
		{"migration version fractional", base + "migrations: [{version: 1.5, name: a, sql: x}]\n", "migrations[0].version: is 1.5, want a whole number"},
		{"missing steps", "name: a\nversion: \"1\"\n", "steps: is missing"},
		{"missing resource", "name: a\nversion: \"1\"\nsteps: [{id: s, provider: p, action: x}]\n", "steps[0].resource: is missing"},
		{"steps not a list", "name: a\nversion: \"1\"\nsteps: {}\n", "steps: is a mapping, want a list"},
		{"params not a mapping", "name: a\nversion: \"1\"\nsteps: [{id: s, provider: p, action: x, resource: r, params: [1]}]\n", "steps[0].params: is a list, want a mapping"},
		{"params integer too big", "name: a\nversion: \"1\"\nsteps: [{id: s, provider: p, action: x, resource: r, params: {num: 9007199254740993}}]\n", "steps[0].params.num: integer 9007199254740993 is beyond ±2^53"},
		{"duplicate key", base + "name: b\n", `key "name" already set`},
		{"two documents", base + "---\nname: b\n", "more than one document"},
		{"not a mapping", "- a\n", "the document is a list"},
		{"empty", "", "the document is null"},
		{"too large", strings.Repeat("#", MaxYAMLBytes+1), "limit 2097152"},
		{"every problem at once", "name: a\nversion: 1\nbogus: 1\nsteps: [{id: s}]\n", "bogus: unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseYAML([]byte(tc.yaml))
			if err == nil {
				t.Fatal("parsed")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
	_, err := ParseYAML([]byte("name: a\nversion: 1\nbogus: 1\nsteps: [{id: s}]\n"))
	for _, want := range []string{"bogus: unknown key", "version: is a number", "steps[0].provider: is missing", "steps[0].resource: is missing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not report %q", err, want)
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	r := sample(t)
	b1, err := Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	q, err := Unmarshal(b1)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := Marshal(q)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b1, b2) {
		t.Fatalf("re-encoding differs:\n%s\n%s", b1, b2)
	}
	if err := q.Validate(); err != nil {
		t.Fatal(err)
	}
	// A release built in code with Go ints renders like its decoded copy.
	r.Steps[2].Params["command"] = []any{"{{name}}", "--version={{version}}", 3}
	a, _ := Render(r, ctxFor("acme", "pool"))
	b, _ := Render(q, ctxFor("acme", "pool"))
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			t.Fatalf("step %d renders differently after a round trip", i)
		}
	}
	if !strings.Contains(string(b1), `"on_rollback":"skip"`) || strings.Contains(string(b1), "\n}") {
		t.Fatalf("payload %s", b1)
	}
}

func TestUnmarshalStrict(t *testing.T) {
	good, _ := Marshal(sample(t))
	for _, tc := range []struct {
		name, payload, want string
	}{
		{"duplicate key", `{"name":"a","name":"b"}`, `duplicate key "name"`},
		{"unknown key", strings.Replace(string(good), `"depends_on"`, `"dependson"`, 1), "steps[1].dependson: unknown key"},
		{"trailing data", string(good) + "{}", "data after the JSON value"},
		{"not an object", `[]`, "the document is a list"},
		{"wrong type", strings.Replace(string(good), `"version":"1.4.0"`, `"version":140`, 1), "version: is a number"},
		{"too deep", `{"steps":[{"params":` + strings.Repeat(`{"a":`, 40) + `1` + strings.Repeat("}", 40) + `}]}`, "nested deeper"},
		{"not JSON", "\x00", "invalid character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Unmarshal([]byte(tc.payload))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func signEnv(t testing.TB, r *Release, signers ...*sign.Signer) []byte {
	t.Helper()
	env, err := Sign(context.Background(), r, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// signRaw signs any payload under any type, bypassing Sign's checks.
func signRaw(t testing.TB, payloadType string, payload []byte, signers ...*sign.Signer) []byte {
	t.Helper()
	env, err := sign.SignPayload(context.Background(), payloadType, payload, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// tamper flips a byte of the envelope's payload.
func tamper(t testing.TB, env []byte, at int) []byte {
	t.Helper()
	var e map[string]any
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	payload, _ := base64.StdEncoding.DecodeString(e["payload"].(string))
	payload[at%len(payload)] ^= 0x01
	e["payload"] = base64.StdEncoding.EncodeToString(payload)
	out, _ := json.Marshal(e)
	return out
}

var allErrs = []error{ErrTooLarge, ErrSignature, ErrMalformed, ErrInvalid}

func TestSignVerify(t *testing.T) {
	ctx := context.Background()
	root := testRoot()
	r := sample(t)
	env := signEnv(t, r, releaseKey)
	got, err := Verify(ctx, root, env)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := Marshal(r)
	b, _ := Marshal(got)
	if !bytes.Equal(a, b) {
		t.Fatal("verified release differs from the signed one")
	}
	peeked, err := Peek(env)
	if err != nil || Ref(peeked) != Ref(r) {
		t.Fatalf("Peek: %v, %v", peeked, err)
	}

	payload, _ := Marshal(r)
	invalid := sample(t)
	invalid.Images["web"] = "unpinned:latest"
	invalidPayload, _ := Marshal(invalid)
	for _, tc := range []struct {
		name   string
		env    []byte
		want   error
		detail string
	}{
		{"signed by the plans key", signEnv(t, r, plansKey), ErrSignature, "releases role needs 1 signature from its keys, got 0"},
		{"signed by a stranger", signEnv(t, r, stranger), ErrSignature, "releases role"},
		{"signed by the root key", signEnv(t, r, rootKey), ErrSignature, "releases role"},
		{"tampered payload", tamper(t, env, 30), ErrSignature, "releases role"},
		{"wrong payload type", signRaw(t, plan.PayloadType, payload, releaseKey), ErrSignature, "payload type"},
		{"not an envelope", []byte(`{"hello":1}`), ErrSignature, ""},
		{"too large", append(bytes.Clone(env), bytes.Repeat([]byte(" "), MaxEnvelopeBytes)...), ErrTooLarge, "limit 786432"},
		{"malformed payload", signRaw(t, PayloadType, []byte(`{"name":"a","extra":1}`), releaseKey), ErrMalformed, "extra: unknown key"},
		{"invalid release", signRaw(t, PayloadType, invalidPayload, releaseKey), ErrInvalid, "not an image reference pinned by digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Verify(ctx, root, tc.env)
			if err == nil || got != nil {
				t.Fatalf("accepted: %v", err)
			}
			var matched []error
			for _, e := range allErrs {
				if errors.Is(err, e) {
					matched = append(matched, e)
				}
			}
			if len(matched) != 1 || matched[0] != tc.want {
				t.Fatalf("error %q matches %v, want %v", err, matched, tc.want)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("error %q does not contain %q", err, tc.detail)
			}
		})
	}
	if _, err := Verify(ctx, nil, env); err == nil {
		t.Fatal("no root: accepted")
	}
	if _, err := Peek(signRaw(t, plan.PayloadType, payload, releaseKey)); err == nil {
		t.Fatal("Peek of a plan envelope succeeded")
	}
}

func TestSignRefuses(t *testing.T) {
	ctx := context.Background()
	invalid := sample(t)
	invalid.Name = ""
	if _, err := Sign(ctx, invalid, releaseKey); err == nil || !strings.Contains(err.Error(), "name") {
		t.Fatalf("invalid release signed: %v", err)
	}
	big := sample(t)
	big.Manifests = strings.Repeat("m", MaxManifestsBytes)
	big.Migrations[0].SQL = strings.Repeat("s", MaxManifestsBytes)
	if _, err := Sign(ctx, big, releaseKey); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "768 KiB") {
		t.Fatalf("oversized release: %v", err)
	}
	// Fits the envelope, but every plan carries the manifests twice: in
	// the release and in the app step's params.
	fat := sample(t)
	fat.Manifests = strings.Repeat("m", 400<<10)
	if _, err := Sign(ctx, fat, releaseKey); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "a signed plan may be at most 1048576 bytes") {
		t.Fatalf("release whose plans do not fit: %v", err)
	}
	delete(fat.Steps[2].Params, "manifests")
	if _, err := Sign(ctx, fat, releaseKey); err != nil {
		t.Fatalf("the same release without the manifests in a step: %v", err)
	}
}

// planFor renders r for c into a plan that carries env.
func planFor(t testing.TB, r *Release, env []byte, c *planv1.ReleaseContext) *planv1.Plan {
	t.Helper()
	steps, err := Render(r, c)
	if err != nil {
		t.Fatal(err)
	}
	return &planv1.Plan{ReleaseRef: Ref(r), Steps: steps, ReleaseEnvelope: env, ReleaseContext: c}
}

func TestCheckPlan(t *testing.T) {
	r := sample(t)
	c := ctxFor("acme", "pool")
	if err := CheckPlan(r, planFor(t, r, nil, c)); err != nil {
		t.Fatalf("rendered plan refused: %v", err)
	}
	rb := ctxFor("acme", "pool")
	rb.Rollback = true
	if err := CheckPlan(r, planFor(t, r, nil, rb)); err != nil {
		t.Fatalf("rollback plan refused: %v", err)
	}
	params := func(s *planv1.Step) map[string]*structpb.Value { return s.GetParams().GetFields() }
	for _, tc := range []struct {
		name string
		mut  func(p *planv1.Plan)
		want string
	}{
		{"changed image", func(p *planv1.Plan) {
			params(p.Steps[2])["image"] = structpb.NewStringValue("evil.example.com/miner@" + digest)
		}, `step "app" params.image: plan has "evil.example.com/miner@` + digest + `", release renders "registry.example.com/sampleapp@` + digest + `"`},
		{"changed command", func(p *planv1.Plan) {
			params(p.Steps[2])["command"].GetListValue().Values[0] = structpb.NewStringValue("evil")
		}, `step "app" params.command[0]: plan has "evil", release renders "sampleapp"`},
		{"added step", func(p *planv1.Plan) {
			p.Steps = append(p.Steps, &planv1.Step{Id: "exfiltrate", Provider: "local", Action: "exec", Resource: "x"})
		}, `plan step 3 is "exfiltrate", but release sampleapp@1.4.0 renders no step there (the plan has 4 steps, the release renders 3)`},
		{"step inserted", func(p *planv1.Plan) {
			p.Steps = append([]*planv1.Step{{Id: "first", Provider: "local", Action: "exec", Resource: "x"}}, p.Steps...)
		}, `plan step 0 is "first", but release sampleapp@1.4.0 renders "provision" there`},
		{"changed migration SQL", func(p *planv1.Plan) {
			m := params(p.Steps[1])["migrations"].GetListValue().Values[1].GetStructValue().GetFields()
			m["sql"] = structpb.NewStringValue("DROP TABLE accounts")
		}, `step "migrate" params.migrations[1].sql: plan has "DROP TABLE accounts", release renders "ALTER TABLE accounts ADD email text"`},
		{"removed step", func(p *planv1.Plan) { p.Steps = p.Steps[:2] }, `plan has no step 2, but release sampleapp@1.4.0 renders "app" there`},
		{"removed migration step", func(p *planv1.Plan) {
			p.Steps = []*planv1.Step{p.Steps[0], p.Steps[2]}
		}, `plan step 1 is "app", but release sampleapp@1.4.0 renders "migrate" there`},
		{"reordered steps", func(p *planv1.Plan) { p.Steps[0], p.Steps[1] = p.Steps[1], p.Steps[0] }, `plan step 0 is "migrate", but release sampleapp@1.4.0 renders "provision" there`},
		{"changed compensation", func(p *planv1.Plan) {
			p.Steps[2].Compensation.Action = "app.delete"
		}, `step "app" compensation.action: plan has "app.delete", release renders "app.rollback"`},
		{"changed compensation params", func(p *planv1.Plan) {
			p.Steps[2].Compensation.Params.Fields["image"] = structpb.NewStringValue("x")
		}, `step "app" compensation.params.image: plan has "x"`},
		{"dropped compensation", func(p *planv1.Plan) { p.Steps[2].Compensation = nil }, `step "app" compensation: plan has none, release renders one`},
		{"changed manifests", func(p *planv1.Plan) {
			params(p.Steps[2])["manifests"] = structpb.NewStringValue("kind: ClusterRoleBinding")
		}, `step "app" params.manifests: plan has "kind: ClusterRoleBinding", release renders "apiVersion: v1\nkind: ConfigMap\n"`},
		{"added param", func(p *planv1.Plan) { params(p.Steps[0])["privileged"] = structpb.NewBoolValue(true) }, `step "provision" params.privileged: plan has true, release renders nothing`},
		{"removed params", func(p *planv1.Plan) { p.Steps[0].Params = nil }, `step "provision" params: plan has none, release renders a mapping of 1`},
		{"changed resource", func(p *planv1.Plan) { p.Steps[0].Resource = "tenants/beta" }, `step "provision" resource: plan has "tenants/beta", release renders "tenants/acme"`},
		{"changed provider", func(p *planv1.Plan) { p.Steps[0].Provider = "kubernetes" }, `step "provision" provider`},
		{"changed action", func(p *planv1.Plan) { p.Steps[0].Action = "tenant.erase" }, `step "provision" action`},
		{"changed depends_on", func(p *planv1.Plan) { p.Steps[2].DependsOn = nil }, `step "app" depends_on: plan has [], release renders ["migrate"]`},
		{"wrong release ref", func(p *planv1.Plan) { p.ReleaseRef = "sampleapp@1.3.0" }, `plan release_ref is "sampleapp@1.3.0", but the release it carries is "sampleapp@1.4.0"`},
		{"migrations skipped without a rollback", func(p *planv1.Plan) {
			p.Steps = []*planv1.Step{p.Steps[0], p.Steps[2]}
			p.Steps[1].DependsOn = []string{"provision"}
		}, `plan step 1 is "app", but release sampleapp@1.4.0 renders "migrate" there`},
		{"undeclared flag", func(p *planv1.Plan) { p.ReleaseContext.Flags = map[string]string{"debug": "on"} }, `does not render for the plan's release_context: release context flags: flag "debug" is not declared`},
		{"flags in the plan but not the context", func(p *planv1.Plan) {
			params(p.Steps[2])["flags"].GetStructValue().Fields["theme"] = structpb.NewStringValue("dark")
		}, `step "app" params.flags.theme: plan has "dark", release renders "classic"`},
		{"no release context", func(p *planv1.Plan) { p.ReleaseContext = nil }, "no release context"},
		{"number changed", func(p *planv1.Plan) {
			params(p.Steps[2])["command"].GetListValue().Values[2] = structpb.NewNumberValue(4)
		}, `params.command[2]: plan has 4, release renders 3`},
		{"kind changed", func(p *planv1.Plan) {
			params(p.Steps[2])["replicas"] = structpb.NewNumberValue(2)
		}, `params.replicas: plan has 2, release renders "2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planFor(t, r, nil, proto.Clone(c).(*planv1.ReleaseContext))
			tc.mut(p)
			err := CheckPlan(r, p)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
	// A flag the control plane sets in the context is rendered, and then
	// checks out.
	fc := ctxFor("acme", "pool")
	fc.Flags = map[string]string{"theme": "dark"}
	if err := CheckPlan(r, planFor(t, r, nil, fc)); err != nil {
		t.Fatal(err)
	}
}
