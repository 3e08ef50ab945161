package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"attache.dev/attache/agent/agentcli"
	"attache.dev/attache/bench/fleet"
	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/controlplane/config"
	"attache.dev/attache/controlplane/server"
	"attache.dev/attache/controlplane/store"
)

// noopPlanYAML is the no-op plan: one local tenant.provision step without
// files. The first one creates the tenant's directories; every later one
// finds them and changes nothing (the provider reports a noop change).
const noopPlanYAML = `version: 1
expires_in: 1h
steps:
  - id: provision
    provider: local
    action: tenant.provision
    resource: tenant
`

// pollInterval is how often the benchmark reads the plan's state from the
// control plane's store while waiting for it to finish.
const pollInterval = time.Millisecond

// BenchmarkPlanSubmitToApplied measures, one plan at a time, the time from
// submitting a no-op plan through the ops API (apiclient.SubmitPlan, HTTPS)
// until the control plane's store holds it as succeeded, through the whole
// real stack on loopback: an in-process control plane (controlplane/server,
// SQLite in a temporary directory) signs, stores and offers the plan on the
// session of a real attache-agent process, which verifies and journals it
// (bbolt), runs the step through the real attache-provider-local plugin
// (go-plugin, gRPC) and reports each state; the control plane stores every
// report before acknowledging it.
//
// Completion is detected by reading the plan from the control plane's store
// (Server.Store().GetPlan, the same read the API's GET /v1/plans/{id} does,
// without an HTTPS round trip per poll) every millisecond, so a figure is at
// most about one millisecond late. Each iteration is one plan; run with
// -benchtime 200x for 200 plans (make bench does). Reported: p50-ms,
// p99-ms and max-ms of submit-to-applied; submit-p50-ms (the API call alone:
// sign, store, audit) and accepted-p50-ms (until the agent's "accepted"
// report was stored).
func BenchmarkPlanSubmitToApplied(b *testing.B) {
	w := startStack(b)
	for range 3 { // warm up: plugin handshake, directories, connections
		w.apply(b)
	}
	var total, submit, accepted []time.Duration
	for b.Loop() {
		r := w.apply(b)
		total, submit, accepted = append(total, r.total), append(submit, r.submit), append(accepted, r.accepted)
	}
	slices.Sort(total)
	slices.Sort(submit)
	slices.Sort(accepted)
	b.ReportMetric(ms(percentile(total, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(total, 99)), "p99-ms")
	b.ReportMetric(ms(total[len(total)-1]), "max-ms")
	b.ReportMetric(ms(percentile(submit, 50)), "submit-p50-ms")
	b.ReportMetric(ms(percentile(accepted, 50)), "accepted-p50-ms")
}

// stack is an in-process control plane with one tenant and one connected
// attache-agent process that runs attache-provider-local.
type stack struct {
	api    *apiclient.Client
	store  store.Store
	tenant string
	agent  string // agent ID
}

// result is one plan's timings, from the start of the submit call.
type result struct {
	total, submit, accepted time.Duration
}

// apply submits the no-op plan and waits until it is succeeded in the store.
func (w *stack) apply(b *testing.B) result {
	b.Helper()
	ctx := b.Context()
	t0 := time.Now()
	p, err := w.api.SubmitPlan(ctx, apiclient.SubmitPlanRequest{Tenant: w.tenant, Agent: w.agent, YAML: noopPlanYAML})
	if err != nil {
		b.Fatalf("submit: %v", err)
	}
	r := result{submit: time.Since(t0)}
	deadline := t0.Add(30 * time.Second)
	for {
		sp, err := w.store.GetPlan(ctx, p.ID)
		if err != nil {
			b.Fatalf("get plan %s: %v", p.ID, err)
		}
		if r.accepted == 0 && sp.AckedAt != nil {
			r.accepted = time.Since(t0)
		}
		if sp.State.Terminal() {
			r.total = time.Since(t0)
			if sp.State != store.PlanSucceeded {
				b.Fatalf("plan %s %s: %s (steps %s)", p.ID, sp.State, sp.Message, sp.Steps)
			}
			return r
		}
		if time.Now().After(deadline) {
			b.Fatalf("plan %s still %s after 30s", p.ID, sp.State)
		}
		time.Sleep(pollInterval)
	}
}

// startStack builds attache-agent and attache-provider-local, starts the
// control plane in-process and the agent as a child process, enrolls it
// and waits until its session is open. Everything is stopped in b.Cleanup.
func startStack(b *testing.B) *stack {
	b.Helper()
	ctx := b.Context()
	bin := buildBinaries(b)
	dir := b.TempDir()

	// The ops API mints join tokens with the configured agent address, so
	// both listeners get fixed free ports rather than :0.
	agentAddr, err := fleet.FreeAddr()
	if err != nil {
		b.Fatal(err)
	}
	apiAddr, err := fleet.FreeAddr()
	if err != nil {
		b.Fatal(err)
	}
	cfg := config.Default()
	cfg.DataDir = filepath.Join(dir, "cp")
	cfg.TrustDomain = "bench.attache.local"
	cfg.Agent.Listen = agentAddr
	cfg.API.Listen = apiAddr
	cpLog := logFile(b, filepath.Join(dir, "controlplane.log"))
	logger := slog.New(slog.NewTextHandler(cpLog, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cpCtx, stopCP := context.WithCancel(context.WithoutCancel(ctx))
	srv, err := server.New(cpCtx, cfg, logger)
	if err != nil {
		stopCP()
		b.Fatalf("control plane: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(cpCtx) }()
	b.Cleanup(func() {
		stopCP()
		if err := <-done; err != nil {
			b.Errorf("control plane Run: %v", err)
		}
	})

	api, err := fleet.APIClient(cfg.DataDir, apiAddr)
	if err != nil {
		b.Fatal(err)
	}
	const tenant = "bench"
	if _, err := api.CreateTenant(ctx, apiclient.CreateTenantRequest{Name: tenant}); err != nil {
		b.Fatalf("create tenant: %v", err)
	}
	tok, err := api.CreateJoinToken(ctx, tenant, time.Hour)
	if err != nil {
		b.Fatalf("join token: %v", err)
	}

	provider := filepath.Join(bin, "attache-provider-local")
	sum, err := agentcli.FileSHA256(provider)
	if err != nil {
		b.Fatal(err)
	}
	agentCfg, err := json.Marshal(map[string]any{"providers": []any{map[string]any{
		"name": "local", "path": provider, "sha256": sum,
		"config": map[string]string{"root": filepath.Join(dir, "local-root")},
	}}})
	if err != nil {
		b.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "agent.json")
	if err := os.WriteFile(cfgPath, agentCfg, 0o600); err != nil {
		b.Fatal(err)
	}
	agentLogPath := filepath.Join(dir, "agent.log")
	agentLog := logFile(b, agentLogPath)
	cmd := exec.Command(filepath.Join(bin, "attache-agent"), "run",
		"--state-dir", filepath.Join(dir, "agent-state"),
		"--token", tok.Token,
		"--config", cfgPath,
		"--log-level", "warn",
		"--allow-unreleased-plans") // the benchmark submits ad hoc plans
	cmd.Stdout, cmd.Stderr = agentLog, agentLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start attache-agent: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if b.Failed() {
			b.Logf("attache-agent log:\n%s", tail(agentLogPath, 40))
		}
	})

	// Wait for the agent's session.
	deadline := time.Now().Add(30 * time.Second)
	for {
		agents, err := api.ListAgents(ctx, tenant)
		if err == nil && len(agents) == 1 && agents[0].Status == "connected" {
			return &stack{api: api, store: srv.Store(), tenant: tenant, agent: agents[0].ID}
		}
		select {
		case <-exited:
			b.Fatalf("attache-agent exited during start-up:\n%s", tail(agentLogPath, 40))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("agent not connected after 30s (%v, %d agents):\n%s", err, len(agents), tail(agentLogPath, 40))
		}
	}
}

// buildBinaries builds attache-agent and attache-provider-local into a
// temporary directory.
func buildBinaries(b *testing.B) string {
	b.Helper()
	root, err := moduleRoot()
	if err != nil {
		b.Fatal(err)
	}
	bin := b.TempDir()
	cmd := exec.Command("go", "build", "-o", bin+string(filepath.Separator),
		"./agent/cmd/attache-agent", "./providers/local/cmd/attache-provider-local")
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out.Bytes())
	}
	return bin
}

// moduleRoot walks up from the working directory to the directory holding
// go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func logFile(b *testing.B, path string) io.Writer {
	b.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// percentile returns the p-th percentile (nearest rank) of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
