package keys

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/sign"
)

func testRelease(t *testing.T) *release.Release {
	t.Helper()
	r, err := release.ParseYAML([]byte("name: app\nversion: \"1\"\nsteps: [{id: s, provider: local, action: x, resource: \"t/{{tenant}}\"}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTrustReleaseKey(t *testing.T) {
	ctx := context.Background()
	dir := setup(t)
	v1 := mustLoad(t, dir, testNow)
	placeholder, err := loadKey(dir, ReleaseKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	vendor, err := sign.GenerateSigner()
	if err != nil {
		t.Fatal(err)
	}

	m, err := TrustReleaseKey(ctx, dir, "example.org", testNow, vendor.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	rk := m.Root.Roles[sign.RoleReleases]
	if m.Root.Version != 2 || !slices.Equal(rk.KeyIDs, []string{vendor.KeyID()}) || rk.Threshold != 1 {
		t.Fatalf("new root version %d, releases role %+v", m.Root.Version, rk)
	}
	if sign.KeyID(m.ReleaseKey) != vendor.KeyID() {
		t.Fatalf("Material.ReleaseKey is %s, want the vendor's %s", sign.KeyID(m.ReleaseKey), vendor.KeyID())
	}
	if _, ok := m.Root.Keys[placeholder.KeyID()]; ok {
		t.Error("the new root still lists the placeholder release key")
	}
	if m.RootSigner.KeyID() != v1.RootSigner.KeyID() || m.PlanSigner.KeyID() != v1.PlanSigner.KeyID() {
		t.Error("trusting the release key changed the root or plans key")
	}
	// The control plane no longer holds a release private key.
	if ok, _ := exists(filepath.Join(dir, ReleaseKeyFile)); ok {
		t.Fatal("release.key still in the data directory")
	}
	retired := RetiredPath(dir, sign.RoleReleases, placeholder.KeyID())
	checkMode(t, retired)
	noNextFiles(t, dir)

	// An agent pinned to version 1 follows to the new root.
	got := checkFollow(t, v1.Root, m.RootChain(1), testNow)
	if got.Version != 2 || !slices.Equal(got.Roles[sign.RoleReleases].KeyIDs, []string{vendor.KeyID()}) {
		t.Fatalf("followed root %d lists release keys %v", got.Version, got.Roles[sign.RoleReleases].KeyIDs)
	}
	// Under it a release signed by the vendor verifies, one signed by the
	// retired placeholder or by the plans key does not.
	r := testRelease(t)
	for _, tc := range []struct {
		name string
		s    *sign.Signer
		ok   bool
	}{{"vendor", vendor, true}, {"placeholder", placeholder, false}, {"plans key", m.PlanSigner, false}} {
		env, err := release.Sign(ctx, r, tc.s)
		if err != nil {
			t.Fatal(err)
		}
		_, err = release.Verify(ctx, got, env)
		if tc.ok != (err == nil) || (!tc.ok && !errors.Is(err, release.ErrSignature)) {
			t.Errorf("release signed by the %s key: %v", tc.name, err)
		}
	}

	// The data directory loads, and rotations still work without
	// release.key.
	again := mustLoad(t, dir, testNow)
	if again.Root.Version != 2 || sign.KeyID(again.ReleaseKey) != vendor.KeyID() {
		t.Fatalf("reloaded version %d, release key %s", again.Root.Version, sign.KeyID(again.ReleaseKey))
	}
	m3, err := RotatePlans(ctx, dir, "example.org", testNow)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m3.Root.Roles[sign.RoleReleases].KeyIDs, []string{vendor.KeyID()}) {
		t.Fatal("a plans rotation dropped the vendor's release key")
	}
	checkFollow(t, v1.Root, m3.RootChain(1), testNow)

	// A second vendor key replaces the first (the vendor rotates its key).
	vendor2, _ := sign.GenerateSigner()
	m4, err := TrustReleaseKey(ctx, dir, "example.org", testNow, vendor2.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m4.Root.Roles[sign.RoleReleases].KeyIDs, []string{vendor2.KeyID()}) {
		t.Fatalf("releases role %v", m4.Root.Roles[sign.RoleReleases].KeyIDs)
	}
	if _, ok := m4.Root.Keys[vendor.KeyID()]; ok {
		t.Error("the replaced vendor key is still listed")
	}
	checkFollow(t, v1.Root, m4.RootChain(1), testNow)
}

func TestTrustReleaseKeyRefuses(t *testing.T) {
	ctx := context.Background()
	dir := setup(t)
	m := mustLoad(t, dir, testNow)
	vendor, _ := sign.GenerateSigner()
	for _, tc := range []struct {
		name string
		key  sign.Key
		want string
	}{
		{"the plans key", m.PlanSigner.PublicKey(), "is this control plane's plans key"},
		{"the root key", m.RootSigner.PublicKey(), "is this control plane's root key"},
		{"the current placeholder", m.ReleaseKey, "is already the only releases key"},
		{"not ed25519", sign.Key{Type: "rsa", Public: vendor.PublicKey().Public}, `got type "rsa"`},
		{"short key", sign.Key{Type: sign.KeyTypeEd25519, Public: []byte{1, 2, 3}}, "of 3 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := TrustReleaseKey(ctx, dir, "example.org", testNow, tc.key)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if cur := mustLoad(t, dir, testNow); cur.Root.Version != 1 {
				t.Fatalf("a refusal changed the root to version %d", cur.Root.Version)
			}
		})
	}
	if _, err := TrustReleaseKey(ctx, dir, "other.org", testNow, vendor.PublicKey()); err == nil {
		t.Fatal("trusted for another trust domain")
	}
	if _, err := TrustReleaseKey(ctx, t.TempDir(), "example.org", testNow, vendor.PublicKey()); err == nil || !strings.Contains(err.Error(), "holds no signing keys") {
		t.Fatalf("empty data dir: %v", err)
	}
}

// TestTrustReleaseKeyCrashPoints stops TrustReleaseKey after each step and
// checks that the next load sees the old or the new root, complete, with
// release.key retired exactly when the new root is committed.
func TestTrustReleaseKeyCrashPoints(t *testing.T) {
	ctx := context.Background()
	defer func() { crashHook = nil }()
	for _, tt := range []struct {
		step      string
		committed bool
	}{
		{stepHistory, false},
		{stepRoot, true},
		{stepRetired, true},
	} {
		t.Run(tt.step, func(t *testing.T) {
			dir := setup(t)
			v1 := mustLoad(t, dir, testNow)
			placeholder, _ := loadKey(dir, ReleaseKeyFile)
			vendor, _ := sign.GenerateSigner()
			crashHook = func(step string) error {
				if step == tt.step {
					return errCrash
				}
				return nil
			}
			if _, err := TrustReleaseKey(ctx, dir, "example.org", testNow, vendor.PublicKey()); !errors.Is(err, errCrash) {
				t.Fatalf("TrustReleaseKey = %v, want the simulated crash", err)
			}
			crashHook = nil

			m := mustLoad(t, dir, testNow)
			placeholderLeft, _ := exists(filepath.Join(dir, ReleaseKeyFile))
			retiredExists, _ := exists(RetiredPath(dir, sign.RoleReleases, placeholder.KeyID()))
			if tt.committed {
				if m.Root.Version != 2 || sign.KeyID(m.ReleaseKey) != vendor.KeyID() || placeholderLeft || !retiredExists {
					t.Fatalf("committed: version %d, release key %s, release.key left %v, retired %v",
						m.Root.Version, sign.KeyID(m.ReleaseKey), placeholderLeft, retiredExists)
				}
				checkFollow(t, v1.Root, m.RootChain(1), testNow)
				return
			}
			if m.Root.Version != 1 || sign.KeyID(m.ReleaseKey) != placeholder.KeyID() || !placeholderLeft || retiredExists {
				t.Fatalf("uncommitted: version %d, release key %s, release.key left %v, retired %v",
					m.Root.Version, sign.KeyID(m.ReleaseKey), placeholderLeft, retiredExists)
			}
			// Trusting again works and replaces the uncommitted roots/2.json.
			m2, err := TrustReleaseKey(ctx, dir, "example.org", testNow, vendor.PublicKey())
			if err != nil {
				t.Fatal(err)
			}
			checkFollow(t, v1.Root, m2.RootChain(1), testNow)
			if ok, _ := exists(filepath.Join(dir, ReleaseKeyFile)); ok {
				t.Fatal("release.key left after trusting again")
			}
		})
	}
}

func TestLoadWithoutPlaceholderReleaseKey(t *testing.T) {
	dir := setup(t)
	before := mustLoad(t, dir, testNow)
	if err := os.Remove(filepath.Join(dir, ReleaseKeyFile)); err != nil {
		t.Fatal(err)
	}
	m := mustLoad(t, dir, testNow)
	if sign.KeyID(m.ReleaseKey) != sign.KeyID(before.ReleaseKey) {
		t.Fatal("the releases role's key is no longer reported")
	}
}
