package telemetry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/agent/spool"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
)

// meters is a provider whose Health and Usage answer what the test sets.
// It is served over real gRPC in-process (sdk.ServeInProcess), as the agent
// sees a plugin; only Health and Usage matter here.
type meters struct {
	mu       sync.Mutex
	samples  []*providerv1.UsageSample
	health   []*providerv1.ComponentHealth
	usageErr error
	asked    []string // the tenants of the last UsageRequest
}

func (m *meters) set(samples ...*providerv1.UsageSample) {
	m.mu.Lock()
	m.samples = samples
	m.mu.Unlock()
}

func (m *meters) Describe(context.Context) (*providerv1.DescribeResponse, error) {
	return &providerv1.DescribeResponse{Name: "meters"}, nil
}
func (m *meters) Configure(context.Context, *providerv1.ConfigureRequest) error { return nil }
func (m *meters) Plan(context.Context, *providerv1.Step) ([]*providerv1.Change, error) {
	return nil, errors.New("no actions")
}
func (m *meters) Apply(context.Context, *providerv1.Step, sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	return nil, errors.New("no actions")
}
func (m *meters) Health(context.Context) (*providerv1.HealthResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return &providerv1.HealthResponse{Components: m.health}, nil
}
func (m *meters) Usage(_ context.Context, req *providerv1.UsageRequest) (*providerv1.UsageResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.asked = req.GetTenants()
	if m.usageErr != nil {
		return nil, m.usageErr
	}
	return &providerv1.UsageResponse{Samples: m.samples}, nil
}

type provs map[string]sdk.Provider

func (p provs) Names() []string {
	var out []string
	for n := range p {
		out = append(out, n)
	}
	return out
}
func (p provs) Provider(name string) (sdk.Provider, error) {
	if v, ok := p[name]; ok {
		return v, nil
	}
	return nil, errors.New("unknown provider " + name)
}

