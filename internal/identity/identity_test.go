package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestAgentIDRoundTrip(t *testing.T) {
	id, err := AgentID(td, "acme", "0123abcd")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := id.String(), "spiffe://example.org/tenant/acme/agent/0123abcd"; got != want {
		t.Fatalf("AgentID = %s, want %s", got, want)
	}
	tenant, agent, err := ParseAgentID(td, id)
	if err != nil || tenant != "acme" || agent != "0123abcd" {
		t.Fatalf("ParseAgentID = %q, %q, %v", tenant, agent, err)
	}
}

func TestParseAgentIDRefuses(t *testing.T) {
	other := spiffeid.RequireTrustDomainFromString("evil.org")
	for _, tc := range []struct {
		name string
		id   spiffeid.ID
	}{
		{"other trust domain", spiffeid.RequireFromSegments(other, "tenant", "acme", "agent", "a1")},
		{"control plane", ControlPlaneID(td)},
		{"too short", spiffeid.RequireFromSegments(td, "tenant", "acme")},
		{"too long", spiffeid.RequireFromSegments(td, "tenant", "acme", "agent", "a1", "x")},
		{"wrong keyword", spiffeid.RequireFromSegments(td, "tenants", "acme", "agent", "a1")},
		{"bad tenant", spiffeid.RequireFromSegments(td, "tenant", "Acme_", "agent", "a1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := ParseAgentID(td, tc.id); !errors.Is(err, ErrNotAgent) {
				t.Fatalf("ParseAgentID(%s) = %v, want ErrNotAgent", tc.id, err)
			}
		})
	}
}

func TestAgentIDRejectsBadNames(t *testing.T) {
	for _, name := range []string{"", "-a", "a-", "A", "a_b", strings.Repeat("a", 64), "a/b", ".."} {
		if _, err := AgentID(td, name, "a1"); err == nil {
			t.Errorf("AgentID accepted tenant %q", name)
		}
	}
}

func TestParseCSR(t *testing.T) {
	p256, _ := NewKey()
	good, err := NewCSR(p256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCSR(good); err != nil {
		t.Fatalf("good CSR refused: %v", err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	weakCurve, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p224)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, rsaKey)
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-5] ^= 0xff

	for _, tc := range []struct {
		name, want string
		der        []byte
	}{
		{"empty", "empty", nil},
		{"garbage", "csr", []byte("not a csr")},
		{"huge", "16 KiB", make([]byte, 17<<10)},
		{"bad signature", "csr", tampered},
		{"P-224", "curve", weakCurve},
		{"RSA", "not accepted", rsaCSR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCSR(tc.der)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseCSR = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func FuzzParseCSR(f *testing.F) {
	k, _ := NewKey()
	good, _ := NewCSR(k)
	f.Add(good)
	f.Add([]byte{0x30, 0x82, 0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ParseCSR(der)
		if err == nil && csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}
