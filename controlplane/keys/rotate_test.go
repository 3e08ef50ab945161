package keys

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"attache.dev/attache/internal/planverify"
	"attache.dev/attache/internal/sign"
)

const planType = "application/vnd.attache.plan+json"

func mustLoad(t *testing.T, dir string, now time.Time) *Material {
	t.Helper()
	m, err := LoadOrCreate(context.Background(), dir, "example.org", now)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	return m
}

// checkFollow follows chain from root the way an agent does.
func checkFollow(t *testing.T, from *sign.Root, chain [][]byte, now time.Time) *sign.Root {
	t.Helper()
	cur := from
	for i, env := range chain {
		next, err := planverify.FollowRootAt(context.Background(), cur, env, now)
		if err != nil {
			t.Fatalf("follow envelope %d of %d from version %d: %v", i+1, len(chain), cur.Version, err)
		}
		cur = next
	}
	return cur
}

func checkMode(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %04o, want 0600", path, fi.Mode().Perm())
	}
}

func noNextFiles(t *testing.T, dir string) {
	t.Helper()
	for _, f := range []string{RootKeyFile, PlansKeyFile} {
		if ok, _ := exists(filepath.Join(dir, f+NextSuffix)); ok {
			t.Errorf("%s%s left behind", f, NextSuffix)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(m) > 0 {
		t.Errorf("temp files left behind: %q", m)
	}
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return false, err
}

func TestRotatePlans(t *testing.T) {
	ctx := context.Background()
	dir := setup(t)
	now := testNow.Add(time.Hour)
	v1 := mustLoad(t, dir, now)
	oldID := v1.PlanSigner.KeyID()

	v2, err := RotatePlans(ctx, dir, "example.org", now)
	if err != nil {
		t.Fatalf("RotatePlans: %v", err)
	}
	if v2.Root.Version != 2 || !v2.Root.Expires.Equal(now.Add(RootLifetime)) {
		t.Errorf("new root version %d expires %s", v2.Root.Version, v2.Root.Expires)
	}
	if _, err := sign.VerifyRootUpdate(ctx, v1.Root, v2.RootEnvelope, now); err != nil {
		t.Fatalf("new root is not an update of the old: %v", err)
	}
	if got := v2.Root.Roles[sign.RolePlans]; !slices.Equal(got.KeyIDs, []string{v2.PlanSigner.KeyID()}) || got.Threshold != 1 {
		t.Errorf("plans role = %+v, want only the new key", got)
	}
	if v2.PlanSigner.KeyID() == oldID {
		t.Fatal("plans key unchanged")
	}
	if _, ok := v2.Root.Keys[oldID]; ok {
		t.Error("old plans key still listed in keys")
	}
	if v2.RootSigner.KeyID() != v1.RootSigner.KeyID() || sign.KeyID(v2.ReleaseKey) != sign.KeyID(v1.ReleaseKey) ||
		!slices.Equal(v2.Root.Roles[sign.RoleRoot].KeyIDs, v1.Root.Roles[sign.RoleRoot].KeyIDs) ||
		!slices.Equal(v2.Root.Roles[sign.RoleReleases].KeyIDs, v1.Root.Roles[sign.RoleReleases].KeyIDs) {
		t.Error("root or release key changed")
	}

	// The chain an agent pinned to version 1 gets, and follows.
	chain := v2.RootChain(1)
	if len(chain) != 1 || !bytes.Equal(chain[0], v2.RootEnvelope) {
		t.Fatalf("RootChain(1) = %d envelopes, want [v2]", len(chain))
	}
	if got := checkFollow(t, v1.Root, chain, now); got.Version != 2 {
		t.Fatalf("followed to version %d", got.Version)
	}
	if all := v2.RootChain(0); len(all) != 2 || !bytes.Equal(all[0], v1.RootEnvelope) {
		t.Errorf("RootChain(0) = %d envelopes, want [v1 v2]", len(all))
	}
	if c := v2.RootChain(2); c != nil {
		t.Errorf("RootChain(2) = %d envelopes, want none", len(c))
	}

	// Plans: the new key signs what the new root accepts, the old key not.
	newPlan, _ := sign.SignPayload(ctx, planType, []byte("{}"), v2.PlanSigner)
	if _, err := sign.VerifyPayload(ctx, v2.Root, sign.RolePlans, planType, newPlan); err != nil {
		t.Errorf("plan by the new key refused: %v", err)
	}
	oldPlan, _ := sign.SignPayload(ctx, planType, []byte("{}"), v1.PlanSigner)
	if _, err := sign.VerifyPayload(ctx, v2.Root, sign.RolePlans, planType, oldPlan); err == nil {
		t.Error("plan by the retired key accepted by the new root")
	}

	// Files.
	retired := RetiredPath(dir, sign.RolePlans, oldID)
	checkMode(t, retired)
	if s, err := loadKey(filepath.Dir(retired), filepath.Base(retired)); err != nil || s.KeyID() != oldID {
		t.Errorf("retired file holds %v, %v; want the old plans key", s, err)
	}
	if s, err := loadKey(dir, PlansKeyFile); err != nil || s.KeyID() != v2.PlanSigner.KeyID() {
		t.Errorf("plans.key holds %v, %v; want the new key", s, err)
	}
	checkMode(t, filepath.Join(dir, PlansKeyFile))
	checkMode(t, historyPath(dir, 2))
	if b, _ := os.ReadFile(historyPath(dir, 2)); !bytes.Equal(b, v2.RootEnvelope) {
		t.Error("roots/2.json is not the new root")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, RootFile)); !bytes.Equal(b, v2.RootEnvelope) {
		t.Error("root.json is not the new root")
	}
	noNextFiles(t, dir)

	// A restart loads the same material and history.
	again := mustLoad(t, dir, now)
	if again.RootHash() != v2.RootHash() || again.PlanSigner.KeyID() != v2.PlanSigner.KeyID() {
		t.Error("reload differs from the rotation's result")
	}
	if c := again.RootChain(0); len(c) != 2 {
		t.Errorf("reloaded RootChain(0) has %d envelopes, want 2", len(c))
	}
}

func TestRotateRoot(t *testing.T) {
	ctx := context.Background()
	dir := setup(t)
	now := testNow.Add(time.Hour)
	v1 := mustLoad(t, dir, now)
	oldID := v1.RootSigner.KeyID()

	v2, err := RotateRoot(ctx, dir, "example.org", now)
	if err != nil {
		t.Fatalf("RotateRoot: %v", err)
	}
	if _, err := sign.VerifyRootUpdate(ctx, v1.Root, v2.RootEnvelope, now); err != nil {
		t.Fatalf("new root is not an update of the old: %v", err)
	}
	if v2.RootSigner.KeyID() == oldID || !slices.Equal(v2.Root.Roles[sign.RoleRoot].KeyIDs, []string{v2.RootSigner.KeyID()}) {
		t.Errorf("root role = %+v, want only the new key %s", v2.Root.Roles[sign.RoleRoot], v2.RootSigner.KeyID())
	}
	if _, ok := v2.Root.Keys[oldID]; ok {
		t.Error("old root key still listed in keys")
	}
	if v2.PlanSigner.KeyID() != v1.PlanSigner.KeyID() {
		t.Error("plans key changed")
	}
	checkMode(t, RetiredPath(dir, sign.RoleRoot, oldID))
	noNextFiles(t, dir)

	// Then the plans key, signed by the new root key alone: an agent at
	// version 1 follows both.
	v3, err := RotatePlans(ctx, dir, "example.org", now)
	if err != nil {
		t.Fatalf("RotatePlans after RotateRoot: %v", err)
	}
	if got := checkFollow(t, v1.Root, v3.RootChain(1), now); got.Version != 3 {
		t.Errorf("followed to version %d, want 3", got.Version)
	}
	if got := checkFollow(t, v2.Root, v3.RootChain(2), now); got.Version != 3 {
		t.Errorf("followed to version %d, want 3", got.Version)
	}
	// The rotation works with the real clock too (planverify.FollowRoot).
	if _, err := planverify.FollowRoot(ctx, v2.Root, v3.RootEnvelope); err != nil && time.Now().Before(v3.Root.Expires) {
		t.Errorf("FollowRoot: %v", err)
	}
}

// TestUpdateNeedsBothRootKeys is a sanity check of what RotateRoot relies on:
// a new root signed by only one of the old and the new root key is refused.
func TestUpdateNeedsBothRootKeys(t *testing.T) {
	ctx := context.Background()
	dir := setup(t)
	v1 := mustLoad(t, dir, testNow)
	fresh, _ := sign.GenerateSigner()
	next := cloneRoot(v1.Root)
	next.Version = 2
	delete(next.Keys, v1.RootSigner.KeyID())
	next.Keys[fresh.KeyID()] = fresh.PublicKey()
	next.Roles[sign.RoleRoot] = sign.RoleKeys{KeyIDs: []string{fresh.KeyID()}, Threshold: 1}
	for _, tt := range []struct {
		name    string
		signers []*sign.Signer
		want    string
	}{
		{"new key only", []*sign.Signer{fresh}, "previous root role needs 1 signature"},
		{"old key only", []*sign.Signer{v1.RootSigner}, "new root role needs 1 signature"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env, err := sign.SignRoot(ctx, next, tt.signers...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = sign.VerifyRootUpdate(ctx, v1.Root, env, testNow)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("VerifyRootUpdate = %v, want %q", err, tt.want)
			}
		})
	}
	env, _ := sign.SignRoot(ctx, next, v1.RootSigner, fresh)
	if _, err := sign.VerifyRootUpdate(ctx, v1.Root, env, testNow); err != nil {
		t.Fatalf("signed by both: %v", err)
	}
}

