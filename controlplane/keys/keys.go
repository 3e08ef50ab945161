// Package keys loads, and on first start creates, the control plane's signing
// keys and its signed trust root in the data directory, rotates the plans
// and root keys, and keeps every version of the trust root so that agents
// pinned to an older one can follow the rotations.
//
// Files (keys mode 0600, everything written atomically):
//
//	root.key       PKCS#8 PEM ed25519 key of the root role
//	plans.key      PKCS#8 PEM ed25519 key of the plans role
//	release.key    PKCS#8 PEM ed25519 key of the releases role: a placeholder
//	               created on first start, only its public half is used; it
//	               is retired by TrustReleaseKey (`attache-controlplane keys
//	               trust-release-key`), after which the releases role lists
//	               the vendor's own release key and the control plane holds
//	               no release private key
//	root.json      the current DSSE-signed trust root (sign.Root) listing those keys
//	roots/<v>.json every version of the trust root, root.json included
//	retired/<role>-<keyid>.key
//	               keys a rotation replaced. They are no longer trusted by
//	               the current root, but an agent that has not yet followed
//	               the rotation still trusts them: destroy them (shred -u)
//	               once you no longer need them, and at once if the key was
//	               rotated because it leaked.
//	keys.lock      taken (flock) while the files are read or changed, so a
//	               rotation by the CLI and a reload by the running control
//	               plane never see each other's half-done work
//
// A rotation (RotatePlans, RotateRoot) writes, in this order:
//
//  1. <role>.key.next, the new key;
//  2. roots/<v+1>.json, the new root;
//  3. root.json, the new root: the commit point;
//  4. renames <role>.key to retired/<role>-<old keyid>.key;
//  5. renames <role>.key.next to <role>.key.
//
// Trusting the vendor's release key (TrustReleaseKey) writes
// roots/<v+1>.json, then root.json (the commit point), then moves
// release.key to retired/releases-<old keyid>.key.
//
// Every load first finishes or undoes a rotation interrupted by a crash: a
// <role>.key.next whose key root.json lists for that role is a committed
// rotation, and steps 4 and 5 are completed; any other <role>.key.next is an
// uncommitted one, and it is deleted together with roots/ files newer than
// root.json. A release.key that root.json no longer lists but the version
// before it did is the placeholder of a committed TrustReleaseKey, and is
// retired. Nothing an agent could have seen is lost either way: roots are
// only sent to agents from root.json and older.
//
// Imported by the control plane only.
package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"attache.dev/attache/internal/securefile"
	"attache.dev/attache/internal/sign"
)

// File and directory names inside the data directory.
const (
	RootKeyFile    = "root.key"
	PlansKeyFile   = "plans.key"
	ReleaseKeyFile = "release.key"
	RootFile       = "root.json"
	RootsDir       = "roots"   // roots/<version>.json
	RetiredDir     = "retired" // retired/<role>-<keyid>.key
	LockFile       = "keys.lock"

	// NextSuffix marks a key file written by a rotation that has not
	// finished yet (plans.key.next, root.key.next).
	NextSuffix = ".next"
)

// RootLifetime is how long a newly created or rotated trust root is valid.
const RootLifetime = 365 * 24 * time.Hour

// Material is the control plane's key material.
type Material struct {
	RootSigner *sign.Signer
	PlanSigner *sign.Signer
	// ReleaseKey is the public key of the releases role (its first key):
	// the placeholder in release.key, or, after TrustReleaseKey, the
	// vendor's release key, whose private half the control plane never
	// holds.
	ReleaseKey   sign.Key
	Root         *sign.Root
	RootEnvelope []byte

	// chain holds the signed envelopes of versions chainFrom … Root.Version,
	// oldest first; the last one is RootEnvelope.
	chain     [][]byte
	chainFrom int
}

// RootHash returns the sha256 of the signed trust root, the pin that join
// tokens carry.
func (m *Material) RootHash() [32]byte { return sign.RootHash(m.RootEnvelope) }

// RootChain returns the signed envelopes of the trust root versions after+1
// through the current one, oldest first: what an agent pinned to version
// after must follow (sign.VerifyRootUpdate, one at a time) to reach the
// current root. It returns nil when after is the current version or newer.
// If the history in roots/ does not reach back to after+1 (a data directory
// whose older versions were deleted), it starts at the oldest version kept,
// which such an agent will refuse as a root rotation it cannot follow.
//
// The envelopes were read and verified when m was loaded; callers must not
// modify them.
func (m *Material) RootChain(after int) [][]byte {
	if m == nil || m.Root == nil {
		return nil
	}
	chain, from := m.chain, m.chainFrom
	if len(chain) == 0 {
		chain, from = [][]byte{m.RootEnvelope}, m.Root.Version
	}
	start := max(after+1, from)
	if start > m.Root.Version {
		return nil
	}
	return slices.Clone(chain[start-from:])
}

