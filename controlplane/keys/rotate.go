package keys

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"attache.dev/attache/internal/securefile"
	"attache.dev/attache/internal/sign"
)

// rotated maps the roles this package rotates to their key files.
var rotated = []struct{ role, file string }{
	{sign.RoleRoot, RootKeyFile},
	{sign.RolePlans, PlansKeyFile},
}

// RotatePlans replaces the plans key: it generates a new key and a new root,
// version+1, expiring RootLifetime after now, that lists the new key as the
// only plans key (threshold 1) and keeps the root and releases keys; the root
// key signs it, which satisfies the threshold of both the old and the new
// root. The old plans key file is moved to retired/plans-<keyid>.key, where
// it should be destroyed.
//
// The data directory must already hold key material for trustDomain; its
// current root may have expired (a rotation renews the expiry). The new root
// is checked with sign.VerifyRootUpdate against the current one before
// anything is written. The returned Material is loaded from disk afterwards.
// A running control plane picks the change up through its Holder; agents
// follow on their next session or plan offer (Material.RootChain). Every
// rotation changes the root's hash, which join tokens pin: a token made
// before it enrolls with the root it pins (Material.RootByHash).
func RotatePlans(ctx context.Context, dir, trustDomain string, now time.Time) (*Material, error) {
	return rotate(ctx, dir, trustDomain, now, sign.RolePlans)
}

// RotateRoot replaces the root key: it generates a new key and a new root,
// version+1, expiring RootLifetime after now, that lists the new key as the
// only root key (threshold 1) and keeps the plans and releases keys. Both the
// old and the new root key sign it (TUF: the previous root's threshold and
// its own). The old root key file is moved to retired/root-<keyid>.key.
// Otherwise as RotatePlans.
func RotateRoot(ctx context.Context, dir, trustDomain string, now time.Time) (*Material, error) {
	return rotate(ctx, dir, trustDomain, now, sign.RoleRoot)
}

// Rotation steps, in order; crashHook (tests) is called after each.
const (
	stepNextKey = "next-key" // <role>.key.next written
	stepHistory = "history"  // roots/<v>.json written
	stepRoot    = "root"     // root.json written: committed
	stepRetired = "retired"  // old key moved to retired/
	stepDone    = "renamed"  // <role>.key.next renamed to <role>.key
)

// crashHook, when set by a test, is called after each step of a rotation;
// an error stops the rotation there, as a crash would.
var crashHook func(step string) error

func rotate(ctx context.Context, dir, trustDomain string, now time.Time, role string) (*Material, error) {
	if err := checkTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkExisting(dir); err != nil {
		return nil, err
	}
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cur, err := openLocked(ctx, dir, trustDomain, now, openOpts{allowExpired: true})
	if err != nil {
		return nil, err
	}

	var file string
	var old *sign.Signer
	switch role {
	case sign.RoleRoot:
		file, old = RootKeyFile, cur.RootSigner
	case sign.RolePlans:
		file, old = PlansKeyFile, cur.PlanSigner
	default:
		return nil, fmt.Errorf("keys: cannot rotate the %s role", role)
	}
	fresh, err := sign.GenerateSigner()
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	next := cloneRoot(cur.Root)
	next.Version++
	next.Expires = now.Add(RootLifetime).UTC().Truncate(time.Second)
	next.Roles[role] = sign.RoleKeys{KeyIDs: []string{fresh.KeyID()}, Threshold: 1}
	next.Keys[fresh.KeyID()] = fresh.PublicKey()
	if !listedByAnyRole(next, old.KeyID()) {
		delete(next.Keys, old.KeyID())
	}
	signers := []*sign.Signer{cur.RootSigner}
	if role == sign.RoleRoot {
		signers = append(signers, fresh)
	}
	env, err := sign.SignRoot(ctx, next, signers...)
	if err != nil {
		return nil, fmt.Errorf("keys: sign version %d of the trust root: %w", next.Version, err)
	}
	if _, err := sign.VerifyRootUpdate(ctx, cur.Root, env, now); err != nil {
		return nil, fmt.Errorf("keys: the new trust root (version %d) does not verify as an update of version %d; nothing was changed: %w",
			next.Version, cur.Root.Version, err)
	}

	path := filepath.Join(dir, file)
	steps := []struct {
		name string
		do   func() error
	}{
		{stepNextKey, func() error { return writeKey(path+NextSuffix, fresh) }},
		{stepHistory, func() error { return writeHistory(dir, next.Version, env) }},
		{stepRoot, func() error { return securefile.Write(filepath.Join(dir, RootFile), env) }},
		{stepRetired, func() error { return retire(dir, role, path, old.KeyID()) }},
		{stepDone, func() error { return renameSync(path+NextSuffix, path) }},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			return nil, fmt.Errorf("keys: rotate the %s key: %w", role, err)
		}
		if crashHook != nil {
			if err := crashHook(st.name); err != nil {
				return nil, err
			}
		}
	}
	m, err := openLocked(ctx, dir, trustDomain, now, openOpts{})
	if err != nil {
		return nil, fmt.Errorf("keys: rotated the %s key, but loading the result failed: %w", role, err)
	}
	return m, nil
}

