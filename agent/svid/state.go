// Package svid keeps the agent's identity in its state directory and keeps it
// fresh: enrollment with a join token (the control plane verified against the
// CA pinned in the token before the token is sent), and renewal of the
// X.509-SVID before half its lifetime, swapping it in without dropping the
// session.
//
// State directory (every file mode 0600, directory 0700):
//
//	agent.json       control plane address, SPIFFE IDs, trust domain
//	svid.pem         the SVID chain and its private key, in one file so a
//	                 renewal replaces both atomically
//	bundle.pem       the trust domain's CA certificates
//	trust-root.json  the signed plan trust root received at enrollment
//
// Only agent packages import svid.
package svid

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/securefile"
)

// File names in the state directory.
const (
	MetaFile      = "agent.json"
	SVIDFile      = "svid.pem"
	BundleFile    = "bundle.pem"
	TrustRootFile = "trust-root.json"
)

// ErrNotEnrolled means the state directory holds no identity yet.
var ErrNotEnrolled = errors.New("agent is not enrolled: run with --token")

// Meta is agent.json.
type Meta struct {
	ControlPlaneAddr string    `json:"control_plane_addr"`
	TrustDomain      string    `json:"trust_domain"`
	SPIFFEID         string    `json:"spiffe_id"`
	ControlPlaneID   string    `json:"control_plane_id"`
	EnrolledAt       time.Time `json:"enrolled_at"`
}

// State is the agent's identity.
type State struct {
	Dir       string
	Meta      Meta
	ID        spiffeid.ID
	ServerID  spiffeid.ID
	Source    *identity.Source
	TrustRoot []byte
}

// Load reads the identity from dir. ErrNotEnrolled if there is none.
func Load(dir string) (*State, error) {
	metaPath := filepath.Join(dir, MetaFile)
	mb, err := securefile.Read(metaPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, fmt.Errorf("agent state: %w", err)
	}
	var m Meta
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("agent state %s: %w", metaPath, err)
	}
	td, err := spiffeid.TrustDomainFromString(m.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("agent state %s: trust domain: %w", metaPath, err)
	}
	id, err := spiffeid.FromString(m.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("agent state %s: spiffe id: %w", metaPath, err)
	}
	serverID, err := spiffeid.FromString(m.ControlPlaneID)
	if err != nil {
		return nil, fmt.Errorf("agent state %s: control plane id: %w", metaPath, err)
	}
	svidPEM, err := securefile.Read(filepath.Join(dir, SVIDFile))
	if err != nil {
		return nil, fmt.Errorf("agent state: %w", err)
	}
	sv, err := parseSVIDPEM(svidPEM)
	if err != nil {
		return nil, fmt.Errorf("agent state %s: %w", SVIDFile, err)
	}
	if sv.ID != id {
		return nil, fmt.Errorf("agent state: %s holds %s, agent.json says %s", SVIDFile, sv.ID, id)
	}
	bundlePEM, err := securefile.Read(filepath.Join(dir, BundleFile))
	if err != nil {
		return nil, fmt.Errorf("agent state: %w", err)
	}
	bundle, err := x509bundle.Parse(td, bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("agent state %s: %w", BundleFile, err)
	}
	root, err := securefile.Read(filepath.Join(dir, TrustRootFile))
	if err != nil {
		return nil, fmt.Errorf("agent state: %w", err)
	}
	return &State{Dir: dir, Meta: m, ID: id, ServerID: serverID, Source: identity.NewSource(sv, bundle), TrustRoot: root}, nil
}

// TrustDomain of the agent.
func (s *State) TrustDomain() spiffeid.TrustDomain { return s.ID.TrustDomain() }

// Leaf is the current SVID certificate.
func (s *State) Leaf() *x509.Certificate {
	sv, err := s.Source.GetX509SVID()
	if err != nil {
		return nil
	}
	return sv.Certificates[0]
}

// SaveTrustRoot replaces the pinned trust root with env: it writes
// trust-root.json atomically with mode 0600 (when the state has a Dir), then
// sets TrustRoot. The caller must have verified env as the rotation of the
// current root (planverify.FollowRoot, or the final root of a chain
// verified with planverify.FollowRootChain). Not safe for concurrent use with
// other readers or writers of TrustRoot; the agent's plan runner is its
// only user after startup.
func (s *State) SaveTrustRoot(env []byte) error {
	if len(env) == 0 {
		return errors.New("save trust root: empty envelope")
	}
	if s.Dir != "" {
		if err := securefile.Write(filepath.Join(s.Dir, TrustRootFile), env); err != nil {
			return fmt.Errorf("save trust root: %w", err)
		}
	}
	s.TrustRoot = bytes.Clone(env)
	return nil
}

// save writes every file of the state; the metadata last, so a crash midway
// leaves a directory that is still "not enrolled".
func (s *State) save() error {
	sv, err := s.Source.GetX509SVID()
	if err != nil {
		return err
	}
	if err := s.saveSVID(sv, s.Source.Bundle()); err != nil {
		return err
	}
	if err := securefile.Write(filepath.Join(s.Dir, TrustRootFile), s.TrustRoot); err != nil {
		return err
	}
	mb, err := json.MarshalIndent(s.Meta, "", "  ")
	if err != nil {
		return err
	}
	return securefile.Write(filepath.Join(s.Dir, MetaFile), mb)
}

func (s *State) saveSVID(sv *x509svid.SVID, bundle *x509bundle.Bundle) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(sv.PrivateKey)
	if err != nil {
		return err
	}
	var out []byte
	for _, c := range sv.Certificates {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
	if err := securefile.Write(filepath.Join(s.Dir, SVIDFile), out); err != nil {
		return err
	}
	if bundle != nil {
		var bp []byte
		for _, c := range bundle.X509Authorities() {
			bp = append(bp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return securefile.Write(filepath.Join(s.Dir, BundleFile), bp)
	}
	return nil
}

func parseSVIDPEM(b []byte) (*x509svid.SVID, error) {
	var certs, key []byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "CERTIFICATE":
			certs = append(certs, pem.EncodeToMemory(blk)...)
		case "PRIVATE KEY":
			key = pem.EncodeToMemory(blk)
		}
	}
	return x509svid.Parse(certs, key)
}

// svidFrom builds an SVID from a chain the control plane returned and the
// key the agent generated, checking they belong together.
func svidFrom(chainDER [][]byte, key crypto.Signer) (*x509svid.SVID, error) {
	chain, err := identity.ParseChain(chainDER)
	if err != nil {
		return nil, err
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return nil, err
	}
	if k, ok := chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(key.Public()) {
		return nil, errors.New("issued certificate is not for the agent's key")
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}