// RootByHash returns the signed envelope, among the versions RootChain(0)
// returns, whose sha256 (RootHash) is sum. Enrollment needs it: a join token
// made before a rotation pins the hash of an older root, and the agent
// enrolls with that root and then follows the chain on its first session.
func (m *Material) RootByHash(sum [32]byte) ([]byte, bool) {
	for _, env := range m.RootChain(0) {
		if sign.RootHash(env) == sum {
			return env, true
		}
	}
	return nil, false
}

// LoadOrCreate loads root.key, plans.key, release.key and root.json from dir,
// or creates them all on first start (dir holds none of them): one key per
// role, threshold 1, version 1, expiring RootLifetime after now, for
// trustDomain. It refuses a key file readable by group or others, a
// directory holding only some of the files, and a root.json that does not
// verify, has expired, is for another trust domain or does not list the keys
// on disk.
//
// It first finishes or undoes a rotation interrupted by a crash (see the
// package documentation), writes roots/<version>.json for the current root
// if it is missing (a data directory from before root history was kept), and
// verifies every older version in roots/ as an update of the one before:
// a history that does not verify is refused; the history simply starts later
// if older versions are missing.
func LoadOrCreate(ctx context.Context, dir, trustDomain string, now time.Time) (*Material, error) {
	if err := checkTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	return open(ctx, dir, trustDomain, now, openOpts{create: true})
}

// LoadExisting loads the key material of an existing data directory, like
// LoadOrCreate but for tooling (attache-controlplane keys show): it never
// creates keys, it accepts a root that has expired (Root.Expires tells), and
// an empty trustDomain accepts the trust domain root.json names. Like
// LoadOrCreate it may finish an interrupted rotation and backfill roots/.
// The control plane itself uses LoadOrCreate, which refuses an expired root.
func LoadExisting(ctx context.Context, dir, trustDomain string, now time.Time) (*Material, error) {
	if trustDomain != "" {
		if err := checkTrustDomain(trustDomain); err != nil {
			return nil, err
		}
	}
	return open(ctx, dir, trustDomain, now, openOpts{allowExpired: true})
}

func checkTrustDomain(trustDomain string) error {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil || td.Name() != trustDomain {
		return fmt.Errorf("keys: invalid trust domain %q: want a bare SPIFFE trust domain name", trustDomain)
	}
	return nil
}

type openOpts struct {
	create       bool // create the key material in an empty directory
	allowExpired bool // accept an expired current root
}

// open takes the lock and loads (or creates) the material.
func open(ctx context.Context, dir, trustDomain string, now time.Time, o openOpts) (*Material, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if o.create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("keys: create data dir: %w", err)
		}
	} else if err := checkExisting(dir); err != nil {
		return nil, err
	}
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return openLocked(ctx, dir, trustDomain, now, o)
}

// keyFiles are the files a data directory with key material holds;
// requiredFiles those it must hold (release.key is gone once the vendor's
// release key is trusted).
var (
	keyFiles      = []string{RootKeyFile, PlansKeyFile, ReleaseKeyFile, RootFile}
	requiredFiles = []string{RootKeyFile, PlansKeyFile, RootFile}
)

// checkExisting refuses, before anything is written there (not even the
// lock file), a directory that does not exist or holds none of keyFiles.
func checkExisting(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("keys: data dir: %w", err)
	}
	for _, name := range keyFiles {
		if ok, err := securefile.Exists(filepath.Join(dir, name)); ok || err != nil {
			return err
		}
	}
	return fmt.Errorf("keys: %s holds no signing keys (%s); start the control plane once to create them",
		dir, strings.Join(keyFiles, ", "))
}

// openLocked is open for a caller that holds the lock.
func openLocked(ctx context.Context, dir, trustDomain string, now time.Time, o openOpts) (*Material, error) {
	if err := recoverRotation(ctx, dir); err != nil {
		return nil, err
	}
	if err := recoverReleaseTrust(ctx, dir); err != nil {
		return nil, err
	}
	var present, missing []string
	for _, name := range keyFiles {
		_, err := os.Lstat(filepath.Join(dir, name))
		switch {
		case err == nil:
			present = append(present, name)
		case errors.Is(err, fs.ErrNotExist):
			if slices.Contains(requiredFiles, name) {
				missing = append(missing, name)
			}
		default:
			return nil, fmt.Errorf("keys: %w", err)
		}
	}
	switch {
	case len(present) == 0 && o.create:
		return create(ctx, dir, trustDomain, now)
	case len(present) == 0:
		return nil, fmt.Errorf("keys: %s holds no signing keys (%s); start the control plane once to create them",
			dir, strings.Join(keyFiles, ", "))
	case len(missing) == 0:
		return load(ctx, dir, trustDomain, now, o.allowExpired)
	default:
		return nil, fmt.Errorf("keys: %s holds %s but not %s; restore the missing files from a backup (or, for a control plane that never enrolled an agent, remove them all to start over)",
			dir, strings.Join(present, ", "), strings.Join(missing, ", "))
	}
}

