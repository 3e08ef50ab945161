package postgres_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/postgres"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// health returns the components by name.
func health(t testing.TB, p sdk.Provider) map[string]*providerv1.ComponentHealth {
	t.Helper()
	resp, err := p.Health(t.Context())
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	out := map[string]*providerv1.ComponentHealth{}
	for _, c := range resp.GetComponents() {
		out[c.GetName()] = c
	}
	return out
}

// TestHealth: the server's version, the database and the tenants per
// model; silo databases that refuse connections make postgres/silo
// DEGRADED, with an UNHEALTHY entry for the tenant.
func TestHealth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	mustApply(t, p, step("p", "tenant.provision", "p1", map[string]any{"model": "pool"}))
	mustApply(t, p, step("b", "tenant.provision", "b1", map[string]any{"model": "bridge"}))
	mustApply(t, p, step("s", "tenant.provision", "s1", map[string]any{"model": "silo", "tenants": []any{"s1", "s2"}}))
	h := health(t, p)
	db := e.dsn[strings.LastIndex(e.dsn, "/")+1 : strings.Index(e.dsn, "?")]
	if c := h["postgres"]; c.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY ||
		!regexp.MustCompile(`^PostgreSQL \d+\.\d+, database `+db+`, 4 tenants \(pool 1, bridge 1, silo 2\)$`).MatchString(c.GetMessage()) {
		t.Errorf("postgres: %s %q", c.GetStatus(), c.GetMessage())
	}
	if c := h["postgres/silo"]; c.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY || c.GetMessage() != "2 silo databases accept connections" {
		t.Errorf("postgres/silo: %s %q", c.GetStatus(), c.GetMessage())
	}
	mustExec(t, e.conn(t, "", ""), "ALTER DATABASE "+e.name("s2")+" ALLOW_CONNECTIONS false")
	h = health(t, p)
	if c := h["postgres/silo"]; c.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_DEGRADED || c.GetMessage() != "1 of 2 silo databases do not accept connections: s2" {
		t.Errorf("postgres/silo: %s %q", c.GetStatus(), c.GetMessage())
	}
	if c := h["postgres/silo/s2"]; c.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY || c.GetTenant() != "s2" || c.GetMessage() == "" {
		t.Errorf("postgres/silo/s2: %v", c)
	}
	if len(h) != 3 {
		t.Errorf("components: %v", h)
	}
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// unreachable is a provider whose DSN (with a password) points at a closed
// port.
func unreachable(t *testing.T, password string) (*postgres.Provider, string) {
	t.Helper()
	dir := t.TempDir()
	dsn := fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/app?sslmode=disable", password, closedPort(t))
	if err := os.WriteFile(filepath.Join(dir, "dsn"), []byte(dsn), 0o600); err != nil {
		t.Fatal(err)
	}
	p := postgres.New(quiet(), "test")
	t.Cleanup(p.Close)
	cfg, _ := sdk.ConfigJSON(postgres.Config{DSNFile: filepath.Join(dir, "dsn"), ConnectTimeout: "2s"})
	configure(t, p, cfg) // an unreachable server does not fail Configure
	return p, dsn
}

// TestHealthUnreachable: UNHEALTHY with the connection error, which names
// neither the DSN nor its password; actions and Usage are Unavailable, as
// clean.
func TestHealthUnreachable(t *testing.T) {
	t.Parallel()
	const password = "Sup3r-S3cret-pw"
	p, dsn := unreachable(t, password)
	h := health(t, p)
	c := h["postgres"]
	if c.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY || !strings.Contains(c.GetMessage(), "connect") {
		t.Errorf("postgres: %s %q", c.GetStatus(), c.GetMessage())
	}
	_, err := p.Apply(t.Context(), step("p", "tenant.provision", "acme", map[string]any{"model": "bridge"}), nil)
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Apply: %v, want Unavailable", err)
	}
	_, uerr := p.Usage(t.Context(), &providerv1.UsageRequest{})
	_, perr := p.Plan(t.Context(), step("p", "tenant.erase", "acme", map[string]any{"model": "silo"}))
	for what, msg := range map[string]string{"health": c.GetMessage(), "apply": fmt.Sprint(err), "usage": fmt.Sprint(uerr), "plan": fmt.Sprint(perr)} {
		t.Logf("%s: %s", what, msg)
		if strings.Contains(msg, password) || strings.Contains(msg, dsn) || strings.Contains(msg, "postgres://") {
			t.Errorf("%s message leaks the DSN or its password: %q", what, msg)
		}
	}
}

// TestHealthUnconfigured: not configured is unhealthy, not an error.
func TestHealthUnconfigured(t *testing.T) {
	h := health(t, postgres.New(quiet(), "test"))
	if c := h["postgres"]; c.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY || c.GetMessage() != "not configured" {
		t.Errorf("%v", c)
	}
}
