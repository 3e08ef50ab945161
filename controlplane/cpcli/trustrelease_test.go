package cpcli_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/sign"
)

// writePub writes s's public key as `attache release keygen` does.
func writePub(t *testing.T, s *sign.Signer, mode os.FileMode) string {
	t.Helper()
	b, err := json.Marshal(s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "release.key.pub")
	if err := os.WriteFile(p, append(b, '\n'), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKeysTrustReleaseKey(t *testing.T) {
	ctx := context.Background()
	dir, before := dataDir(t)
	st, err := store.Open(ctx, filepath.Join(dir, "attache.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	vendor, _ := sign.GenerateSigner()
	pub := writePub(t, vendor, 0o644)
	placeholder := sign.KeyID(before.ReleaseKey)

	stdout, stderr, err := run(t, "keys", "trust-release-key", "--public-key", pub, "--key-id", vendor.KeyID(), "--data-dir", dir)
	if err != nil {
		t.Fatalf("trust-release-key: %v\n%s", err, stderr)
	}
	retired := keys.RetiredPath(dir, sign.RoleReleases, placeholder)
	for _, want := range []string{
		"Trusted the release key of trust domain example.org.",
		"release key: " + vendor.KeyID(),
		"replaced release key: " + placeholder,
		"root version: 2 (was 1)",
		"retired key: " + retired,
		"shred -u " + retired,
		"Recorded in the audit trail as keys.trust_release_key",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	after := load(t, dir)
	if !slices.Equal(after.Root.Roles[sign.RoleReleases].KeyIDs, []string{vendor.KeyID()}) {
		t.Fatalf("releases role %v", after.Root.Roles[sign.RoleReleases].KeyIDs)
	}
	if _, err := os.Stat(filepath.Join(dir, keys.ReleaseKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("release.key still present: %v", err)
	}
	recs, err := st.ListAudit(ctx, store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		if r.Action == "keys.trust_release_key" {
			found = r.Target == vendor.KeyID() && strings.Contains(string(r.Detail), `"old_key_ids":["`+placeholder+`"]`)
		}
	}
	if !found {
		t.Errorf("no keys.trust_release_key audit record for %s in %+v", vendor.KeyID(), recs)
	}
	stdout, _, err = run(t, "keys", "show", "--data-dir", dir)
	if err != nil || !strings.Contains(stdout, "releases keys: "+vendor.KeyID()+" (threshold 1)") {
		t.Errorf("keys show after trusting: %v\n%s", err, stdout)
	}
}

func TestKeysTrustReleaseKeyRefuses(t *testing.T) {
	dir, before := dataDir(t)
	vendor, _ := sign.GenerateSigner()
	good := writePub(t, vendor, 0o644)
	plansPub := filepath.Join(t.TempDir(), "plans.pub")
	b, _ := json.Marshal(before.PlanSigner.PublicKey())
	os.WriteFile(plansPub, b, 0o644)
	garbage := filepath.Join(t.TempDir(), "garbage.pub")
	os.WriteFile(garbage, []byte(`{"type":"ed25519","public":"AAAA","extra":1}`), 0o644)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no public key", []string{"--data-dir", dir}, "--public-key is required"},
		{"missing file", []string{"--data-dir", dir, "--public-key", filepath.Join(dir, "nope.pub")}, "no such file"},
		{"not a key file", []string{"--data-dir", dir, "--public-key", garbage}, "not a public key file"},
		{"group-writable key file", []string{"--data-dir", dir, "--public-key", writePub(t, vendor, 0o666)}, "writable by group or others"},
		{"key id mismatch", []string{"--data-dir", dir, "--public-key", good, "--key-id", "abc"}, "not the expected --key-id abc"},
		{"the plans key", []string{"--data-dir", dir, "--public-key", plansPub}, "is this control plane's plans key"},
		{"empty data dir", []string{"--data-dir", t.TempDir(), "--public-key", good}, "holds no signing keys"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := run(t, append([]string{"keys", "trust-release-key"}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if m := load(t, dir); m.Root.Version != 1 {
		t.Errorf("a refused command changed the root: version %d", m.Root.Version)
	}
}
