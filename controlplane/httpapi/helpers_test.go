package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"attache.dev/attache/controlplane/httpapi"
	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/plans"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/sign"
)

var (
	testCAKey     = [32]byte{1, 2, 3}
	testTrustRoot = [32]byte{4, 5, 6}
)

// clock is a settable time source shared by the server and the test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// lockedBuffer collects server logs for the no-secrets check.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// env is a real ops API on a real SQLite store, with one token per role.
type env struct {
	t        *testing.T
	store    store.Store
	srv      *httptest.Server
	clock    *clock
	logs     *lockedBuffer
	keys     *keys.Material
	admin    string
	operator string
	auditor  string
	nudges   nudgeCounter
	// releaseKey is the release key the trust root lists.
	releaseKey *sign.Signer
}

// nudgeCounter counts the API's nudges of the rollout driver.
type nudgeCounter struct{ n atomic.Int64 }

func (c *nudgeCounter) Nudge() { c.n.Add(1) }

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "cp.db"), nil)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })

	e := &env{t: t, store: st, clock: &clock{t: time.Now().UTC().Truncate(time.Second)}, logs: &lockedBuffer{}}
	e.keys, err = keys.LoadOrCreate(ctx, filepath.Join(dir, "keys"), "attache.test", e.clock.Now())
	if err != nil {
		t.Fatalf("keys: %v", err)
	}
	pemKey, err := os.ReadFile(filepath.Join(dir, "keys", keys.ReleaseKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if e.releaseKey, err = sign.ParsePKCS8PEM(pemKey); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h, err := httpapi.New(httpapi.Config{
		Store:           st,
		Logger:          logger,
		TrustDomain:     "attache.test",
		AgentAddr:       "cp.attache.test:7444",
		CAKeySHA256:     func() [32]byte { return testCAKey },
		TrustRootSHA256: func() [32]byte { return testTrustRoot },
		Now:             e.clock.Now,
		Plans: plans.New(plans.Config{Store: st, Keys: func() *keys.Material { return e.keys },
			Logger: logger, Now: e.clock.Now}),
		ReleaseRoot: func() *sign.Root { return e.keys.Root },
		Rollouts:    &e.nudges,
	})
	if err != nil {
		t.Fatalf("httpapi.New: %v", err)
	}
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)

	tokenFile := filepath.Join(dir, "admin.token")
	created, err := httpapi.Bootstrap(ctx, st, tokenFile, e.clock.Now())
	if err != nil || !created {
		t.Fatalf("Bootstrap = %v, %v", created, err)
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	e.admin = strings.TrimSpace(string(b))
	e.operator = e.mintAPIToken("ops", "operator")
	e.auditor = e.mintAPIToken("reviewer", "auditor")
	return e
}

func (e *env) mintAPIToken(name, role string) string {
	e.t.Helper()
	r := e.do("POST", "/v1/apitokens", e.admin, `{"name":"`+name+`","role":"`+role+`"}`)
	r.wantStatus(http.StatusCreated)
	return r.json["token"].(string)
}

type response struct {
	t      *testing.T
	status int
	header http.Header
	raw    []byte
	json   map[string]any
}

func (r response) wantStatus(want int) response {
	r.t.Helper()
	if r.status != want {
		r.t.Fatalf("status = %d, want %d; body: %s", r.status, want, r.raw)
	}
	return r
}

func (r response) wantError(status int, contains string) response {
	r.t.Helper()
	r.wantStatus(status)
	msg, _ := r.json["error"].(string)
	if !strings.Contains(msg, contains) {
		r.t.Fatalf("error = %q, want it to contain %q", msg, contains)
	}
	if id := r.header.Get("X-Request-Id"); id == "" || r.json["request_id"] != id {
		r.t.Fatalf("request_id = %v, X-Request-Id = %q; want equal and set", r.json["request_id"], id)
	}
	return r
}

// do sends a raw request; body "" sends none.
func (e *env) do(method, path, token, body string) response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := response{t: e.t, status: resp.StatusCode, header: resp.Header, raw: raw}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		e.t.Fatalf("%s %s: Content-Type = %q, want application/json", method, path, ct)
	}
	_ = json.Unmarshal(raw, &r.json) // lists decode into typed values where needed
	return r
}

// audit returns the whole trail, checking its chain as it goes.
func (e *env) audit() []auditlog.Record {
	e.t.Helper()
	ctx := context.Background()
	recs, err := e.store.ListAudit(ctx, store.AuditFilter{Limit: 1000})
	if err != nil {
		e.t.Fatal(err)
	}
	seq, hash, err := e.store.AuditHead(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if p := auditlog.Verify(recs, 0, auditlog.GenesisHash, seq, hash); p != nil {
		e.t.Fatalf("audit chain: %v", p)
	}
	return recs
}

// lastAudit is the newest audit record.
func (e *env) lastAudit() auditlog.Record {
	e.t.Helper()
	recs := e.audit()
	if len(recs) == 0 {
		e.t.Fatal("audit trail is empty")
	}
	return recs[len(recs)-1]
}