func cloneRoot(r *sign.Root) *sign.Root {
	c := *r
	c.Keys = maps.Clone(r.Keys)
	c.Roles = make(map[string]sign.RoleKeys, len(r.Roles))
	for role, rk := range r.Roles {
		c.Roles[role] = sign.RoleKeys{KeyIDs: slices.Clone(rk.KeyIDs), Threshold: rk.Threshold}
	}
	return &c
}

func listedByAnyRole(r *sign.Root, keyID string) bool {
	for _, rk := range r.Roles {
		if slices.Contains(rk.KeyIDs, keyID) {
			return true
		}
	}
	return false
}

// RetiredPath is where a rotation moves the replaced key of role.
func RetiredPath(dir, role, keyID string) string {
	return filepath.Join(dir, RetiredDir, role+"-"+keyID+".key")
}

// retire moves the key file at path (of role, with keyID) to retired/. It is
// a rename, not a copy, so that shredding the retired file overwrites the
// blocks that held the key.
func retire(dir, role, path, keyID string) error {
	if err := securefile.MkdirAll(filepath.Join(dir, RetiredDir)); err != nil {
		return err
	}
	if err := renameSync(path, RetiredPath(dir, role, keyID)); err != nil {
		return err
	}
	return syncDir(filepath.Join(dir, RetiredDir))
}

