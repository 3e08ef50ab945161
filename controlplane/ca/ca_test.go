package ca

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"attache.dev/attache/internal/identity"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestCreateThenLoad(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	a, err := LoadOrCreate(dir, td, now)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := LoadOrCreate(dir, td, now)
	if err != nil {
		t.Fatal(err)
	}
	if a.KeySHA256() != b.KeySHA256() {
		t.Fatal("reloaded CA has a different key")
	}
	if _, err := LoadOrCreate(dir, spiffeid.RequireTrustDomainFromString("other.org"), now); err == nil || !strings.Contains(err.Error(), "not trust domain") {
		t.Fatalf("loading for another trust domain: %v", err)
	}
	if err := os.Chmod(filepath.Join(dir, KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(dir, td, now); err == nil || !strings.Contains(err.Error(), "accessible by group or others") {
		t.Fatalf("world-readable CA key accepted: %v", err)
	}
}

func TestIssueFromCSR(t *testing.T) {
	now := time.Now()
	a, err := LoadOrCreate(t.TempDir(), td, now)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	id, _ := identity.AgentID(td, "acme", "a1")
	chain, err := a.IssueFromCSR(csr, id, 30*time.Second, now)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := x509svid.Verify(chain, a.Bundle())
	if err != nil {
		t.Fatalf("issued SVID does not verify: %v", err)
	}
	if got != id {
		t.Fatalf("SVID id %s, want %s", got, id)
	}
	if life := chain[0].NotAfter.Sub(now); life > 31*time.Second || life < 29*time.Second {
		t.Fatalf("SVID lifetime %s, want 30s", life)
	}
	if !key.PublicKey.Equal(chain[0].PublicKey) {
		t.Fatal("SVID is not for the CSR's key")
	}

	foreign := spiffeid.RequireFromSegments(spiffeid.RequireTrustDomainFromString("evil.org"), "x")
	if _, err := a.IssueFromCSR(csr, foreign, time.Minute, now); err == nil {
		t.Fatal("issued an SVID outside the trust domain")
	}
	if _, err := a.IssueFromCSR([]byte("junk"), id, time.Minute, now); err == nil {
		t.Fatal("issued for a junk CSR")
	}
}

func TestIssueServerHasHosts(t *testing.T) {
	now := time.Now()
	a, _ := LoadOrCreate(t.TempDir(), td, now)
	sv, err := a.IssueServer(identity.ControlPlaneID(td), []string{"localhost", "127.0.0.1"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	leaf := sv.Certificates[0]
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("localhost"); err != nil {
		t.Fatal(err)
	}
}