func setup(t *testing.T, opts spool.Options, backlog int) (*Collector, *meters, *spool.Spool) {
	t.Helper()
	sp, err := spool.Open(filepath.Join(t.TempDir(), spool.FileName), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	m := &meters{health: []*providerv1.ComponentHealth{{Name: "db", Status: providerv1.ComponentStatus_COMPONENT_STATUS_DEGRADED, Message: "slow"}}}
	served, err := sdk.ServeInProcess(m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { served.Close() })
	c, err := New(Config{Spool: sp, Providers: provs{"my-db": served.Client}, Tenant: "acme", MaxBacklog: backlog,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return c, m, sp
}

func sample(tenant, meter string, v float64) *providerv1.UsageSample {
	return &providerv1.UsageSample{Tenant: tenant, Meter: meter, Value: v}
}

func find(cs []*agentv1.ComponentHealth, name string) *agentv1.ComponentHealth {
	for _, c := range cs {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

// TestCollectSpoolsOwnUsage: the agent's own samples are spooled under the
// provider-prefixed meter before the session sees them; samples for other
// tenants and invalid ones are not sent but counted in the usage component.
func TestCollectSpoolsOwnUsage(t *testing.T) {
	c, m, sp := setup(t, spool.Options{}, 0)
	old := sample("acme", "requests", 1)
	old.Time = timestamppb.New(time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC))
	m.set(sample("acme", "storage_bytes", 100), sample("", "requests", 3), sample("globex", "storage_bytes", 7),
		sample("acme", "Bad Meter", 1), sample("acme", "x", math.NaN()), sample("acme", "refund", -5), old)
	c.Collect(t.Context())
	select {
	case <-c.Changed():
	default:
		t.Fatal("Changed not signalled after usage was spooled")
	}
	bs, err := c.Pending(0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || len(bs[0].GetRecords()) != 2 {
		t.Fatalf("pending %v", bs)
	}
	for i, want := range []struct {
		meter string
		v     float64
	}{{"my_db.storage_bytes", 100}, {"my_db.requests", 3}} {
		r := bs[0].GetRecords()[i]
		if r.GetTenant() != "acme" || r.GetMeter() != want.meter || r.GetValue() != want.v || r.GetAt() == nil {
			t.Errorf("record %d = %v, want acme %s %v", i, r, want.meter, want.v)
		}
	}
	h := c.Health()
	if db := find(h, "provider/my-db/db"); db == nil || db.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_DEGRADED || db.GetMessage() != "slow" {
		t.Errorf("provider component %v in %v", db, h)
	}
	u := find(h, "usage")
	if u == nil || u.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY ||
		!strings.Contains(u.GetMessage(), "1 samples named another tenant") || !strings.Contains(u.GetMessage(), "4 samples had an invalid meter, value or time") {
		t.Errorf("usage component %v", u)
	}
	if m.asked == nil || len(m.asked) != 1 || m.asked[0] != "acme" {
		t.Errorf("providers asked for the usage of %v, want only the agent's tenant", m.asked)
	}
	if err := c.Acked(bs[0].GetSequence()); err != nil {
		t.Fatal(err)
	}
	if st := sp.Stats(); st.UsageBatches != 0 {
		t.Errorf("acked batch still spooled: %+v", st)
	}
}

// TestBackPressure: with the spool full, samples wait in memory and the
// usage component is degraded; once acknowledgements free room they are
// spooled, in order; beyond the backlog bound the oldest are lost and the
// component says so (unhealthy).
func TestBackPressure(t *testing.T) {
	c, m, sp := setup(t, spool.Options{MaxBytes: 150}, 5) // room for two 3-record batches
	m.set(sample("acme", "requests", 1), sample("acme", "requests", 2), sample("acme", "requests", 3))
	c.Collect(t.Context()) // fits
	first, _ := c.Pending(0, 0)
	m.set(sample("acme", "requests", 10), sample("acme", "requests", 20), sample("acme", "requests", 30))
	for range 5 {
		c.Collect(t.Context())
	}
	if st := sp.Stats(); st.UsageBatches != 2 || !st.Full {
		t.Fatalf("spool after filling: %+v", st)
	}
	u := find(c.Health(), "usage")
	if u.GetStatus() == agentv1.HealthStatus_HEALTH_STATUS_HEALTHY || !strings.Contains(u.GetMessage(), "back-pressure") {
		t.Fatalf("usage component under back-pressure: %v (spool %+v)", u, sp.Stats())
	}
	if u.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || !strings.Contains(u.GetMessage(), "LOST") {
		t.Fatalf("backlog beyond its bound of 5 should report lost samples: %v", u)
	}
	// Free the spool: the backlog goes in on the next round.
	all, _ := c.Pending(0, 0)
	for _, b := range all {
		if err := c.Acked(b.GetSequence()); err != nil {
			t.Fatal(err)
		}
	}
	m.set()
	c.Collect(t.Context())
	after, _ := c.Pending(0, 0)
	var n int
	for _, b := range after {
		n += len(b.GetRecords())
	}
	if n != 5 {
		t.Fatalf("%d backlog records spooled after room was freed, want the 5 kept", n)
	}
	if u := find(c.Health(), "usage"); strings.Contains(u.GetMessage(), "back-pressure") {
		t.Errorf("still reporting back-pressure: %v", u)
	}
	if len(first) != 1 {
		t.Fatalf("first round: %v", first)
	}
}

// TestProviderFailureReported: a provider whose Usage fails shows up as an
// unhealthy component; nothing is spooled.
func TestProviderFailureReported(t *testing.T) {
	c, m, sp := setup(t, spool.Options{}, 0)
	m.mu.Lock()
	m.usageErr = errors.New("database unreachable")
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c.Collect(ctx)
	u := find(c.Health(), "provider/my-db/usage")
	if u == nil || u.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_UNHEALTHY || !strings.Contains(u.GetMessage(), "database unreachable") {
		t.Fatalf("usage failure component %v", u)
	}
	if st := sp.Stats(); st.UsageBatches != 0 {
		t.Fatalf("spooled %+v", st)
	}
}

// TestHealthHistory: a health snapshot is spooled when a component's status
// changes (not every round) and handed to the session as heartbeats that
// carry the time of the change.
func TestHealthHistory(t *testing.T) {
	c, m, _ := setup(t, spool.Options{}, 0)
	c.Collect(t.Context())
	c.Collect(t.Context()) // unchanged: no second snapshot
	hs, err := c.HealthHistory(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 || hs[0].GetSentAt() == nil {
		t.Fatalf("history after two identical rounds: %v", hs)
	}
	if db := find(hs[0].GetComponents(), "provider/my-db/db"); db == nil || db.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_DEGRADED || db.GetMessage() != "slow" {
		t.Fatalf("snapshot components %v", hs[0].GetComponents())
	}
	if again, _ := c.HealthHistory(10); len(again) != 0 {
		t.Fatalf("taken snapshots returned again: %v", again)
	}
	m.mu.Lock()
	m.health = []*providerv1.ComponentHealth{{Name: "db", Status: providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY}}
	m.mu.Unlock()
	c.Collect(t.Context())
	hs, _ = c.HealthHistory(10)
	if len(hs) != 1 || find(hs[0].GetComponents(), "provider/my-db/db").GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY {
		t.Fatalf("history after the status changed: %v", hs)
	}
}

// TestDrift: a provider's drift reaches the heartbeat and the spooled
// history, its detail cut to MaxDriftDetail on a UTF-8 boundary; drift
// appearing or clearing is a change that is spooled, a new detail alone is
// not.
func TestDrift(t *testing.T) {
	c, m, _ := setup(t, spool.Options{}, 0)
	setHealth := func(hc ...*providerv1.ComponentHealth) {
		m.mu.Lock()
		m.health = hc
		m.mu.Unlock()
	}
	healthy := providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY
	c.Collect(t.Context())
	if hs, _ := c.HealthHistory(10); len(hs) != 1 || find(hs[0].GetComponents(), "provider/my-db/db").GetDrift() {
		t.Fatalf("first snapshot: %v", hs)
	}

	long := strings.Repeat("é", MaxDriftDetail) // 2 bytes each
	setHealth(&providerv1.ComponentHealth{Name: "db", Status: healthy, Message: "ok", Drift: true, DriftDetail: long},
		&providerv1.ComponentHealth{Name: "cache", Status: healthy, DriftDetail: "ignored without drift"})
	c.Collect(t.Context())
	check := func(where string, cs []*agentv1.ComponentHealth) {
		t.Helper()
		db := find(cs, "provider/my-db/db")
		if db == nil || !db.GetDrift() || db.GetStatus() != agentv1.HealthStatus_HEALTH_STATUS_HEALTHY || db.GetMessage() != "ok" {
			t.Fatalf("%s: db component %v", where, db)
		}
		if d := db.GetDriftDetail(); len(d) > MaxDriftDetail || len(d) < MaxDriftDetail-1 || !utf8.ValidString(d) || !strings.HasPrefix(long, d) {
			t.Fatalf("%s: drift detail of %d bytes (valid UTF-8: %v), want %s cut to %d bytes", where, len(d), utf8.ValidString(d), "é…", MaxDriftDetail)
		}
		if cache := find(cs, "provider/my-db/cache"); cache == nil || cache.GetDrift() || cache.GetDriftDetail() != "" {
			t.Fatalf("%s: cache component %v", where, cache)
		}
	}
	check("heartbeat", c.Health())
	hs, err := c.HealthHistory(10)
	if err != nil || len(hs) != 1 {
		t.Fatalf("history after drift appeared: %v, %v", hs, err)
	}
	check("spooled history", hs[0].GetComponents())

	// Same drift, another detail: not a change.
	setHealth(&providerv1.ComponentHealth{Name: "db", Status: healthy, Message: "ok", Drift: true, DriftDetail: "replicas: plan 3, live 4"},
		&providerv1.ComponentHealth{Name: "cache", Status: healthy})
	c.Collect(t.Context())
	if db := find(c.Health(), "provider/my-db/db"); db.GetDriftDetail() != "replicas: plan 3, live 4" {
		t.Fatalf("heartbeat after a new detail: %v", db)
	}
	if hs, _ := c.HealthHistory(10); len(hs) != 0 {
		t.Fatalf("a new drift detail alone was spooled: %v", hs)
	}

	// Drift cleared: a change.
	setHealth(&providerv1.ComponentHealth{Name: "db", Status: healthy, Message: "ok"}, &providerv1.ComponentHealth{Name: "cache", Status: healthy})
	c.Collect(t.Context())
	hs, _ = c.HealthHistory(10)
	if len(hs) != 1 {
		t.Fatalf("history after drift cleared: %v", hs)
	}
	if db := find(hs[0].GetComponents(), "provider/my-db/db"); db == nil || db.GetDrift() || db.GetDriftDetail() != "" {
		t.Fatalf("snapshot after drift cleared: %v", db)
	}
}