func TestRotateExpiredRoot(t *testing.T) {
	ctx := context.Background()
	dir := setup(t)
	later := testNow.Add(RootLifetime + 24*time.Hour)
	if _, err := LoadOrCreate(ctx, dir, "example.org", later); !errors.Is(err, sign.ErrRootExpired) {
		t.Fatalf("LoadOrCreate with an expired root = %v, want ErrRootExpired", err)
	}
	m, err := LoadExisting(ctx, dir, "", later)
	if err != nil || m.Root.Version != 1 || m.Root.TrustDomain != "example.org" {
		t.Fatalf("LoadExisting of an expired root = %v, %v", m, err)
	}
	v2, err := RotatePlans(ctx, dir, "example.org", later)
	if err != nil {
		t.Fatalf("rotating away from an expired root: %v", err)
	}
	if !v2.Root.Expires.After(later) {
		t.Errorf("new root expires %s", v2.Root.Expires)
	}
	if _, err := sign.VerifyRootUpdate(ctx, m.Root, v2.RootEnvelope, later); err != nil {
		t.Error(err)
	}
	mustLoad(t, dir, later)
}

func TestRotateRefuses(t *testing.T) {
	ctx := context.Background()
	dir := setup(t)
	for _, tt := range []struct {
		name, dir, td, want string
	}{
		{"bad trust domain", dir, "spiffe://example.org", "invalid trust domain"},
		{"other trust domain", dir, "other.org", `is for trust domain "example.org", but the control plane is configured for "other.org"`},
		{"no data dir", filepath.Join(dir, "nope"), "example.org", "no such file or directory"},
		{"empty data dir", t.TempDir(), "example.org", "holds no signing keys"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := RotatePlans(ctx, tt.dir, tt.td, testNow)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("RotatePlans = %v, want error containing %q", err, tt.want)
			}
		})
	}
	if m := mustLoad(t, dir, testNow); m.Root.Version != 1 {
		t.Errorf("a refused rotation changed the root to version %d", m.Root.Version)
	}
}

