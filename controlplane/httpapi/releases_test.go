package httpapi_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/httpapi/apiv1"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/sign"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// releaseYAML is a small valid release; version and an extra flag vary.
func releaseYAML(version, extraFlag string) string {
	flags := `{checkout_v2: "false", theme: classic`
	if extraFlag != "" {
		flags += ", " + extraFlag + `: "off"`
	}
	flags += "}"
	return `
name: sampleapp
version: ` + version + `
images:
  web: registry.example.com/sampleapp@` + testDigest + `
migrations:
  - {version: 1, name: create_accounts, sql: "CREATE TABLE accounts (id int)"}
flags: ` + flags + `
tiers:
  pool: {replicas: "2"}
  silo: {replicas: "5"}
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
    params: {image: "{{images.web}}", replicas: "{{values.replicas}}", flags: "{{flags}}"}
    depends_on: [migrate]
`
}

func (e *env) signRelease(yaml string, signers ...*sign.Signer) []byte {
	e.t.Helper()
	r, err := release.ParseYAML([]byte(yaml))
	if err != nil {
		e.t.Fatal(err)
	}
	if len(signers) == 0 {
		signers = []*sign.Signer{e.releaseKey}
	}
	env, err := release.Sign(context.Background(), r, signers...)
	if err != nil {
		e.t.Fatal(err)
	}
	return env
}

func (e *env) push(token string, envelope []byte) response {
	e.t.Helper()
	return e.do("POST", "/v1/releases", token, `{"envelope":`+string(envelope)+`}`)
}

func (e *env) pushOK(version, extraFlag string) apiv1.Release {
	e.t.Helper()
	var out apiv1.Release
	mustUnmarshal(e.t, e.push(e.operator, e.signRelease(releaseYAML(version, extraFlag))).wantStatus(http.StatusCreated).raw, &out)
	return out
}

func TestReleasePush(t *testing.T) {
	e := newEnv(t)
	env := e.signRelease(releaseYAML("1.4.0", ""))

	// Refusals: each says what is wrong and what to do.
	payload, _ := release.Marshal(mustParse(t, releaseYAML("1.4.0", "")))
	e.push(e.operator, payload).wantError(http.StatusBadRequest, "attache release sign --key")
	e.push(e.operator, e.signRelease(releaseYAML("1.4.0", ""), e.keys.PlanSigner)).
		wantError(http.StatusBadRequest, "must be signed by the vendor's release key")
	e.do("POST", "/v1/releases", e.operator, `{"envelope":"`+base64.StdEncoding.EncodeToString(env)+`"}`).
		wantError(http.StatusBadRequest, "not a JSON string")
	e.do("POST", "/v1/releases", e.operator, `{}`).wantError(http.StatusBadRequest, "envelope: missing")
	e.do("POST", "/v1/releases", e.operator, string(env)).wantError(http.StatusBadRequest, "unknown field")
	tampered := strings.Replace(string(env), `"payload":"`, `"payload":"e30`, 1)
	e.push(e.operator, []byte(tampered)).wantError(http.StatusBadRequest, "release key")
	e.push(e.auditor, env).wantError(http.StatusForbidden, "role auditor may not release.push")
	if rec := e.lastAudit(); rec.Action != "release.push" || rec.Outcome != auditlog.OutcomeDenied {
		t.Fatalf("denied push audited as %+v", rec)
	}

	// Pushed: stored compacted, digest over the stored bytes, audited.
	indented, _ := json.MarshalIndent(json.RawMessage(env), "", "  ")
	var got apiv1.Release
	mustUnmarshal(t, e.push(e.operator, indented).wantStatus(http.StatusCreated).raw, &got)
	sum := sha256.Sum256(env)
	if got.Name != "sampleapp" || got.Version != "1.4.0" || got.Digest != hex.EncodeToString(sum[:]) ||
		got.Images["web"] == "" || len(got.Migrations) != 1 || got.Migrations[0].Name != "create_accounts" ||
		got.Flags["theme"] != "classic" || got.Tiers["silo"]["replicas"] != "5" || len(got.Steps) != 2 ||
		got.Steps[0].OnRollback != "skip" || got.Steps[1].OnRollback != "run" ||
		len(got.SigningKeys) != 1 || got.SigningKeys[0] != e.releaseKey.KeyID() || !strings.Contains(got.PushedBy, "ops") {
		t.Fatalf("pushed release = %+v", got)
	}
	rec := e.lastAudit()
	var detail map[string]any
	_ = json.Unmarshal(rec.Detail, &detail)
	if rec.Action != "release.push" || rec.Outcome != auditlog.OutcomeSuccess || rec.Target != "1.4.0" ||
		detail["digest"] != got.Digest || detail["name"] != "sampleapp" || detail["version"] != "1.4.0" ||
		len(detail["images"].([]any)) != 1 {
		t.Fatalf("push audited as %+v (%s)", rec, rec.Detail)
	}
	stored, err := e.store.GetRelease(context.Background(), "1.4.0")
	if err != nil || string(stored.Envelope) != string(env) {
		t.Fatalf("stored envelope differs from the signed one: %v", err)
	}

	// Immutable: the same version again, whatever its content.
	e.push(e.operator, env).wantError(http.StatusConflict, "releases are immutable")
	e.push(e.operator, e.signRelease(releaseYAML("1.4.0", "extra"))).wantError(http.StatusConflict, "the stored one has digest")
	if rec := e.lastAudit(); rec.Outcome != auditlog.OutcomeFailure || rec.Target != "1.4.0" {
		t.Fatalf("refused duplicate audited as %+v", rec)
	}

	e.pushOK("1.5.0", "search_v2")
	var list apiv1.ReleaseList
	mustUnmarshal(t, e.do("GET", "/v1/releases", e.auditor, "").wantStatus(http.StatusOK).raw, &list)
	if len(list.Releases) != 2 || list.Releases[0].Version != "1.5.0" || list.Releases[1].Version != "1.4.0" || list.Releases[0].Flags["search_v2"] != "off" {
		t.Fatalf("list = %+v", list)
	}
	var one apiv1.Release
	mustUnmarshal(t, e.do("GET", "/v1/releases/1.4.0", e.auditor, "").wantStatus(http.StatusOK).raw, &one)
	if one.Digest != got.Digest || one.Verified == nil || !*one.Verified || one.VerifyError != "" {
		t.Fatalf("show = %+v", one)
	}
	e.do("GET", "/v1/releases/9.9.9", e.auditor, "").wantError(http.StatusNotFound, "release 9.9.9 not found")
	e.do("GET", "/v1/releases/-x", e.auditor, "").wantError(http.StatusBadRequest, "not a release version")
}

