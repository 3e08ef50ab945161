// Package httpapitest runs the real ops API on a real SQLite store in a
// test's temp directory, with real signing keys and plan submission, for
// tests of the API client, the CLI and anything else that needs a live ops
// API.
//
// Imported by tests only.
package httpapitest

import (
	"context"
	"encoding/pem"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/httpapi"
	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/plans"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/release"
	"attache.dev/attache/internal/sign"
)

// Pins the server puts into join tokens.
var (
	CAKeySHA256     = [32]byte{0xca}
	TrustRootSHA256 = [32]byte{0x1e}
)

const (
	TrustDomain = "attache.test"
	AgentAddr   = "127.0.0.1:7444"
)

// Server is a running ops API.
type Server struct {
	URL        string
	AdminToken string // the bootstrap admin token
	Store      store.Store
	Keys       *keys.Material // signs the plans submitted to it
	CACertPEM  []byte         // NewTLS only: the certificate to trust
	// ReleaseSigner is the release key the server's trust root lists (the
	// placeholder keys.LoadOrCreate writes), for signing test releases.
	ReleaseSigner *sign.Signer
}

// New starts a plain-HTTP server that lives until the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	return start(t, false)
}

// NewTLS starts an HTTPS server with a self-signed certificate, given in
// CACertPEM.
func NewTLS(t testing.TB) *Server {
	t.Helper()
	return start(t, true)
}

func start(t testing.TB, useTLS bool) *Server {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "cp.db"), nil)
	if err != nil {
		t.Fatalf("httpapitest: store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	km, err := keys.LoadOrCreate(ctx, filepath.Join(dir, "keys"), TrustDomain, time.Now())
	if err != nil {
		t.Fatalf("httpapitest: keys: %v", err)
	}
	pemKey, err := os.ReadFile(filepath.Join(dir, "keys", keys.ReleaseKeyFile))
	if err != nil {
		t.Fatalf("httpapitest: release key: %v", err)
	}
	relSigner, err := sign.ParsePKCS8PEM(pemKey)
	if err != nil {
		t.Fatalf("httpapitest: release key: %v", err)
	}
	h, err := httpapi.New(httpapi.Config{
		Store:           st,
		Logger:          slog.New(slog.DiscardHandler),
		TrustDomain:     TrustDomain,
		AgentAddr:       AgentAddr,
		CAKeySHA256:     func() [32]byte { return CAKeySHA256 },
		TrustRootSHA256: func() [32]byte { return TrustRootSHA256 },
		Plans:           plans.New(plans.Config{Store: st, Keys: func() *keys.Material { return km }}),
		ReleaseRoot:     func() *sign.Root { return km.Root },
	})
	if err != nil {
		t.Fatalf("httpapitest: %v", err)
	}
	srv := httptest.NewUnstartedServer(h)
	var caPEM []byte
	if useTLS {
		srv.StartTLS()
		caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)

	path := filepath.Join(dir, "admin.token")
	if _, err := httpapi.Bootstrap(ctx, st, path, time.Now()); err != nil {
		t.Fatalf("httpapitest: bootstrap: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("httpapitest: %v", err)
	}
	return &Server{URL: srv.URL, AdminToken: strings.TrimSpace(string(b)), Store: st, Keys: km, CACertPEM: caPEM, ReleaseSigner: relSigner}
}

// SignRelease parses, validates and signs a release document with the
// server's release key and returns the envelope.
func (s *Server) SignRelease(t testing.TB, yaml string) []byte {
	t.Helper()
	r, err := release.ParseYAML([]byte(yaml))
	if err != nil {
		t.Fatalf("httpapitest: release: %v", err)
	}
	env, err := release.Sign(context.Background(), r, s.ReleaseSigner)
	if err != nil {
		t.Fatalf("httpapitest: sign release: %v", err)
	}
	return env
}