func TestLoadExisting(t *testing.T) {
	ctx := context.Background()
	if _, err := LoadExisting(ctx, t.TempDir(), "", testNow); err == nil || !strings.Contains(err.Error(), "holds no signing keys") {
		t.Errorf("empty dir: %v", err)
	}
	dir := setup(t)
	if _, err := LoadExisting(ctx, dir, "other.org", testNow); err == nil {
		t.Error("trust domain mismatch accepted")
	}
	if m, err := LoadExisting(ctx, dir, "example.org", testNow); err != nil || m.Root.Version != 1 {
		t.Errorf("LoadExisting = %v, %v", m, err)
	}
}

func TestConcurrentRotations(t *testing.T) {
	ctx := context.Background()
	dir := setup(t)
	v1 := mustLoad(t, dir, testNow)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			var err error
			if i%2 == 0 {
				_, err = RotatePlans(ctx, dir, "example.org", testNow)
			} else {
				_, err = RotateRoot(ctx, dir, "example.org", testNow)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	m := mustLoad(t, dir, testNow)
	if m.Root.Version != 5 {
		t.Fatalf("version %d after 4 rotations", m.Root.Version)
	}
	checkFollow(t, v1.Root, m.RootChain(1), testNow)
}

func TestHistory(t *testing.T) {
	ctx := context.Background()
	t.Run("backfilled for a data dir from before history", func(t *testing.T) {
		dir := setup(t)
		if err := os.RemoveAll(filepath.Join(dir, RootsDir)); err != nil {
			t.Fatal(err)
		}
		m := mustLoad(t, dir, testNow)
		b, err := os.ReadFile(historyPath(dir, 1))
		if err != nil || !bytes.Equal(b, m.RootEnvelope) {
			t.Fatalf("roots/1.json = %v; want root.json", err)
		}
		checkMode(t, historyPath(dir, 1))
		if _, err := RotatePlans(ctx, dir, "example.org", testNow); err != nil {
			t.Fatal(err)
		}
		if c := mustLoad(t, dir, testNow).RootChain(0); len(c) != 2 {
			t.Errorf("RootChain(0) has %d envelopes, want 2", len(c))
		}
	})
	t.Run("older versions missing", func(t *testing.T) {
		dir := setup(t)
		for range 2 {
			if _, err := RotatePlans(ctx, dir, "example.org", testNow); err != nil {
				t.Fatal(err)
			}
		}
		os.Remove(historyPath(dir, 1))
		m := mustLoad(t, dir, testNow)
		if c := m.RootChain(0); len(c) != 2 {
			t.Errorf("RootChain(0) has %d envelopes, want versions 2 and 3", len(c))
		}
		if c := m.RootChain(2); len(c) != 1 {
			t.Errorf("RootChain(2) has %d envelopes, want 1", len(c))
		}
	})
	refuse := []struct {
		name   string
		mutate func(t *testing.T, dir string)
		want   string
	}{
		{"current version differs from root.json", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(historyPath(dir, 1))
			os.WriteFile(historyPath(dir, 2), b, 0o600)
		}, "roots/2.json differs from"},
		{"older version not an ancestor", func(t *testing.T, dir string) {
			other := setup(t)
			b, _ := os.ReadFile(historyPath(other, 1))
			os.WriteFile(historyPath(dir, 1), b, 0o600)
		}, "version 2 in roots does not follow"},
		{"older version tampered", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(historyPath(dir, 1))
			os.WriteFile(historyPath(dir, 1), []byte(strings.Replace(string(b), `"sig":"`, `"sig":"AAAA`, 1)), 0o600)
		}, "roots/1.json: trust root: root role needs 1 signature"},
		{"older version in the wrong file", func(t *testing.T, dir string) {
			if _, err := RotatePlans(context.Background(), dir, "example.org", testNow); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(historyPath(dir, 1))
			os.WriteFile(historyPath(dir, 2), b, 0o600)
		}, "roots/2.json holds version 1"},
		{"history writable by others", func(t *testing.T, dir string) {
			os.Chmod(historyPath(dir, 1), 0o666)
		}, "1.json is writable by group or others"},
	}
	for _, tt := range refuse {
		t.Run(tt.name, func(t *testing.T) {
			dir := setup(t)
			if _, err := RotatePlans(ctx, dir, "example.org", testNow); err != nil {
				t.Fatal(err)
			}
			tt.mutate(t, dir)
			_, err := LoadOrCreate(ctx, dir, "example.org", testNow)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadOrCreate = %v, want error containing %q", err, tt.want)
			}
		})
	}
}