func create(ctx context.Context, dir, trustDomain string, now time.Time) (*Material, error) {
	var ss [3]*sign.Signer
	for i := range ss {
		s, err := sign.GenerateSigner()
		if err != nil {
			return nil, fmt.Errorf("keys: %w", err)
		}
		ss[i] = s
	}
	rootS, planS, relS := ss[0], ss[1], ss[2]
	root := &sign.Root{
		Type:        sign.RootType,
		Version:     1,
		TrustDomain: trustDomain,
		Expires:     now.Add(RootLifetime).UTC().Truncate(time.Second),
		Keys: map[string]sign.Key{
			rootS.KeyID(): rootS.PublicKey(),
			planS.KeyID(): planS.PublicKey(),
			relS.KeyID():  relS.PublicKey(),
		},
		Roles: map[string]sign.RoleKeys{
			sign.RoleRoot:     {KeyIDs: []string{rootS.KeyID()}, Threshold: 1},
			sign.RolePlans:    {KeyIDs: []string{planS.KeyID()}, Threshold: 1},
			sign.RoleReleases: {KeyIDs: []string{relS.KeyID()}, Threshold: 1},
		},
	}
	env, err := sign.SignRoot(ctx, root, rootS)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	// Keys first, root.json last: root.json present means creation finished.
	for _, f := range []struct {
		name string
		s    *sign.Signer
	}{{RootKeyFile, rootS}, {PlansKeyFile, planS}, {ReleaseKeyFile, relS}} {
		if err := writeKey(filepath.Join(dir, f.name), f.s); err != nil {
			return nil, err
		}
	}
	if err := writeHistory(dir, root.Version, env); err != nil {
		return nil, err
	}
	if err := securefile.Write(filepath.Join(dir, RootFile), env); err != nil {
		return nil, err
	}
	return &Material{
		RootSigner:   rootS,
		PlanSigner:   planS,
		ReleaseKey:   relS.PublicKey(),
		Root:         root,
		RootEnvelope: env,
		chain:        [][]byte{env},
		chainFrom:    root.Version,
	}, nil
}

