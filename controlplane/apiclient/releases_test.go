package apiclient_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/controlplane/httpapi/httpapitest"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

const relYAML = `
name: sampleapp
version: VERSION
flags: {checkout_v2: "false"}
steps:
  - {id: app, provider: local, action: app.deploy, resource: "tenants/{{tenant}}/app", params: {flags: "{{flags}}"}}
`

func signed(t *testing.T, srv *httpapitest.Server, version string) []byte {
	t.Helper()
	return srv.SignRelease(t, strings.Replace(relYAML, "VERSION", version, 1))
}

func ptr[T any](v T) *T { return &v }

func TestReleasesAndRollouts(t *testing.T) {
	srv := httpapitest.New(t)
	ctx := context.Background()
	c := apiclient.New(srv.URL, srv.AdminToken, nil)
	for _, n := range []string{"acme", "globex"} {
		if _, err := c.CreateTenant(ctx, apiclient.CreateTenantRequest{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	enroll(t, srv, "acme", "a1")

	// Releases.
	if _, err := c.PushRelease(ctx, []byte(`{"payloadType":"x","payload":"","signatures":[]}`)); !apiclient.IsStatus(err, http.StatusBadRequest) ||
		!strings.Contains(err.Error(), "attache release sign --key") {
		t.Fatalf("PushRelease(unsigned) = %v", err)
	}
	rel, err := c.PushRelease(ctx, signed(t, srv, "1.0.0"))
	if err != nil || rel.Version != "1.0.0" || rel.Name != "sampleapp" || len(rel.Digest) != 64 || len(rel.SigningKeys) != 1 {
		t.Fatalf("PushRelease = %+v, %v", rel, err)
	}
	if _, err := c.PushRelease(ctx, signed(t, srv, "1.0.0")); !apiclient.IsStatus(err, http.StatusConflict) {
		t.Fatalf("PushRelease(again) = %v", err)
	}
	if rs, err := c.ListReleases(ctx); err != nil || len(rs) != 1 || rs[0].Digest != rel.Digest {
		t.Fatalf("ListReleases = %+v, %v", rs, err)
	}
	if got, err := c.GetRelease(ctx, "1.0.0"); err != nil || got.Verified == nil || !*got.Verified || got.Steps[0].ID != "app" {
		t.Fatalf("GetRelease = %+v, %v", got, err)
	}
	if _, err := c.GetRelease(ctx, "2.0.0"); !apiclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("GetRelease(unknown) = %v", err)
	}

	// Tenants' rollout settings.
	ten, err := c.UpdateTenant(ctx, "acme", apiclient.UpdateTenantRequest{
		Tier: ptr("silo"), Cell: ptr("a1"), Windows: &[]string{"sat,sun 02:00+4h Europe/Paris"},
		Labels: map[string]*string{"region": ptr("eu")},
	})
	if err != nil || ten.Tier != "silo" || ten.Cell != "a1" || ten.Windows[0] != "sat,sun 02:00+4h Europe/Paris" || ten.Labels["region"] != "eu" {
		t.Fatalf("UpdateTenant = %+v, %v", ten, err)
	}
	if _, err := c.UpdateTenant(ctx, "acme", apiclient.UpdateTenantRequest{Windows: &[]string{"someday"}}); !apiclient.IsStatus(err, http.StatusBadRequest) ||
		!strings.Contains(err.Error(), "windows[0]") {
		t.Fatalf("UpdateTenant(bad window) = %v", err)
	}
	if ten, err = c.UpdateTenant(ctx, "acme", apiclient.UpdateTenantRequest{Windows: &[]string{}, Labels: map[string]*string{"region": nil}}); err != nil ||
		len(ten.Windows) != 0 || len(ten.Labels) != 0 {
		t.Fatalf("UpdateTenant(clear) = %+v, %v", ten, err)
	}

	// Flags.
	fc, err := c.SetTenantFlags(ctx, "acme", apiclient.SetFlagsRequest{Set: map[string]string{"checkout_v2": "true"}})
	if err != nil || fc.Overrides["checkout_v2"] != "true" || fc.PlanID != "" {
		t.Fatalf("SetTenantFlags(no release) = %+v, %v", fc, err)
	}
	if _, err := srv.Store.UpdateTenant(ctx, "acme", func(t *store.Tenant) error { t.Release = "1.0.0"; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	if fc, err = c.SetTenantFlags(ctx, "acme", apiclient.SetFlagsRequest{Unset: []string{"checkout_v2"}}); err != nil || fc.PlanID == "" || fc.Effective["checkout_v2"] != "false" {
		t.Fatalf("SetTenantFlags(with release) = %+v, %v", fc, err)
	}
	if _, err := c.SetTenantFlags(ctx, "acme", apiclient.SetFlagsRequest{Set: map[string]string{"nope": "1"}}); !apiclient.IsStatus(err, http.StatusBadRequest) {
		t.Fatalf("SetTenantFlags(undeclared) = %v", err)
	}
	if tf, err := c.TenantFlags(ctx, "acme"); err != nil || tf.Release != "1.0.0" || tf.Defaults["checkout_v2"] != "false" {
		t.Fatalf("TenantFlags = %+v, %v", tf, err)
	}

	// Rollouts.
	if _, err := c.StartRollout(ctx, apiclient.StartRolloutRequest{Release: "1.0.0", Selector: "all", Waves: "10%"}); !apiclient.IsStatus(err, http.StatusBadRequest) {
		t.Fatalf("StartRollout(bad waves) = %v", err)
	}
	ro, err := c.StartRollout(ctx, apiclient.StartRolloutRequest{Release: "1.0.0", Selector: "all", Waves: "canary:1,100%", MaxErrorRate: "2%", Bake: "1m"})
	if err != nil || len(ro.Targets) != 2 || ro.Spec.MaxErrorRate != 0.02 || ro.Waves[0].Name != "canary" {
		t.Fatalf("StartRollout = %+v, %v", ro, err)
	}
	if rs, err := c.ListRollouts(ctx, apiclient.RolloutQuery{Active: true, Limit: 10}); err != nil || len(rs) != 1 || rs[0].ID != ro.ID {
		t.Fatalf("ListRollouts = %+v, %v", rs, err)
	}
	if got, err := c.GetRollout(ctx, ro.ID); err != nil || got.ID != ro.ID || len(got.Targets) != 2 {
		t.Fatalf("GetRollout = %+v, %v", got, err)
	}
	// acme already runs 1.0.0: its wave flags are re-applied at once.
	rf, err := c.SetRolloutFlags(ctx, ro.ID, apiclient.RolloutFlagsRequest{Wave: "0", Set: map[string]string{"checkout_v2": "true"}})
	if err != nil || rf.WaveName != "canary" || len(rf.Tenants) != 1 || rf.Tenants[0].PlanID == "" {
		t.Fatalf("SetRolloutFlags = %+v, %v", rf, err)
	}
	if got, err := c.PauseRollout(ctx, ro.ID); err != nil || got.Control != "pause" {
		t.Fatalf("PauseRollout = %+v, %v", got, err)
	}
	if got, err := c.ResumeRollout(ctx, ro.ID); err != nil || got.Control != "" {
		t.Fatalf("ResumeRollout = %+v, %v", got, err)
	}
	if got, err := c.AbortRollout(ctx, ro.ID); err != nil || got.Control != "abort" {
		t.Fatalf("AbortRollout = %+v, %v", got, err)
	}
	if _, err := c.GetRollout(ctx, "a/b"); !apiclient.IsStatus(err, http.StatusNotFound) {
		t.Fatalf("GetRollout(escaped) = %v", err)
	}

	// Freeze.
	if _, err := c.Freeze(ctx, ""); !apiclient.IsStatus(err, http.StatusBadRequest) {
		t.Fatalf("Freeze(no reason) = %v", err)
	}
	if f, err := c.Freeze(ctx, "INC-7"); err != nil || !f.Frozen || f.Reason != "INC-7" {
		t.Fatalf("Freeze = %+v, %v", f, err)
	}
	if f, err := c.FreezeStatus(ctx); err != nil || !f.Frozen {
		t.Fatalf("FreezeStatus = %+v, %v", f, err)
	}
	if f, err := c.Unfreeze(ctx); err != nil || f.Frozen {
		t.Fatalf("Unfreeze = %+v, %v", f, err)
	}
	page, err := c.ListAudit(ctx, apiclient.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range page.Records {
		if r.Outcome == auditlog.OutcomeSuccess {
			seen[r.Action] = true
		}
	}
	for _, a := range []string{"release.push", "tenant.update", "flag.set", "rollout.start", "rollout.pause", "rollout.resume", "rollout.abort", "fleet.freeze", "fleet.unfreeze"} {
		if !seen[a] {
			t.Errorf("no successful %s in the audit trail", a)
		}
	}
}