var errCrash = errors.New("simulated crash")

// TestCrashPoints stops a rotation after each of its steps, as a crash
// would, and checks that the next load sees either the old or the new
// material, complete, and that rotating again works.
func TestCrashPoints(t *testing.T) {
	ctx := context.Background()
	defer func() { crashHook = nil }()
	for _, role := range []string{sign.RolePlans, sign.RoleRoot} {
		for _, tt := range []struct {
			step      string
			committed bool
		}{
			{stepNextKey, false},
			{stepHistory, false},
			{stepRoot, true},
			{stepRetired, true},
		} {
			t.Run(role+"/"+tt.step, func(t *testing.T) {
				dir := setup(t)
				v1 := mustLoad(t, dir, testNow)
				old := v1.PlanSigner
				rotate := RotatePlans
				if role == sign.RoleRoot {
					old, rotate = v1.RootSigner, RotateRoot
				}
				crashHook = func(step string) error {
					if step == tt.step {
						return errCrash
					}
					return nil
				}
				if _, err := rotate(ctx, dir, "example.org", testNow); !errors.Is(err, errCrash) {
					t.Fatalf("rotate = %v, want the simulated crash", err)
				}
				crashHook = nil
				// A crash inside securefile.Write leaves a temp file.
				os.WriteFile(filepath.Join(dir, "."+PlansKeyFile+NextSuffix+".tmp-123"), []byte("secret"), 0o600)

				m := mustLoad(t, dir, testNow)
				cur := m.PlanSigner
				if role == sign.RoleRoot {
					cur = m.RootSigner
				}
				retiredExists, _ := exists(RetiredPath(dir, role, old.KeyID()))
				history2, _ := exists(historyPath(dir, 2))
				if tt.committed {
					if m.Root.Version != 2 || cur.KeyID() == old.KeyID() {
						t.Errorf("after a committed rotation: version %d, key changed %v", m.Root.Version, cur.KeyID() != old.KeyID())
					}
					if !retiredExists {
						t.Error("old key not retired")
					}
					checkFollow(t, v1.Root, m.RootChain(1), testNow)
				} else {
					if m.Root.Version != 1 || cur.KeyID() != old.KeyID() || m.RootHash() != v1.RootHash() {
						t.Errorf("after an uncommitted rotation: version %d, key changed %v", m.Root.Version, cur.KeyID() != old.KeyID())
					}
					if retiredExists || history2 {
						t.Errorf("uncommitted rotation left retired key %v, roots/2.json %v", retiredExists, history2)
					}
				}
				noNextFiles(t, dir)

				after, err := rotate(ctx, dir, "example.org", testNow)
				if err != nil {
					t.Fatalf("rotate after recovery: %v", err)
				}
				checkFollow(t, v1.Root, after.RootChain(1), testNow)
			})
		}
	}
}

func TestRootByHash(t *testing.T) {
	dir := setup(t)
	v1 := mustLoad(t, dir, testNow)
	v2, err := RotatePlans(context.Background(), dir, "example.org", testNow)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Material{v1, v2} {
		env, ok := v2.RootByHash(m.RootHash())
		if !ok || !bytes.Equal(env, m.RootEnvelope) {
			t.Errorf("RootByHash(version %d) = %v", m.Root.Version, ok)
		}
	}
	if _, ok := v2.RootByHash([32]byte{1}); ok {
		t.Error("unknown hash found")
	}
}

func TestNoLockFileInEmptyDir(t *testing.T) {
	dir := t.TempDir()
	LoadExisting(context.Background(), dir, "", testNow)
	RotatePlans(context.Background(), dir, "example.org", testNow)
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("an empty dir got %d entries", len(entries))
	}
}
