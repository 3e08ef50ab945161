package keys

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/internal/sign"
)

var testNow = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func TestCreateThenLoad(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	created, err := LoadOrCreate(ctx, dir, "example.org", testNow)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	r := created.Root
	if r.Version != 1 || r.TrustDomain != "example.org" || !r.Expires.Equal(testNow.Add(365*24*time.Hour)) {
		t.Fatalf("root = %+v", r)
	}
	for _, role := range []string{sign.RoleRoot, sign.RolePlans, sign.RoleReleases} {
		if rk := r.Roles[role]; len(rk.KeyIDs) != 1 || rk.Threshold != 1 {
			t.Errorf("%s role = %+v", role, rk)
		}
	}
	if r.Roles[sign.RolePlans].KeyIDs[0] != created.PlanSigner.KeyID() ||
		r.Roles[sign.RoleRoot].KeyIDs[0] != created.RootSigner.KeyID() ||
		r.Roles[sign.RoleReleases].KeyIDs[0] != sign.KeyID(created.ReleaseKey) {
		t.Error("roles do not list the created keys")
	}
	if _, err := sign.VerifyRoot(ctx, created.RootEnvelope, testNow); err != nil {
		t.Fatalf("created root does not verify: %v", err)
	}
	for _, name := range []string{RootKeyFile, PlansKeyFile, ReleaseKeyFile, RootFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", name, fi.Mode().Perm())
		}
	}
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{LockFile, PlansKeyFile, ReleaseKeyFile, RootFile, RootKeyFile, RootsDir}; !slices.Equal(names, want) {
		t.Errorf("dir holds %q, want %q (temp files left?)", names, want)
	}
	hist, err := os.ReadFile(filepath.Join(dir, RootsDir, "1.json"))
	if err != nil || !bytes.Equal(hist, created.RootEnvelope) {
		t.Errorf("roots/1.json = %q, %v; want the created root", hist, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, RootsDir, "1.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("roots/1.json: %v, %v; want mode 0600", fi, err)
	}
	if chain := created.RootChain(0); len(chain) != 1 || !bytes.Equal(chain[0], created.RootEnvelope) {
		t.Errorf("created RootChain(0) = %d envelopes, want the root", len(chain))
	}

	loaded, err := LoadOrCreate(ctx, dir, "example.org", testNow.Add(24*time.Hour))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if loaded.RootHash() != created.RootHash() {
		t.Error("root hash changed on load")
	}
	if loaded.RootSigner.KeyID() != created.RootSigner.KeyID() ||
		loaded.PlanSigner.KeyID() != created.PlanSigner.KeyID() ||
		sign.KeyID(loaded.ReleaseKey) != sign.KeyID(created.ReleaseKey) {
		t.Error("keys changed on load")
	}
	// The loaded plan signer signs what the root accepts.
	env, err := sign.SignPayload(ctx, "application/vnd.attache.plan+json", []byte("{}"), loaded.PlanSigner)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sign.VerifyPayload(ctx, loaded.Root, sign.RolePlans, "application/vnd.attache.plan+json", env); err != nil {
		t.Fatalf("plan by loaded signer does not verify: %v", err)
	}
}

func TestReadableRootJSONAccepted(t *testing.T) {
	dir := setup(t)
	if err := os.Chmod(filepath.Join(dir, RootFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(context.Background(), dir, "example.org", testNow); err != nil {
		t.Fatalf("root.json is public; 0644 should load: %v", err)
	}
}

func setup(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := LoadOrCreate(context.Background(), dir, "example.org", testNow); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadRefuses(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, dir string)
		td     string
		now    time.Time
		want   string
	}{
		{"group-readable key", func(t *testing.T, dir string) {
			os.Chmod(filepath.Join(dir, PlansKeyFile), 0o644)
		}, "", time.Time{}, "plans.key is accessible by group or others (mode 0644)"},
		{"world-readable key", func(t *testing.T, dir string) {
			os.Chmod(filepath.Join(dir, RootKeyFile), 0o604)
		}, "", time.Time{}, "root.key is accessible by group or others (mode 0604)"},
		{"group-writable root.json", func(t *testing.T, dir string) {
			os.Chmod(filepath.Join(dir, RootFile), 0o660)
		}, "", time.Time{}, "root.json is writable by group or others"},
		{"trust domain mismatch", nil, "other.org", time.Time{}, `is for trust domain "example.org", but the control plane is configured for "other.org"`},
		{"expired root", nil, "", testNow.Add(400 * 24 * time.Hour), "trust root expired at"},
		{"missing key file", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, PlansKeyFile))
		}, "", time.Time{}, "but not plans.key"},
		{"release key swapped", func(t *testing.T, dir string) {
			s, _ := sign.GenerateSigner()
			pemBytes, _ := s.MarshalPKCS8PEM()
			os.WriteFile(filepath.Join(dir, ReleaseKeyFile), pemBytes, 0o600)
		}, "", time.Time{}, "releases role does not list the key in release.key"},
		{"missing root.json", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, RootFile))
		}, "", time.Time{}, "but not root.json"},
		{"key swapped", func(t *testing.T, dir string) {
			s, _ := sign.GenerateSigner()
			pemBytes, _ := s.MarshalPKCS8PEM()
			os.WriteFile(filepath.Join(dir, PlansKeyFile), pemBytes, 0o600)
		}, "", time.Time{}, "plans role does not list the key in plans.key"},
		{"root key swapped", func(t *testing.T, dir string) {
			s, _ := sign.GenerateSigner()
			pemBytes, _ := s.MarshalPKCS8PEM()
			os.WriteFile(filepath.Join(dir, RootKeyFile), pemBytes, 0o600)
		}, "", time.Time{}, "root role does not list the key in root.key"},
		{"root.json tampered", func(t *testing.T, dir string) {
			p := filepath.Join(dir, RootFile)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(strings.Replace(string(b), `"sig":"`, `"sig":"AAAA`, 1)), 0o600)
		}, "", time.Time{}, "root role needs 1 signature from its keys, got 0"},
		{"corrupt key", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, RootKeyFile), []byte("not pem"), 0o600)
		}, "", time.Time{}, "no PEM block"},
		{"key is a directory", func(t *testing.T, dir string) {
			p := filepath.Join(dir, RootKeyFile)
			os.Remove(p)
			os.Mkdir(p, 0o700)
		}, "", time.Time{}, "not a regular file"},
		{"bad trust domain", nil, "spiffe://example.org", time.Time{}, "invalid trust domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := setup(t)
			if tt.mutate != nil {
				tt.mutate(t, dir)
			}
			td, now := "example.org", testNow
			if tt.td != "" {
				td = tt.td
			}
			if !tt.now.IsZero() {
				now = tt.now
			}
			_, err := LoadOrCreate(context.Background(), dir, td, now)
			if err == nil {
				t.Fatalf("LoadOrCreate succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}
