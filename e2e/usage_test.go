package e2e

import (
	"encoding/json"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"attache.dev/attache/agent/spool"
	"attache.dev/attache/e2e/harness"
)

// faultProxy is a toxiproxy TCP proxy, in this test process, between the
// agent and the control plane's agent endpoint.
type faultProxy struct {
	p *toxiproxy.Proxy
}

func newFaultProxy(t *testing.T, listen, upstream string) *faultProxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "agent", listen, upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("toxiproxy: %v", err)
	}
	t.Cleanup(p.Stop)
	return &faultProxy{p: p}
}

// cut closes the listener and every connection: the link is down.
func (f *faultProxy) cut() { f.p.Stop() }

// restore listens again on the same address.
func (f *faultProxy) restore(t *testing.T) {
	t.Helper()
	if err := f.p.Start(); err != nil {
		t.Fatalf("toxiproxy restart: %v", err)
	}
}

// lag delays everything the control plane sends (acknowledgements too) by
// d, so batches are in flight when the agent is killed.
func (f *faultProxy) lag(t *testing.T, d time.Duration) {
	t.Helper()
	body := `{"name":"lag","type":"latency","stream":"downstream","attributes":{"latency":` + itoa(d.Milliseconds()) + `}}`
	if _, err := f.p.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
		t.Fatalf("toxiproxy latency: %v", err)
	}
}

func (f *faultProxy) unlag(t *testing.T) {
	t.Helper()
	if err := f.p.Toxics.RemoveToxic(t.Context(), "lag"); err != nil {
		t.Fatalf("toxiproxy remove latency: %v", err)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// TestUsageNoLoss: usage crosses a faulty link without loss or double
// counting. The agent collects every 100 ms through a toxiproxy proxy; the
// link is cut for a while, the agent is killed with SIGKILL while
// acknowledgements are delayed (batches in flight), and the control plane
// is restarted. At the end the control plane's totals equal exactly what the
// agent's spool says it generated.
func TestUsageNoLoss(t *testing.T) {
	t.Parallel()
	env := harness.New(t)
	proxyAddr := harness.FreeAddr(t)
	cp := env.StartControlPlane(t, harness.CPOptions{AgentAdvertise: proxyAddr, HeartbeatInterval: time.Second})
	proxy := newFaultProxy(t, proxyAddr, cp.AgentAddr)
	cp.WaitReady(t)
	cp.CreateTenant(t, "acme")
	config, _ := env.LocalProvider(t)
	fast := []string{"--usage-interval", "100ms"}
	a := env.StartAgent(t, harness.AgentOptions{Token: cp.JoinToken(t, "acme"), Config: config, Args: fast})
	a.AwaitEnrolled(t)
	_, id := a.Ref(t)
	cp.AwaitAgent(t, "acme", "the agent to be connected through the proxy", 20*time.Second, isConnected(id))
	// The local provider meters what exists: give acme a tenant directory.
	if p, stderr, code := cp.SubmitPlanWait(t, "acme", planYAML(provisionStep("dirs", "config/app.env", "X=1\n"))); code != 0 || p.State != harness.PlanSucceeded {
		t.Fatalf("provision: %s %s %s", p.State, p.Message, stderr)
	}
	time.Sleep(1500 * time.Millisecond)

	// 1. The link goes down; the agent keeps collecting into its spool.
	proxy.cut()
	time.Sleep(2 * time.Second)
	proxy.restore(t)

	// 2. Acknowledgements are delayed, and the agent dies mid-batch.
	proxy.lag(t, 400*time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	a.Kill()
	proxy.unlag(t)
	a = env.StartAgent(t, harness.AgentOptions{StateDir: a.StateDir, Config: config, Args: fast})
	time.Sleep(1500 * time.Millisecond)

	// 3. The control plane restarts while batches keep coming.
	cp.Restart(t)
	cp.WaitReady(t)
	time.Sleep(1500 * time.Millisecond)

	// 4. Quiesce: restart the agent with a long interval (one last
	// collection at start) and wait until it reports an empty spool.
	a.Stop(t)
	a = env.StartAgent(t, harness.AgentOptions{StateDir: a.StateDir, Config: config, Args: []string{"--usage-interval", "1h"}})
	harness.Eventually(t, "the agent's spool to be empty (every batch acknowledged)", 30*time.Second, func() (bool, string) {
		got := cp.Agent(t, "acme", id)
		var comps []struct {
			Name, Message string
		}
		_ = json.Unmarshal(got.Health, &comps)
		for _, c := range comps {
			if c.Name == "usage" {
				return strings.HasPrefix(c.Message, "0 batches"), c.Message
			}
		}
		return false, string(got.Health)
	})
	a.Stop(t)

	sp, err := spool.Open(filepath.Join(a.StateDir, spool.FileName), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	generated, err := sp.Totals()
	sp.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(generated) == 0 {
		t.Fatal("the agent generated no usage")
	}
	db := cp.SQLite(t)
	for _, g := range generated {
		var sum float64
		var count int64
		if err := db.QueryRow(`SELECT COALESCE(SUM(sum), 0), COALESCE(SUM(count), 0) FROM usage_hourly WHERE tenant = ? AND meter = ?`, g.Tenant, g.Meter).Scan(&sum, &count); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s %s: agent generated %d records summing to %v; control plane has %d summing to %v", g.Tenant, g.Meter, g.Records, g.Sum, count, sum)
		if uint64(count) != g.Records || math.Abs(sum-g.Sum) > 1e-6*math.Max(1, math.Abs(g.Sum)) {
			t.Errorf("%s %s: control plane has %d records summing to %v, the agent generated %d summing to %v", g.Tenant, g.Meter, count, sum, g.Records, g.Sum)
		}
	}
	var batches int
	if err := db.QueryRow(`SELECT count(*) FROM usage_batches WHERE tenant = 'acme'`).Scan(&batches); err != nil {
		t.Fatal(err)
	}
	if batches < 10 {
		t.Errorf("only %d batches ingested; the test did not exercise much", batches)
	}
}