// renameSync renames and makes the rename durable.
func renameSync(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return syncDir(filepath.Dir(from))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// recoverRotation finishes or undoes a rotation interrupted by a crash (see
// the package documentation). The caller holds the lock. It also removes
// temporary files a crash inside securefile.Write may have left.
func recoverRotation(ctx context.Context, dir string) error {
	if err := removeTemps(dir); err != nil {
		return err
	}
	var pending []int
	for i, rf := range rotated {
		ok, err := securefile.Exists(filepath.Join(dir, rf.file+NextSuffix))
		if err != nil {
			return fmt.Errorf("keys: %w", err)
		}
		if ok {
			pending = append(pending, i)
		}
	}
	if len(pending) == 0 {
		return nil
	}
	env, err := securefile.ReadPublic(filepath.Join(dir, RootFile))
	if err != nil {
		return fmt.Errorf("keys: finish an interrupted key rotation: %w", err)
	}
	root, err := verifyRootAnyTime(ctx, env)
	if err != nil {
		return fmt.Errorf("keys: finish an interrupted key rotation: %s: %w", filepath.Join(dir, RootFile), err)
	}
	undone := false
	for _, i := range pending {
		rf := rotated[i]
		path := filepath.Join(dir, rf.file)
		nextS, err := loadKey(dir, rf.file+NextSuffix)
		if err != nil {
			return fmt.Errorf("keys: finish an interrupted key rotation: %w", err)
		}
		if !slices.Contains(root.Roles[rf.role].KeyIDs, nextS.KeyID()) {
			// Never committed: no root lists the new key.
			if err := os.Remove(path + NextSuffix); err != nil {
				return fmt.Errorf("keys: undo an interrupted key rotation: %w", err)
			}
			undone = true
			continue
		}
		// Committed: retire the old key (unless already done) and put the
		// new one in place.
		switch oldS, err := loadKey(dir, rf.file); {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("keys: finish an interrupted key rotation: %w", err)
		case oldS.KeyID() == nextS.KeyID():
		case slices.Contains(root.Roles[rf.role].KeyIDs, oldS.KeyID()):
			return fmt.Errorf("keys: finish an interrupted key rotation: %s lists both %s and %s for the %s role; this control plane holds one %s key",
				RootFile, path, path+NextSuffix, rf.role, rf.role)
		default:
			if err := retire(dir, rf.role, path, oldS.KeyID()); err != nil {
				return fmt.Errorf("keys: finish an interrupted key rotation: %w", err)
			}
		}
		if err := renameSync(path+NextSuffix, path); err != nil {
			return fmt.Errorf("keys: finish an interrupted key rotation: %w", err)
		}
	}
	if undone {
		if err := removeHistoryAfter(dir, root.Version); err != nil {
			return fmt.Errorf("keys: undo an interrupted key rotation: %w", err)
		}
	}
	return syncDir(dir)
}

// removeHistoryAfter deletes roots/<v>.json for v > version: roots an
// interrupted rotation wrote but never committed.
func removeHistoryAfter(dir string, version int) error {
	entries, err := os.ReadDir(filepath.Join(dir, RootsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		v, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".json"))
		if err != nil || !strings.HasSuffix(e.Name(), ".json") || v <= version {
			continue
		}
		if err := os.Remove(filepath.Join(dir, RootsDir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// removeTemps deletes the temporary files securefile.Write leaves when the
// process dies before its rename, for the files this package writes.
func removeTemps(dir string) error {
	var patterns []string
	for _, name := range []string{RootKeyFile, PlansKeyFile, ReleaseKeyFile, RootFile,
		RootKeyFile + NextSuffix, PlansKeyFile + NextSuffix} {
		patterns = append(patterns, filepath.Join(dir, "."+name+".tmp-*"))
	}
	patterns = append(patterns, filepath.Join(dir, RootsDir, ".*.json.tmp-*"))
	for _, pat := range patterns {
		matches, err := filepath.Glob(pat)
		if err != nil {
			return fmt.Errorf("keys: %w", err)
		}
		for _, m := range matches {
			if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("keys: remove temporary file: %w", err)
			}
		}
	}
	return nil
}

// TrustReleaseKey makes key, the vendor's release key (its private half
// stays in the vendor's CI), the only key of the releases role: it writes a
// new root, version+1, expiring RootLifetime after now, whose releases role
// lists exactly key (threshold 1), signed by the root key, and then moves
// the placeholder release.key, if present, to retired/releases-<keyid>.key,
// so that the control plane holds no release private key. From then on
// agents accept only releases signed by key, and a control plane whose keys
// are stolen cannot sign one.
//
// It refuses a key that is not ed25519, that is one of the control plane's
// own root or plans keys, or that is already the only releases key. The
// order of writes (roots/<v+1>.json, root.json, then the retirement) is
// crash-safe: a load after a crash between the last two retires the
// placeholder (see the package documentation). Otherwise as RotatePlans.
func TrustReleaseKey(ctx context.Context, dir, trustDomain string, now time.Time, key sign.Key) (*Material, error) {
	if err := checkTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if key.Type != sign.KeyTypeEd25519 || len(key.Public) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("keys: release key: want an %s public key of %d bytes, got type %.32q of %d bytes",
			sign.KeyTypeEd25519, ed25519.PublicKeySize, key.Type, len(key.Public))
	}
	id := sign.KeyID(key)
	if err := checkExisting(dir); err != nil {
		return nil, err
	}
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	cur, err := openLocked(ctx, dir, trustDomain, now, openOpts{allowExpired: true})
	if err != nil {
		return nil, err
	}
	for _, role := range []string{sign.RoleRoot, sign.RolePlans} {
		if slices.Contains(cur.Root.Roles[role].KeyIDs, id) {
			return nil, fmt.Errorf("keys: release key %s is this control plane's %s key; the release key must be one the control plane does not hold (generate it with `attache release keygen`)", id, role)
		}
	}
	if rk := cur.Root.Roles[sign.RoleReleases]; slices.Equal(rk.KeyIDs, []string{id}) {
		return nil, fmt.Errorf("keys: release key %s is already the only releases key (trust root version %d); nothing to do", id, cur.Root.Version)
	}

	next := cloneRoot(cur.Root)
	next.Version++
	next.Expires = now.Add(RootLifetime).UTC().Truncate(time.Second)
	next.Keys[id] = sign.Key{Type: key.Type, Public: slices.Clone(key.Public)}
	next.Roles[sign.RoleReleases] = sign.RoleKeys{KeyIDs: []string{id}, Threshold: 1}
	for _, old := range cur.Root.Roles[sign.RoleReleases].KeyIDs {
		if !listedByAnyRole(next, old) {
			delete(next.Keys, old)
		}
	}
	env, err := sign.SignRoot(ctx, next, cur.RootSigner)
	if err != nil {
		return nil, fmt.Errorf("keys: sign version %d of the trust root: %w", next.Version, err)
	}
	if _, err := sign.VerifyRootUpdate(ctx, cur.Root, env, now); err != nil {
		return nil, fmt.Errorf("keys: the new trust root (version %d) does not verify as an update of version %d; nothing was changed: %w",
			next.Version, cur.Root.Version, err)
	}

	placeholder := filepath.Join(dir, ReleaseKeyFile)
	steps := []struct {
		name string
		do   func() error
	}{
		// roots/ files newer than root.json were never committed (a crash
		// of an earlier TrustReleaseKey); the new one replaces them.
		{stepHistory, func() error {
			if err := removeHistoryAfter(dir, cur.Root.Version); err != nil {
				return err
			}
			return writeHistory(dir, next.Version, env)
		}},
		{stepRoot, func() error { return securefile.Write(filepath.Join(dir, RootFile), env) }},
		{stepRetired, func() error {
			s, err := loadKey(dir, ReleaseKeyFile)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				return nil
			case err != nil:
				return err
			}
			return retire(dir, sign.RoleReleases, placeholder, s.KeyID())
		}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			return nil, fmt.Errorf("keys: trust the release key: %w", err)
		}
		if crashHook != nil {
			if err := crashHook(st.name); err != nil {
				return nil, err
			}
		}
	}
	m, err := openLocked(ctx, dir, trustDomain, now, openOpts{})
	if err != nil {
		return nil, fmt.Errorf("keys: trusted the release key, but loading the result failed: %w", err)
	}
	return m, nil
}

// recoverReleaseTrust retires a release.key left behind by a
// TrustReleaseKey that committed (root.json no longer lists the key in its
// releases role, the version before it did) but crashed before retiring
// it. Anything else it leaves to load, which refuses a release.key that
// root.json does not list. The caller holds the lock.
func recoverReleaseTrust(ctx context.Context, dir string) error {
	path := filepath.Join(dir, ReleaseKeyFile)
	if ok, err := securefile.Exists(path); err != nil || !ok {
		return err
	}
	s, err := loadKey(dir, ReleaseKeyFile)
	if err != nil {
		return nil
	}
	env, err := securefile.ReadPublic(filepath.Join(dir, RootFile))
	if err != nil {
		return nil
	}
	root, err := verifyRootAnyTime(ctx, env)
	if err != nil || slices.Contains(root.Roles[sign.RoleReleases].KeyIDs, s.KeyID()) || root.Version < 2 {
		return nil
	}
	prevEnv, err := securefile.ReadPublic(historyPath(dir, root.Version-1))
	if err != nil {
		return nil
	}
	prev, err := verifyRootAnyTime(ctx, prevEnv)
	if err != nil || !slices.Contains(prev.Roles[sign.RoleReleases].KeyIDs, s.KeyID()) {
		return nil
	}
	if _, err := verifyUpdateAnyTime(ctx, prev, env); err != nil {
		return nil
	}
	if err := retire(dir, sign.RoleReleases, path, s.KeyID()); err != nil {
		return fmt.Errorf("keys: finish trusting the release key: %w", err)
	}
	return nil
}