func load(ctx context.Context, dir, trustDomain string, now time.Time, allowExpired bool) (*Material, error) {
	rootS, err := loadKey(dir, RootKeyFile)
	if err != nil {
		return nil, err
	}
	planS, err := loadKey(dir, PlansKeyFile)
	if err != nil {
		return nil, err
	}
	// release.key is optional: the placeholder, until the vendor's release
	// key is trusted.
	relS, err := loadKey(dir, ReleaseKeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		relS, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	env, err := securefile.ReadPublic(filepath.Join(dir, RootFile))
	if err != nil {
		return nil, err
	}
	root, err := sign.VerifyRoot(ctx, env, now)
	if allowExpired && errors.Is(err, sign.ErrRootExpired) {
		root, err = verifyRootAnyTime(ctx, env)
	}
	if err != nil {
		return nil, fmt.Errorf("keys: %s: %w", filepath.Join(dir, RootFile), err)
	}
	if trustDomain != "" && root.TrustDomain != trustDomain {
		return nil, fmt.Errorf("keys: %s is for trust domain %q, but the control plane is configured for %q",
			filepath.Join(dir, RootFile), root.TrustDomain, trustDomain)
	}
	var errs []error
	for _, c := range []struct {
		role, file string
		s          *sign.Signer
	}{
		{sign.RoleRoot, RootKeyFile, rootS},
		{sign.RolePlans, PlansKeyFile, planS},
		{sign.RoleReleases, ReleaseKeyFile, relS},
	} {
		if c.s == nil {
			continue
		}
		if !slices.Contains(root.Roles[c.role].KeyIDs, c.s.KeyID()) {
			errs = append(errs, fmt.Errorf("%s role does not list the key in %s (%s)", c.role, c.file, c.s.KeyID()))
		}
	}
	// The control plane signs plans and root updates alone.
	for _, role := range []string{sign.RoleRoot, sign.RolePlans} {
		if th := root.Roles[role].Threshold; th != 1 {
			errs = append(errs, fmt.Errorf("%s role threshold is %d, but this control plane holds one %s key", role, th, role))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("keys: %s does not match the keys in %s: %w", RootFile, dir, err)
	}
	chain, from, err := loadHistory(ctx, dir, root, env)
	if err != nil {
		return nil, err
	}
	return &Material{
		RootSigner:   rootS,
		PlanSigner:   planS,
		ReleaseKey:   root.Keys[root.Roles[sign.RoleReleases].KeyIDs[0]],
		Root:         root,
		RootEnvelope: env,
		chain:        chain,
		chainFrom:    from,
	}, nil
}

// loadHistory returns the envelopes of the versions in roots/ that lead, each
// a verified update of the one before, to cur (whose envelope is env),
// oldest first, and the version of the first. It writes roots/<cur>.json if
// missing and refuses one that differs from root.json.
func loadHistory(ctx context.Context, dir string, cur *sign.Root, env []byte) ([][]byte, int, error) {
	p := historyPath(dir, cur.Version)
	data, err := securefile.ReadPublic(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := writeHistory(dir, cur.Version, env); err != nil {
			return nil, 0, err
		}
	case err != nil:
		return nil, 0, fmt.Errorf("keys: %w", err)
	case string(data) != string(env):
		return nil, 0, fmt.Errorf("keys: %s differs from %s, which is the current trust root; restore %s from a backup, or remove it to have it written again from %s",
			p, filepath.Join(dir, RootFile), p, RootFile)
	}
	rev := [][]byte{env} // newest first
	next := cur
	for v := cur.Version - 1; v >= 1; v-- {
		p := historyPath(dir, v)
		data, err := securefile.ReadPublic(p)
		if errors.Is(err, fs.ErrNotExist) {
			break // the history starts at v+1
		}
		if err != nil {
			return nil, 0, fmt.Errorf("keys: %w", err)
		}
		r, err := verifyRootAnyTime(ctx, data)
		if err != nil {
			return nil, 0, fmt.Errorf("keys: %s: %w", p, err)
		}
		if r.Version != v || r.TrustDomain != cur.TrustDomain {
			return nil, 0, fmt.Errorf("keys: %s holds version %d for trust domain %q, want version %d for %q", p, r.Version, r.TrustDomain, v, cur.TrustDomain)
		}
		if _, err := verifyUpdateAnyTime(ctx, r, rev[len(rev)-1]); err != nil {
			return nil, 0, fmt.Errorf("keys: version %d in %s does not follow %s: %w", next.Version, RootsDir, p, err)
		}
		rev = append(rev, data)
		next = r
	}
	slices.Reverse(rev)
	return rev, next.Version, nil
}

func historyPath(dir string, version int) string {
	return filepath.Join(dir, RootsDir, strconv.Itoa(version)+".json")
}

func writeHistory(dir string, version int, env []byte) error {
	if err := securefile.MkdirAll(filepath.Join(dir, RootsDir)); err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	return securefile.Write(historyPath(dir, version), env)
}

// verifyRootAnyTime is sign.VerifyRoot ignoring the expiry: the root's own
// signatures and structure, for a root from the history or one rotated away
// from after it expired.
func verifyRootAnyTime(ctx context.Context, env []byte) (*sign.Root, error) {
	exp, err := peekExpiry(env)
	if err != nil {
		return nil, err
	}
	return sign.VerifyRoot(ctx, env, exp.Add(-time.Nanosecond))
}

// verifyUpdateAnyTime is sign.VerifyRootUpdate ignoring next's expiry.
func verifyUpdateAnyTime(ctx context.Context, prev *sign.Root, next []byte) (*sign.Root, error) {
	exp, err := peekExpiry(next)
	if err != nil {
		return nil, err
	}
	return sign.VerifyRootUpdate(ctx, prev, next, exp.Add(-time.Nanosecond))
}

// peekExpiry reads the expiry of an unverified root envelope; the caller
// then verifies the envelope at a time before it.
func peekExpiry(env []byte) (time.Time, error) {
	var e dsse.Envelope
	if err := json.Unmarshal(env, &e); err != nil {
		return time.Time{}, fmt.Errorf("decode trust root envelope: %w", err)
	}
	payload, err := e.DecodeB64Payload()
	if err != nil {
		return time.Time{}, fmt.Errorf("decode trust root envelope: %w", err)
	}
	var r struct {
		Expires time.Time `json:"expires"`
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		return time.Time{}, fmt.Errorf("decode trust root: %w", err)
	}
	if r.Expires.IsZero() {
		return time.Time{}, errors.New("trust root expires is not set")
	}
	return r.Expires, nil
}

func writeKey(path string, s *sign.Signer) error {
	pemBytes, err := s.MarshalPKCS8PEM()
	if err != nil {
		return fmt.Errorf("keys: %s: %w", path, err)
	}
	return securefile.Write(path, pemBytes)
}

func loadKey(dir, name string) (*sign.Signer, error) {
	data, err := securefile.Read(filepath.Join(dir, name))
	if err != nil {
		return nil, err
	}
	s, err := sign.ParsePKCS8PEM(data)
	if err != nil {
		return nil, fmt.Errorf("keys: %s: %w", filepath.Join(dir, name), err)
	}
	return s, nil
}