func mustParse(t *testing.T, yaml string) *release.Release {
	t.Helper()
	r, err := release.ParseYAML([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTenantUpdate(t *testing.T) {
	e := newEnv(t)
	e.do("POST", "/v1/tenants", e.admin, `{"name":"acme","labels":{"region":"eu","team":"a"}}`).wantStatus(http.StatusCreated)
	e.pushOK("1.4.0", "")
	e.enroll("acme", "a1")

	for _, tc := range []struct{ body, want string }{
		{`{}`, "nothing to change"},
		{`{"tier":"gold"}`, `tier: "gold" is not one of pool, bridge, silo, byoc`},
		{`{"windows":["sat 02:00+4h","sun 25:00+1h"]}`, "windows[1]"},
		{`{"windows":["sat 02:00+4h Mars/Olympus"]}`, "windows[0]"},
		{`{"pin":"2.0.0"}`, "pin: release 2.0.0 has not been pushed"},
		{`{"pin":"-bad"}`, "pin:"},
		{`{"cell":"a2"}`, "cell: tenant acme has no agent a2"},
		{`{"cell":"A_1"}`, "cell: must be an agent ID"},
		{`{"labels":{"bad key":"x"}}`, "labels:"},
		{`{"tier":"silo","bogus":1}`, "unknown field"},
	} {
		e.do("PATCH", "/v1/tenants/acme", e.operator, tc.body).wantError(http.StatusBadRequest, tc.want)
	}
	e.do("PATCH", "/v1/tenants/nope", e.operator, `{"tier":"silo"}`).wantError(http.StatusNotFound, "tenant nope not found")
	e.do("PATCH", "/v1/tenants/acme", e.auditor, `{"tier":"silo"}`).wantError(http.StatusForbidden, "may not tenant.update")

	var got apiv1.Tenant
	mustUnmarshal(t, e.do("PATCH", "/v1/tenants/acme", e.operator,
		`{"tier":"silo","cell":"a1","windows":["sat,sun 02:00+4h Europe/Paris","mon-fri 22:00+2h"],"pin":"1.4.0","labels":{"team":null,"tier-hint":"x"}}`).
		wantStatus(http.StatusOK).raw, &got)
	if got.Tier != "silo" || got.Cell != "a1" || got.Pin != "1.4.0" || len(got.Windows) != 2 ||
		got.Windows[0] != "sat,sun 02:00+4h Europe/Paris" || !strings.HasPrefix(got.Windows[1], "mon,tue,wed,thu,fri 22:00+2h") ||
		got.Labels["region"] != "eu" || got.Labels["tier-hint"] != "x" || len(got.Labels) != 2 {
		t.Fatalf("updated tenant = %+v", got)
	}
	rec := e.lastAudit()
	if rec.Action != "tenant.update" || rec.Tenant != "acme" || rec.Outcome != auditlog.OutcomeSuccess || !strings.Contains(string(rec.Detail), `"team":null`) {
		t.Fatalf("update audited as %+v (%s)", rec, rec.Detail)
	}
	// Only what is given changes; empty values clear.
	got = apiv1.Tenant{}
	mustUnmarshal(t, e.do("PATCH", "/v1/tenants/acme", e.operator, `{"pin":"","windows":[],"cell":""}`).wantStatus(http.StatusOK).raw, &got)
	if got.Tier != "silo" || got.Cell != "" || got.Pin != "" || len(got.Windows) != 0 || got.Labels["region"] != "eu" {
		t.Fatalf("cleared tenant = %+v", got)
	}
	mustUnmarshal(t, e.do("GET", "/v1/tenants/acme", e.auditor, "").raw, &got)
	if got.Tier != "silo" {
		t.Fatalf("GET tenant = %+v", got)
	}
}

func TestTenantFlags(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.do("POST", "/v1/tenants", e.admin, `{"name":"acme"}`).wantStatus(http.StatusCreated)

	for _, tc := range []struct{ body, want string }{
		{`{}`, "nothing to change"},
		{`{"set":{"Bad":"x"}}`, `set: key "Bad"`},
		{`{"set":{"a":"` + strings.Repeat("x", 1025) + `"}}`, "set: a: value is 1025 bytes, limit 1024"},
		{`{"unset":["ok","-no"]}`, "unset[1]"},
		{`{"set":{"a":"1"},"unset":["a"]}`, "unset[0]: a is also in set"},
	} {
		e.do("PUT", "/v1/tenants/acme/flags", e.operator, tc.body).wantError(http.StatusBadRequest, tc.want)
	}

	// No release yet: stored, applied with the first release.
	var fc apiv1.FlagChange
	mustUnmarshal(t, e.do("PUT", "/v1/tenants/acme/flags", e.operator, `{"set":{"checkout_v2":"true"}}`).wantStatus(http.StatusOK).raw, &fc)
	if fc.Overrides["checkout_v2"] != "true" || fc.PlanID != "" || !strings.Contains(fc.Delivery, "first release") {
		t.Fatalf("flags without a release = %+v", fc)
	}
	if rec := e.lastAudit(); rec.Action != "flag.set" || rec.Tenant != "acme" || !strings.Contains(string(rec.Detail), `"checkout_v2":"true"`) {
		t.Fatalf("flag.set audited as %+v (%s)", rec, rec.Detail)
	}

	// With a release: keys must be declared, and the change is delivered.
	e.pushOK("1.4.0", "")
	e.enroll("acme", "a1")
	if _, err := e.store.UpdateTenant(ctx, "acme", func(t *store.Tenant) error { t.Release = "1.4.0"; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	e.do("PUT", "/v1/tenants/acme/flags", e.operator, `{"set":{"search_v2":"on"}}`).
		wantError(http.StatusBadRequest, `flag "search_v2" is not declared by release sampleapp@1.4.0`)
	if tn, _ := e.store.GetTenant(ctx, "acme"); tn.Flags["search_v2"] != "" {
		t.Fatal("a refused flag was stored")
	}
	fc = apiv1.FlagChange{}
	mustUnmarshal(t, e.do("PUT", "/v1/tenants/acme/flags", e.operator, `{"set":{"theme":"dark"},"unset":["checkout_v2"]}`).wantStatus(http.StatusOK).raw, &fc)
	if fc.PlanID == "" || !strings.Contains(fc.Delivery, "delivered to agent acme/a1") || fc.Effective["theme"] != "dark" ||
		fc.Effective["checkout_v2"] != "false" || len(fc.Overrides) != 1 {
		t.Fatalf("flag change = %+v", fc)
	}
	p := e.plan(fc.PlanID)
	if p.Release != "sampleapp@1.4.0" || p.Agent != "a1" {
		t.Fatalf("flag plan = %+v", p)
	}
	var tf apiv1.TenantFlags
	mustUnmarshal(t, e.do("GET", "/v1/tenants/acme/flags", e.auditor, "").wantStatus(http.StatusOK).raw, &tf)
	if tf.Release != "1.4.0" || tf.Overrides["theme"] != "dark" || tf.Defaults["theme"] != "classic" || tf.Effective["theme"] != "dark" {
		t.Fatalf("GET flags = %+v", tf)
	}
	e.do("GET", "/v1/tenants/nope/flags", e.auditor, "").wantError(http.StatusNotFound, "tenant nope not found")
	e.do("PUT", "/v1/tenants/acme/flags", e.auditor, `{"set":{"theme":"x"}}`).wantError(http.StatusForbidden, "may not flag.set")

	// A rollout about to bring 1.5.0: a flag must suit it too; while its
	// plan is in flight, flags wait.
	e.pushOK("1.5.0", "search_v2")
	ro := e.startRollout(`{"release":"1.5.0","tenants":["acme"],"waves":"100%"}`)
	e.do("PUT", "/v1/tenants/acme/flags", e.operator, `{"set":{"search_v2":"on"}}`).
		wantError(http.StatusBadRequest, "sampleapp@1.4.0")
	e.setTarget(ro.ID, "acme", store.TargetDispatched)
	e.do("PUT", "/v1/tenants/acme/flags", e.operator, `{"set":{"theme":"light"}}`).
		wantError(http.StatusConflict, "rollout "+ro.ID+" has a plan in flight")
}

// rollout decodes a rollout response.
func (e *env) rollout(r response) apiv1.Rollout {
	e.t.Helper()
	var ro apiv1.Rollout
	mustUnmarshal(e.t, r.raw, &ro)
	return ro
}

// startRollout starts a rollout through the API.
func (e *env) startRollout(body string) apiv1.Rollout {
	e.t.Helper()
	var ro apiv1.Rollout
	mustUnmarshal(e.t, e.do("POST", "/v1/rollouts", e.operator, body).wantStatus(http.StatusCreated).raw, &ro)
	return ro
}

// setTarget plays the driver: it moves one target of a rollout.
func (e *env) setTarget(id, tenant string, state store.TargetState) {
	e.t.Helper()
	e.driver(id, func(r *store.Rollout, ts []store.RolloutTarget) []store.RolloutTarget {
		for _, t := range ts {
			if t.Tenant == tenant {
				t.State = state
				if state == store.TargetSucceeded {
					t.SetRelease = r.Release
				}
				return []store.RolloutTarget{t}
			}
		}
		e.t.Fatalf("rollout %s has no target %s", id, tenant)
		return nil
	})
}

// driver changes a rollout under a lease, as the driver does.
func (e *env) driver(id string, fn func(r *store.Rollout, ts []store.RolloutTarget) []store.RolloutTarget) {
	e.t.Helper()
	ctx := context.Background()
	if ok, err := e.store.AcquireRolloutLease(ctx, id, "test", time.Now(), time.Minute); err != nil || !ok {
		e.t.Fatalf("lease: %v, %v", ok, err)
	}
	defer e.store.ReleaseRolloutLease(ctx, id, "test")
	if _, err := e.store.UpdateRollout(ctx, id, "test", func(r *store.Rollout, ts []store.RolloutTarget) ([]store.RolloutTarget, []auditlog.Entry, error) {
		return fn(r, ts), nil, nil
	}); err != nil {
		e.t.Fatal(err)
	}
}

func TestRollouts(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"t1", "t2", "t3", "t4"} {
		tier := "pool"
		if n == "t4" {
			tier = "silo"
		}
		e.do("POST", "/v1/tenants", e.admin, `{"name":"`+n+`","labels":{"region":"eu"}}`).wantStatus(http.StatusCreated)
		e.do("PATCH", "/v1/tenants/"+n, e.operator, `{"tier":"`+tier+`"}`).wantStatus(http.StatusOK)
	}
	e.pushOK("1.4.0", "")

	for _, tc := range []struct {
		body   string
		status int
		want   string
	}{
		{`{"release":"1.4.0","selector":"all"}`, 400, "waves: required"},
		{`{"release":"1.4.0","selector":"all","waves":"canary:x"}`, 400, "waves[0]"},
		{`{"release":"1.4.0","selector":"all","waves":"50%"}`, 400, "the last wave must be 100%"},
		{`{"release":"1.4.0","waves":"100%"}`, 400, "selector:"},
		{`{"release":"1.4.0","selector":"nokey","waves":"100%"}`, 400, "selector[0]"},
		{`{"release":"1.4.0","selector":"all","waves":"100%","bake":"soon"}`, 400, `bake: "soon" is not a duration`},
		{`{"release":"1.4.0","selector":"all","waves":"100%","max_error_rate":"2"}`, 400, "max_error_rate:"},
		{`{"release":"1.4.0","selector":"all","waves":"100%","max_error_rate":"x%"}`, 400, "max_error_rate:"},
		{`{"release":"1.4.0","selector":"all","waves":"100%","concurrency":5000}`, 400, "concurrency:"},
		{`{"release":"1.4.0","selector":"tier=byoc","waves":"100%"}`, 400, "no tenant matches"},
		{`{"release":"1.4.0","tenants":["t9"],"waves":"100%"}`, 400, `tenants: "t9" does not exist`},
		{`{"release":"9.9.9","selector":"all","waves":"100%"}`, 404, "release \"9.9.9\""},
	} {
		e.do("POST", "/v1/rollouts", e.operator, tc.body).wantError(tc.status, tc.want)
	}
	e.do("POST", "/v1/rollouts", e.auditor, `{}`).wantError(http.StatusForbidden, "may not rollout.start")

	before := e.nudges.n.Load()
	ro := e.startRollout(`{"release":"1.4.0","selector":"region=eu","waves":"canary:1,50%,100%","bake":"10m","max_failed":1,"max_error_rate":"2%","concurrency":3,"plan_ttl":"30m","ignore_windows":true}`)
	if e.nudges.n.Load() != before+1 {
		t.Fatal("rollout start did not nudge the driver")
	}
	if ro.State != "Progressing" || ro.Release != "1.4.0" || ro.Spec.Waves != "canary:1,wave-2:50%,wave-3:100%" || ro.Spec.Bake != "10m0s" ||
		ro.Spec.MaxErrorRate != 0.02 || ro.Spec.Concurrency != 3 || ro.Spec.PlanTTL != "30m0s" || !ro.Spec.IgnoreWindows ||
		ro.Spec.Selector != "region=eu" || ro.WaveName != "canary" || len(ro.Waves) != 3 || len(ro.Targets) != 4 {
		t.Fatalf("started rollout = %+v", ro)
	}
	if w := ro.Waves; w[0].Size != 1 || w[1].Size != 1 || w[2].Size != 2 || w[0].Counts["pending"] != 1 || w[0].Done != 0 {
		t.Fatalf("waves = %+v", w)
	}
	if tg := ro.Targets[0]; tg.Tenant != "t1" || tg.WaveName != "canary" || tg.State != "pending" {
		t.Fatalf("first target = %+v", tg)
	}
	// A number is a fraction.
	e.clock.Advance(time.Second)
	other := e.startRollout(`{"release":"1.4.0","tenants":["t4"],"waves":"100%","max_error_rate":0.05}`)
	if other.Spec.MaxErrorRate != 0.05 || other.Spec.Selector != "" || other.Spec.Tenants[0] != "t4" || other.Spec.Concurrency != 10 {
		t.Fatalf("second rollout = %+v", other.Spec)
	}

	var list apiv1.RolloutList
	mustUnmarshal(t, e.do("GET", "/v1/rollouts?active=true", e.auditor, "").wantStatus(http.StatusOK).raw, &list)
	if len(list.Rollouts) != 2 || list.Rollouts[0].ID != other.ID || list.Rollouts[1].Targets != nil || len(list.Rollouts[1].Waves) != 3 {
		t.Fatalf("list = %+v", list)
	}
	e.do("GET", "/v1/rollouts?active=maybe", e.auditor, "").wantError(http.StatusBadRequest, "active:")
	e.do("GET", "/v1/rollouts/ro-nope", e.auditor, "").wantError(http.StatusNotFound, "rollout ro-nope not found")

	// Operator controls.
	got := e.rollout(e.do("POST", "/v1/rollouts/"+ro.ID+"/pause", e.operator, "").wantStatus(http.StatusOK))
	if got.Control != "pause" || len(got.Targets) != 4 {
		t.Fatalf("paused = %+v", got)
	}
	if rec := e.lastAudit(); rec.Action != "rollout.pause" || rec.Target != ro.ID || rec.Outcome != auditlog.OutcomeSuccess {
		t.Fatalf("pause audited as %+v", rec)
	}
	got = e.rollout(e.do("POST", "/v1/rollouts/"+ro.ID+"/resume", e.operator, "").wantStatus(http.StatusOK))
	if got.Control != "" {
		t.Fatalf("resumed = %+v", got)
	}
	e.do("POST", "/v1/rollouts/"+ro.ID+"/abort", e.auditor, "").wantError(http.StatusForbidden, "may not rollout.abort")
	got = e.rollout(e.do("POST", "/v1/rollouts/"+ro.ID+"/abort", e.operator, "").wantStatus(http.StatusOK))
	if got.Control != "abort" {
		t.Fatalf("aborted = %+v", got)
	}
	e.do("POST", "/v1/rollouts/"+ro.ID+"/resume", e.operator, "").wantError(http.StatusConflict, "is being aborted")
	e.do("POST", "/v1/rollouts/ro-nope/pause", e.operator, "").wantError(http.StatusNotFound, "rollout ro-nope not found")

	// Finished rollouts cannot be changed.
	e.driver(other.ID, func(r *store.Rollout, ts []store.RolloutTarget) []store.RolloutTarget {
		r.State, r.Reason, r.Message = store.RolloutComplete, "AllWavesDone", "1 tenant upgraded"
		ts[0].State, ts[0].SetRelease = store.TargetSucceeded, r.Release
		return ts
	})
	e.do("POST", "/v1/rollouts/"+other.ID+"/pause", e.operator, "").wantError(http.StatusConflict, "has finished (Complete: AllWavesDone)")
	got = e.rollout(e.do("GET", "/v1/rollouts/"+other.ID, e.auditor, "").wantStatus(http.StatusOK))
	if got.State != "Complete" || got.FinishedAt == nil || got.Waves[0].Done != 1 || got.Waves[0].Counts["succeeded"] != 1 {
		t.Fatalf("finished rollout = %+v", got)
	}
	list = apiv1.RolloutList{}
	mustUnmarshal(t, e.do("GET", "/v1/rollouts?active=true", e.auditor, "").raw, &list)
	if len(list.Rollouts) != 1 || list.Rollouts[0].ID != ro.ID {
		t.Fatalf("active list = %+v", list)
	}
}

func TestRolloutWaveFlags(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"t1", "t2", "t3"} {
		e.do("POST", "/v1/tenants", e.admin, `{"name":"`+n+`"}`).wantStatus(http.StatusCreated)
		e.enroll(n, "a1")
	}
	e.pushOK("1.5.0", "search_v2")
	ro := e.startRollout(`{"release":"1.5.0","selector":"all","waves":"canary:1,100%"}`)
	e.setTarget(ro.ID, "t1", store.TargetSucceeded) // the canary has the release

	e.do("POST", "/v1/rollouts/"+ro.ID+"/flags", e.operator, `{"wave":"blue","set":{"search_v2":"on"}}`).
		wantError(http.StatusBadRequest, `rollout `+ro.ID+` has no wave "blue" (waves: canary, wave-2`)
	e.do("POST", "/v1/rollouts/"+ro.ID+"/flags", e.operator, `{"wave":"canary","set":{"nope":"on"}}`).
		wantError(http.StatusBadRequest, `flag "nope" is not declared`)
	e.do("POST", "/v1/rollouts/ro-x/flags", e.operator, `{"wave":0,"set":{"search_v2":"on"}}`).
		wantError(http.StatusNotFound, "rollout ro-x not found")

	var out apiv1.RolloutFlags
	mustUnmarshal(t, e.do("POST", "/v1/rollouts/"+ro.ID+"/flags", e.operator, `{"wave":0,"set":{"search_v2":"on"}}`).wantStatus(http.StatusOK).raw, &out)
	if out.WaveName != "canary" || len(out.Tenants) != 1 || out.Tenants[0].Tenant != "t1" || out.Tenants[0].PlanID == "" ||
		out.Tenants[0].Effective["search_v2"] != "on" {
		t.Fatalf("wave flags = %+v", out)
	}
	recs := e.audit()
	if rec := recs[len(recs)-2]; rec.Action != "flag.set" || rec.Tenant != "t1" || !strings.Contains(string(rec.Detail), `"wave":"canary"`) {
		t.Fatalf("wave flag audited as %+v (%s)", rec, rec.Detail)
	}
	if rec := recs[len(recs)-1]; rec.Action != "plan.submit" || rec.Tenant != "t1" || !strings.Contains(string(rec.Detail), `"reason":"flags"`) {
		t.Fatalf("flag plan audited as %+v (%s)", rec, rec.Detail)
	}
	// The rest of the fleet is untouched; its pending tenants would take
	// the flag with 1.5.0, and they have no release to re-apply yet.
	for _, n := range []string{"t2", "t3"} {
		if tn, _ := e.store.GetTenant(context.Background(), n); len(tn.Flags) != 0 {
			t.Fatalf("%s got flags %v", n, tn.Flags)
		}
	}
	out = apiv1.RolloutFlags{}
	mustUnmarshal(t, e.do("POST", "/v1/rollouts/"+ro.ID+"/flags", e.operator, `{"wave":"wave-2","set":{"search_v2":"on"}}`).wantStatus(http.StatusOK).raw, &out)
	if len(out.Tenants) != 2 || out.Tenants[0].PlanID != "" || !strings.Contains(out.Tenants[0].Delivery, "first release") {
		t.Fatalf("pending wave flags = %+v", out)
	}
}

func TestFreeze(t *testing.T) {
	e := newEnv(t)
	var f apiv1.Freeze
	mustUnmarshal(t, e.do("GET", "/v1/freeze", e.auditor, "").wantStatus(http.StatusOK).raw, &f)
	if f.Frozen {
		t.Fatalf("frozen at start: %+v", f)
	}
	e.do("POST", "/v1/freeze", e.operator, `{}`).wantError(http.StatusBadRequest, "reason: required")
	e.do("POST", "/v1/freeze", e.operator, `{"reason":"`+strings.Repeat("x", 501)+`"}`).wantError(http.StatusBadRequest, "501 characters, limit 500")
	e.do("POST", "/v1/freeze", e.operator, `{"reason":"a\u001bb"}`).wantError(http.StatusBadRequest, "control characters")
	e.do("POST", "/v1/freeze", e.auditor, `{"reason":"x"}`).wantError(http.StatusForbidden, "may not fleet.freeze")

	before := e.nudges.n.Load()
	mustUnmarshal(t, e.do("POST", "/v1/freeze", e.operator, `{"reason":"INC-42: checkout errors"}`).wantStatus(http.StatusOK).raw, &f)
	if !f.Frozen || f.Reason != "INC-42: checkout errors" || !strings.Contains(f.By, "ops") || f.At == nil {
		t.Fatalf("freeze = %+v", f)
	}
	if e.nudges.n.Load() != before+1 {
		t.Fatal("freeze did not nudge the driver")
	}
	if rec := e.lastAudit(); rec.Action != "fleet.freeze" || !strings.Contains(string(rec.Detail), "INC-42") {
		t.Fatalf("freeze audited as %+v", rec)
	}
	mustUnmarshal(t, e.do("GET", "/v1/freeze", e.auditor, "").wantStatus(http.StatusOK).raw, &f)
	if !f.Frozen || f.Reason != "INC-42: checkout errors" {
		t.Fatalf("GET freeze = %+v", f)
	}
	if sf, err := e.store.GetFreeze(context.Background()); err != nil || sf == nil {
		t.Fatalf("store freeze = %v, %v", sf, err)
	}
	mustUnmarshal(t, e.do("DELETE", "/v1/freeze", e.operator, "").wantStatus(http.StatusOK).raw, &f)
	if f.Frozen {
		t.Fatalf("unfreeze = %+v", f)
	}
	if rec := e.lastAudit(); rec.Action != "fleet.unfreeze" || !strings.Contains(string(rec.Detail), `"was_frozen":true`) {
		t.Fatalf("unfreeze audited as %+v (%s)", rec, rec.Detail)
	}
}
