// Package keys loads, and on first start creates, the control plane's signing
// keys and its signed trust root in the data directory.
//
// Files (all mode 0600, written atomically):
//
//	root.key     PKCS#8 PEM ed25519 key of the root role
//	plans.key    PKCS#8 PEM ed25519 key of the plans role
//	release.key  PKCS#8 PEM ed25519 key of the releases role (a placeholder
//	             until the vendor's CI holds it; only its public half is used)
//	root.json    the DSSE-signed trust root (sign.Root) listing those keys
//
// Imported by the control plane only.
package keys

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"attache.dev/attache/internal/securefile"
	"attache.dev/attache/internal/sign"
)

// File names inside the data directory.
const (
	RootKeyFile    = "root.key"
	PlansKeyFile   = "plans.key"
	ReleaseKeyFile = "release.key"
	RootFile       = "root.json"
)

// RootLifetime is how long a newly created trust root is valid.
const RootLifetime = 365 * 24 * time.Hour

// Material is the control plane's key material.
type Material struct {
	RootSigner   *sign.Signer
	PlanSigner   *sign.Signer
	ReleaseKey   sign.Key // public half only; generated placeholder key pair whose private half is written to release.key for now (the vendor's CI will own it later)
	Root         *sign.Root
	RootEnvelope []byte
}

// RootHash returns the sha256 of the signed trust root, the pin that join
// tokens carry.
func (m *Material) RootHash() [32]byte { return sign.RootHash(m.RootEnvelope) }

// LoadOrCreate loads root.key, plans.key, release.key and root.json from dir,
// or creates them all on first start (dir holds none of them): one key per
// role, threshold 1, version 1, expiring RootLifetime after now, for
// trustDomain. It refuses a key file readable by group or others, a
// directory holding only some of the files, and a root.json that does not
// verify, has expired, is for another trust domain or does not list the keys
// on disk.
func LoadOrCreate(ctx context.Context, dir, trustDomain string, now time.Time) (*Material, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil || td.Name() != trustDomain {
		return nil, fmt.Errorf("keys: invalid trust domain %q: want a bare SPIFFE trust domain name", trustDomain)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keys: create data dir: %w", err)
	}
	files := []string{RootKeyFile, PlansKeyFile, ReleaseKeyFile, RootFile}
	var present, missing []string
	for _, name := range files {
		_, err := os.Lstat(filepath.Join(dir, name))
		switch {
		case err == nil:
			present = append(present, name)
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, name)
		default:
			return nil, fmt.Errorf("keys: %w", err)
		}
	}
	switch {
	case len(present) == 0:
		return create(ctx, dir, trustDomain, now)
	case len(missing) == 0:
		return load(ctx, dir, trustDomain, now)
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
		pemBytes, err := f.s.MarshalPKCS8PEM()
		if err != nil {
			return nil, fmt.Errorf("keys: %s: %w", f.name, err)
		}
		if err := securefile.Write(filepath.Join(dir, f.name), pemBytes); err != nil {
			return nil, err
		}
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
	}, nil
}

func load(ctx context.Context, dir, trustDomain string, now time.Time) (*Material, error) {
	rootS, err := loadKey(dir, RootKeyFile)
	if err != nil {
		return nil, err
	}
	planS, err := loadKey(dir, PlansKeyFile)
	if err != nil {
		return nil, err
	}
	relS, err := loadKey(dir, ReleaseKeyFile)
	if err != nil {
		return nil, err
	}
	env, err := securefile.ReadPublic(filepath.Join(dir, RootFile))
	if err != nil {
		return nil, err
	}
	root, err := sign.VerifyRoot(ctx, env, now)
	if err != nil {
		return nil, fmt.Errorf("keys: %s: %w", filepath.Join(dir, RootFile), err)
	}
	if root.TrustDomain != trustDomain {
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
	return &Material{
		RootSigner:   rootS,
		PlanSigner:   planS,
		ReleaseKey:   relS.PublicKey(),
		Root:         root,
		RootEnvelope: env,
	}, nil
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
