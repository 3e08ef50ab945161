// Command attache-loadgen is the fleet benchmark: it starts a real
// attache-controlplane on temporary directories and free 127.0.0.1 ports,
// mints join tokens through the ops API, and runs N simulated agents in its
// own process over real mTLS (see package bench/fleet). It measures, in
// phases:
//
//	enroll      join tokens minted per second, enrollments per second
//	sessions    idle sessions held and the control plane's RSS per session
//	heartbeats  heartbeats processed per second and the control plane's CPU
//	plans       signed plans applied per second, one per agent for --plans agents
//	restart     time for every agent to be back after a control-plane restart
//
// and prints a summary for docs/BENCHMARKS.md.
//
//	go run ./bench/cmd/attache-loadgen --controlplane bin/attache-controlplane --agents 10000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"attache.dev/attache/agent/svid"
	"attache.dev/attache/bench/fleet"
	"attache.dev/attache/controlplane/apiclient"
	"attache.dev/attache/internal/identity"
)

type options struct {
	agents          int
	concurrency     int
	mintConcurrency int
	controlplane    string
	build           bool
	store           string
	heartbeatRate   float64
	duration        time.Duration
	plans           int
	planConcurrency int
	phases          map[string]bool
	settle          time.Duration
	timeout         time.Duration
	workdir         string
	keep            bool
	cpLogLevel      string
	cpEnv           envList
}

// envList is a repeatable KEY=VALUE flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, " ") }

func (e *envList) Set(s string) error {
	if !strings.Contains(s, "=") {
		return fmt.Errorf("%q: want KEY=VALUE", s)
	}
	*e = append(*e, s)
	return nil
}

var allPhases = []string{"enroll", "sessions", "heartbeats", "plans", "restart"}

func main() {
	var o options
	var phases string
	flag.IntVar(&o.agents, "agents", 10000, "number of simulated agents")
	flag.IntVar(&o.concurrency, "concurrency", 64, "enrollments, and first session opens, in flight at once")
	flag.IntVar(&o.mintConcurrency, "mint-concurrency", 8, "join-token API calls in flight at once")
	flag.StringVar(&o.controlplane, "controlplane", "bin/attache-controlplane", "attache-controlplane binary (built from ./controlplane/cmd/attache-controlplane if missing)")
	flag.BoolVar(&o.build, "build", false, "rebuild the control plane binary even if it exists")
	flag.StringVar(&o.store, "store", "", "control plane --store: a PostgreSQL URL (default: SQLite in the temporary data dir)")
	flag.Float64Var(&o.heartbeatRate, "heartbeat-rate", 20000, "fleet-wide heartbeats per second in the heartbeats phase")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of the heartbeats phase")
	flag.IntVar(&o.plans, "plans", 1000, "plans phase: this many agents (at most --agents) get one no-op plan each, all submitted at once")
	flag.IntVar(&o.planConcurrency, "plan-concurrency", 32, "plans phase: plan submissions (ops API calls) in flight at once")
	flag.StringVar(&phases, "phases", strings.Join(allPhases, ","), "phases to run, from "+strings.Join(allPhases, ","))
	flag.DurationVar(&o.settle, "settle", 10*time.Second, "wait before reading the control plane's RSS")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Minute, "bound on every wait (start-up, sessions, reconnection)")
	flag.StringVar(&o.workdir, "workdir", "", "parent of the temporary data dir (default $TMPDIR)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary data dir and control plane log")
	flag.StringVar(&o.cpLogLevel, "cp-log-level", "warn", "control plane --log-level")
	flag.Var(&o.cpEnv, "cp-env", "KEY=VALUE added to the control plane's environment (repeatable), e.g. GOGC=50 or GODEBUG=gctrace=1")
	flag.Parse()
	o.phases = map[string]bool{}
	for p := range strings.SplitSeq(phases, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(allPhases, p) {
			fmt.Fprintf(os.Stderr, "attache-loadgen: unknown phase %q (want some of %s)\n", p, strings.Join(allPhases, ","))
			os.Exit(2)
		}
		o.phases[p] = true
	}
	if o.agents < 1 || o.concurrency < 1 || o.mintConcurrency < 1 || o.heartbeatRate <= 0 || o.duration <= 0 || o.plans < 1 || o.planConcurrency < 1 {
		fmt.Fprintln(os.Stderr, "attache-loadgen: --agents, --concurrency, --mint-concurrency, --heartbeat-rate, --duration, --plans and --plan-concurrency must be positive")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "attache-loadgen:", err)
		os.Exit(1)
	}
}

// results collects the figures for the summary.
type results struct {
	mintRate, enrollRate                       float64
	mintTime, enrollTime                       time.Duration
	enrolled, enrollFailed                     int
	openTime                                   time.Duration
	openLoad, hbLoad, reconnLoad               load
	sessions                                   int
	apiConnected                               int
	rssBase, rssAfter, rssRestart              int64 // KiB
	threadsAfter                               int64
	loadgenRSS                                 int64
	hbSentRate                                 float64
	hbInterval                                 time.Duration
	hbAdvanced, hbBehind                       int
	hbLagP50, hbLagP99, hbLagMax               time.Duration
	stopTime, startTime                        time.Duration
	reconnP50, reconnP90, reconnP99, reconnAll time.Duration
	reconnMissing                              int
	reconnAPIConnected                         int
	plans                                      planResults
	ran                                        map[string]bool
}

func run(ctx context.Context, o options) error {
	machine := fleet.DescribeMachine()
	nofile, err := fleet.RaiseFileLimit()
	if err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
	}
	need := uint64(o.agents) + 1000
	if nofile < need {
		return fmt.Errorf("RLIMIT_NOFILE hard limit %d is below the %d descriptors %d agents need (in this process and in the control plane)", nofile, need, o.agents)
	}
	logf("machine: %d CPUs, %s, %s RAM, Linux %s, %s; RLIMIT_NOFILE raised to %d", machine.CPUs, machine.CPUModel, machine.MemTotal, machine.Kernel, machine.GoVersion, nofile)

	if err := ensureBinary(ctx, o.controlplane, o.build); err != nil {
		return err
	}
	work, err := os.MkdirTemp(o.workdir, "attache-loadgen-")
	if err != nil {
		return err
	}
	if o.keep {
		logf("work dir %s (kept)", work)
	} else {
		defer os.RemoveAll(work)
	}
	agentAddr, err := fleet.FreeAddr()
	if err != nil {
		return err
	}
	apiAddr, err := fleet.FreeAddr()
	if err != nil {
		return err
	}
	cfg := fleet.ControlPlaneConfig{
		Binary: o.controlplane, DataDir: filepath.Join(work, "data"), Store: o.store,
		TrustDomain: "bench.attache.local", AgentAddr: agentAddr, APIAddr: apiAddr,
		SVIDTTL: 6 * time.Hour, LogLevel: o.cpLogLevel, LogPath: filepath.Join(work, "controlplane.log"),
		Env: o.cpEnv,
	}
	logf("control plane log: %s", cfg.LogPath)
	cp, err := fleet.StartControlPlane(ctx, cfg, o.timeout)
	if err != nil {
		return err
	}
	defer func() { _, _ = cp.Stop(30 * time.Second) }()
	logf("control plane pid %d: agents at %s, API at https://%s", cp.PID(), agentAddr, apiAddr)

	res := results{ran: o.phases}
	api, err := cp.API()
	if err != nil {
		return err
	}
	tenant := fmt.Sprintf("bench-%d", time.Now().Unix()%1000000)
	if _, err := api.CreateTenant(ctx, apiclient.CreateTenantRequest{Name: tenant, DisplayName: "attache-loadgen"}); err != nil {
		return fmt.Errorf("create tenant: %w", err)
	}

	// ---- enroll ---------------------------------------------------------
	// Every later phase needs enrolled agents, so enrollment always runs;
	// its figures are reported when the phase was asked for.
	tokens, err := mint(ctx, api, tenant, o, &res)
	if err != nil {
		return err
	}
	states, err := enrollAll(ctx, tokens, o, &res)
	if err != nil {
		return err
	}
	if !o.phases["sessions"] && !o.phases["heartbeats"] && !o.phases["plans"] && !o.phases["restart"] {
		summary(o, machine, res)
		return nil
	}

	// ---- sessions -------------------------------------------------------
	// A fresh control plane process for the baseline: the heap grown by
	// token minting and enrollment would otherwise be reused by sessions
	// and hide part of their cost.
	logf("restarting the control plane for a clean RSS baseline")
	if _, err := cp.Stop(30 * time.Second); err != nil {
		return err
	}
	if cp, err = fleet.StartControlPlane(ctx, cfg, o.timeout); err != nil {
		return err
	}
	if err := sleep(ctx, o.settle); err != nil {
		return err
	}
	if res.rssBase, err = fleet.RSSKiB(cp.PID()); err != nil {
		return err
	}
	logf("baseline: control plane RSS %s with 0 sessions", kib(res.rssBase))

	fctx, cancelFleet := context.WithCancel(ctx)
	f := fleet.New(states, o.concurrency)
	wait := f.Start(fctx)
	defer func() {
		cancelFleet()
		wait()
	}()
	openMeter := startMeter(cp.PID())
	t0 := time.Now()
	if err := until(ctx, o.timeout, func() bool { return f.Connected() >= int64(len(states)) }, func() {
		logf("  sessions open: %d/%d (%d attempts)", f.Connected(), len(states), f.Attempts())
	}); err != nil {
		return fmt.Errorf("opening sessions: %w (errors: %v)", err, f.Errors())
	}
	res.openTime = time.Since(t0)
	res.sessions = int(f.Connected())
	res.openLoad = openMeter.stop()
	logf("sessions: %d open in %s (%.0f/s), %d attempts; %s", res.sessions, res.openTime.Round(time.Millisecond), float64(res.sessions)/res.openTime.Seconds(), f.Attempts(), res.openLoad)
	if res.apiConnected, err = waitAPIConnected(ctx, api, tenant, len(states), o.timeout); err != nil {
		return err
	}
	logf("ops API reports %d agents connected; settling %s", res.apiConnected, o.settle)
	if err := sleep(ctx, o.settle); err != nil {
		return err
	}
	if res.rssAfter, err = fleet.RSSKiB(cp.PID()); err != nil {
		return err
	}
	res.threadsAfter, _ = fleet.Threads(cp.PID())
	res.loadgenRSS, _ = fleet.RSSKiB(os.Getpid())
	per := float64(res.rssAfter-res.rssBase) / float64(res.sessions)
	logf("sessions: control plane RSS %s (baseline %s) → %.1f KiB per session, %.1f MiB per 1,000; %d threads; loadgen RSS %s",
		kib(res.rssAfter), kib(res.rssBase), per, per*1000/1024, res.threadsAfter, kib(res.loadgenRSS))

	// ---- heartbeats -----------------------------------------------------
	if o.phases["heartbeats"] {
		if err := heartbeats(ctx, api, cp, f, tenant, o, &res); err != nil {
			return err
		}
	}

	// ---- plans ----------------------------------------------------------
	if o.phases["plans"] {
		if err := plansPhase(ctx, api, cp, f, tenant, o, &res); err != nil {
			return err
		}
	}

	// ---- restart --------------------------------------------------------
	var phaseErr error
	if o.phases["restart"] {
		var next *fleet.ControlPlane
		next, phaseErr = restart(ctx, cp, cfg, f, tenant, o, &res)
		if next != nil {
			cp = next
		}
	}
	if errs := f.Errors(); len(errs) > 0 {
		logf("session errors seen by agents (kind: count): %v", errs)
	}
	summary(o, machine, res)
	return phaseErr
}

func mint(ctx context.Context, api *apiclient.Client, tenant string, o options, res *results) ([]string, error) {
	tokens := make([]string, o.agents)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for range o.mintConcurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(tokens) || ctx.Err() != nil {
					return
				}
				t, err := api.CreateJoinToken(ctx, tenant, 2*time.Hour)
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("create join token: %w", err); cancel() })
					return
				}
				tokens[i] = t.Token
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	res.mintTime = time.Since(start)
	res.mintRate = float64(len(tokens)) / res.mintTime.Seconds()
	logf("mint: %d join tokens through the ops API in %s: %.0f/s (%d in flight)", len(tokens), res.mintTime.Round(time.Millisecond), res.mintRate, o.mintConcurrency)
	return tokens, nil
}

func enrollAll(ctx context.Context, tokens []string, o options, res *results) ([]*svid.State, error) {
	states := make([]*svid.State, len(tokens))
	var next, failed atomic.Int64
	var errMu sync.Mutex
	errs := map[string]int{}
	start := time.Now()
	var wg sync.WaitGroup
	for range o.concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(tokens) || ctx.Err() != nil {
					return
				}
				st, err := fleet.Enroll(ctx, tokens[i], fmt.Sprintf("sim-%05d", i))
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					errs[err.Error()]++
					errMu.Unlock()
					continue
				}
				states[i] = st
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res.enrollTime = time.Since(start)
	out := slices.DeleteFunc(states, func(s *svid.State) bool { return s == nil })
	res.enrolled, res.enrollFailed = len(out), int(failed.Load())
	res.enrollRate = float64(len(out)) / res.enrollTime.Seconds()
	logf("enroll: %d agents in %s: %.0f/s (%d in flight), %d failed", len(out), res.enrollTime.Round(time.Millisecond), res.enrollRate, o.concurrency, failed.Load())
	if len(errs) > 0 {
		logf("enroll errors: %v", errs)
	}
	if len(out) == 0 {
		return nil, errors.New("no agent enrolled")
	}
	return out, nil
}

func heartbeats(ctx context.Context, api *apiclient.Client, cp *fleet.ControlPlane, f *fleet.Fleet, tenant string, o options, res *results) error {
	n := len(f.Agents())
	interval := time.Duration(float64(n) / o.heartbeatRate * float64(time.Second))
	if interval < time.Millisecond {
		return fmt.Errorf("heartbeats: %d agents at %.0f/s means one heartbeat every %s per agent; use more agents", n, o.heartbeatRate, interval)
	}
	res.hbInterval = interval
	logf("heartbeats: %d agents, one heartbeat every %s each (target %.0f/s), for %s", n, interval, o.heartbeatRate, o.duration)
	phaseStart := time.Now()
	f.SetHeartbeatInterval(interval)
	// One interval for every agent to reach its random phase.
	if err := sleep(ctx, max(interval, time.Second)); err != nil {
		return err
	}
	meter := startMeter(cp.PID())
	sent0, t0 := f.HeartbeatsSent(), time.Now()
	if err := sleep(ctx, o.duration); err != nil {
		return err
	}
	sent1, t1 := f.HeartbeatsSent(), time.Now()
	res.hbLoad = meter.stop()
	f.SetHeartbeatInterval(0) // back to the Welcome interval: the next heartbeat is that far away
	res.hbSentRate = float64(sent1-sent0) / t1.Sub(t0).Seconds()
	logf("heartbeats: %d sent in %s = %.0f/s; %s", sent1-sent0, t1.Sub(t0).Round(time.Millisecond), res.hbSentRate, res.hbLoad)

	// Did the control plane keep up? The store's last_seen_at is the time
	// the control plane handled an agent's latest heartbeat; compare it
	// with when the agent sent it (same clock). A control plane that fell
	// behind shows a lag that grows with the backlog.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := sleep(ctx, 2500*time.Millisecond); err != nil { // batches flush every second
			return err
		}
		agents, err := api.ListAgents(ctx, tenant)
		if err != nil {
			return fmt.Errorf("heartbeats: list agents: %w", err)
		}
		seen := make(map[string]time.Time, len(agents))
		for _, a := range agents {
			if a.LastSeenAt != nil {
				seen[a.ID] = *a.LastSeenAt
			}
		}
		var lags []time.Duration
		advanced, behind := 0, 0
		for _, a := range f.Agents() {
			s, beat := seen[agentID(a.State())], a.LastHeartbeat()
			if s.After(phaseStart) {
				advanced++
			}
			if lag := s.Sub(beat); lag >= -time.Millisecond {
				lags = append(lags, max(lag, 0))
			} else {
				behind++
			}
		}
		slices.Sort(lags)
		res.hbAdvanced, res.hbBehind = advanced, behind
		if len(lags) > 0 {
			res.hbLagP50, res.hbLagP99, res.hbLagMax = pct(lags, 50), pct(lags, 99), lags[len(lags)-1]
		}
		logf("heartbeats: last_seen_at advanced during the phase for %d/%d agents; %d agents' latest heartbeat not yet stored; send-to-store lag (includes client-side queueing) p50 %s p99 %s max %s",
			advanced, n, behind, res.hbLagP50, res.hbLagP99, res.hbLagMax)
		if behind == 0 || time.Now().After(deadline) {
			return nil
		}
	}
}

// noopPlanYAML is the plans phase's plan: one step for the local provider,
// which a simulated agent does not run (it reports the step succeeded).
const noopPlanYAML = `version: 1
expires_in: 1h
steps:
  - id: provision
    provider: local
    action: tenant.provision
    resource: tenant
`

// planResults are the plans phase's figures.
type planResults struct {
	n, succeeded, refused, missing, apiSucceeded int
	total, submitTime                            time.Duration
	rate, submitRate                             float64
	p50, p99, max                                time.Duration
	load                                         load
}

// plansPhase submits one no-op plan to each of the first --plans agents
// through the ops API (--plan-concurrency in flight) and waits until every
// agent has reported its plan succeeded and the control plane acknowledged
// (stored) that report. Each agent verifies its plan's signature and
// binding with planverify before accepting it. Plans per second = plans /
// (last acknowledgement − first submission).
func plansPhase(ctx context.Context, api *apiclient.Client, cp *fleet.ControlPlane, f *fleet.Fleet, tenant string, o options, res *results) error {
	agents := f.Agents()[:min(o.plans, len(f.Agents()))]
	n := len(agents)
	logf("plans: submitting one no-op plan to each of %d agents, %d submissions in flight", n, o.planConcurrency)
	type submission struct {
		id    string
		start time.Time
	}
	subs := make([]submission, n)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	meter := startMeter(cp.PID())
	t0 := time.Now()
	var wg sync.WaitGroup
	for range o.planConcurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || sctx.Err() != nil {
					return
				}
				start := time.Now()
				p, err := api.SubmitPlan(sctx, apiclient.SubmitPlanRequest{Tenant: tenant, Agent: agentID(agents[i].State()), YAML: noopPlanYAML})
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("submit plan: %w", err); cancel() })
					return
				}
				subs[i] = submission{id: p.ID, start: start}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	pr := &res.plans
	pr.n = n
	pr.submitTime = time.Since(t0)
	pr.submitRate = float64(n) / pr.submitTime.Seconds()
	logf("plans: %d submitted in %s (%.0f/s)", n, pr.submitTime.Round(time.Millisecond), pr.submitRate)

	var done map[string]fleet.PlanResult
	count := func() int {
		done = f.PlanResults()
		k := 0
		for _, s := range subs {
			if _, ok := done[s.id]; ok {
				k++
			}
		}
		return k
	}
	err := until(ctx, o.timeout, func() bool { return count() == n }, func() {
		logf("  plans done: %d/%d (%d offers received)", count(), n, f.PlansOffered())
	})
	pr.load = meter.stop()
	var last time.Time
	var lat []time.Duration
	for _, s := range subs {
		r, ok := done[s.id]
		if !ok {
			pr.missing++
			continue
		}
		if r.State == "succeeded" {
			pr.succeeded++
		} else {
			pr.refused++
		}
		if r.At.After(last) {
			last = r.At
		}
		lat = append(lat, r.At.Sub(s.start))
	}
	if err != nil {
		return fmt.Errorf("plans: %d/%d done: %w", n-pr.missing, n, err)
	}
	pr.total = last.Sub(t0)
	pr.rate = float64(n) / pr.total.Seconds()
	slices.Sort(lat)
	pr.p50, pr.p99, pr.max = pct(lat, 50), pct(lat, 99), lat[len(lat)-1]
	logf("plans: %d applied in %s: %.0f/s (%d succeeded, %d refused); submit-to-applied p50 %s p99 %s max %s; %s",
		n, pr.total.Round(time.Millisecond), pr.rate, pr.succeeded, pr.refused, pr.p50.Round(time.Millisecond), pr.p99.Round(time.Millisecond), pr.max.Round(time.Millisecond), pr.load)

	// What the agents saw acknowledged, the ops API must report.
	var ok atomic.Int64
	next.Store(0)
	for range o.planConcurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if p, err := api.GetPlan(ctx, subs[i].id); err == nil && p.State == "succeeded" {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	pr.apiSucceeded = int(ok.Load())
	logf("plans: ops API reports %d/%d succeeded", pr.apiSucceeded, n)
	if pr.refused > 0 || pr.apiSucceeded != n {
		return fmt.Errorf("plans: %d refused by the agents, %d/%d succeeded according to the ops API", pr.refused, pr.apiSucceeded, n)
	}
	return nil
}

func restart(ctx context.Context, cp *fleet.ControlPlane, cfg fleet.ControlPlaneConfig, f *fleet.Fleet, tenant string, o options, res *results) (*fleet.ControlPlane, error) {
	n := len(f.Agents())
	logf("restart: SIGTERM to the control plane with %d sessions open", f.Connected())
	attempts0 := f.Attempts()
	tKill := time.Now()
	stopTime, err := cp.Stop(30 * time.Second)
	if err != nil {
		logf("restart: %v", err)
	}
	res.stopTime = stopTime
	storm := startMeter(0) // the machine and this process from now
	tStart := time.Now()
	cp, err = fleet.StartControlPlane(ctx, cfg, o.timeout)
	if err != nil {
		return nil, err
	}
	res.startTime = time.Since(tStart)
	// The new process's counters start at zero: measure it from its start.
	storm.cpPID, storm.cp, storm.wait0 = cp.PID(), fleet.CPUSinceStart(cp.PID(), tStart), 0
	logf("restart: old process exited %s after SIGTERM; new one (pid %d) healthy %s after start", stopTime.Round(time.Millisecond), cp.PID(), res.startTime.Round(time.Millisecond))
	err = until(ctx, o.timeout, func() bool { _, missing := f.WelcomedSince(tKill); return missing == 0 }, func() {
		_, missing := f.WelcomedSince(tKill)
		logf("  reconnected: %d/%d after %s", n-missing, n, time.Since(tKill).Round(time.Millisecond))
	})
	after, missing := f.WelcomedSince(tKill)
	res.reconnMissing = missing
	res.reconnLoad = storm.stop()
	logf("restart: from the new control plane's start until the last agent was back: %s", res.reconnLoad)
	if len(after) > 0 {
		res.reconnP50, res.reconnP90, res.reconnP99, res.reconnAll = pct(after, 50), pct(after, 90), pct(after, 99), after[len(after)-1]
	}
	logf("restart: %d/%d agents had a new Welcome; from SIGTERM p50 %s p90 %s p99 %s all %s; %d session attempts",
		len(after), n, res.reconnP50.Round(time.Millisecond), res.reconnP90.Round(time.Millisecond), res.reconnP99.Round(time.Millisecond), res.reconnAll.Round(time.Millisecond), f.Attempts()-attempts0)
	if err != nil {
		for _, a := range f.Agents() {
			if !a.LastWelcome().After(tKill) {
				logf("restart: agent %s not back: %s", agentID(a.State()), a.Describe())
			}
		}
		return cp, fmt.Errorf("restart: %w", err)
	}
	api, err := cp.API()
	if err != nil {
		return cp, err
	}
	if res.reconnAPIConnected, err = waitAPIConnected(ctx, api, tenant, n, o.timeout); err != nil {
		return cp, err
	}
	if err := sleep(ctx, o.settle); err != nil {
		return cp, err
	}
	res.rssRestart, _ = fleet.RSSKiB(cp.PID())
	logf("restart: ops API reports %d connected; control plane RSS %s after the reconnection storm", res.reconnAPIConnected, kib(res.rssRestart))
	return cp, nil
}

// waitAPIConnected polls the ops API until want agents of tenant have
// status "connected"; it returns the last count.
func waitAPIConnected(ctx context.Context, api *apiclient.Client, tenant string, want int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	last := -1
	for {
		agents, err := api.ListAgents(ctx, tenant)
		if err == nil {
			last = 0
			for _, a := range agents {
				if a.Status == "connected" {
					last++
				}
			}
			if last >= want {
				return last, nil
			}
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("ops API reports %d/%d agents connected after %s (last error: %v)", last, want, timeout, err)
		}
		if err := sleep(ctx, time.Second); err != nil {
			return last, err
		}
	}
}

// until polls cond every 50ms, calling progress every 2s, for at most timeout.
func until(ctx context.Context, timeout time.Duration, cond func() bool, progress func()) error {
	deadline := time.Now().Add(timeout)
	lastProgress := time.Now()
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %s", timeout)
		}
		if time.Since(lastProgress) >= 2*time.Second {
			progress()
			lastProgress = time.Now()
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func ensureBinary(ctx context.Context, path string, rebuild bool) error {
	if _, err := os.Stat(path); err == nil && !rebuild {
		return nil
	}
	logf("building %s", path)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", path, "./controlplane/cmd/attache-controlplane")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build %s (run from the repository root): %w", path, err)
	}
	return nil
}

func summary(o options, m fleet.Machine, r results) {
	commit := "unknown"
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	store := "SQLite (WAL, synchronous=FULL) in a temp dir"
	if o.store != "" {
		store = "PostgreSQL (" + redactDSN(o.store) + ")"
	}
	b := &strings.Builder{}
	p := func(format string, a ...any) { fmt.Fprintf(b, format+"\n", a...) }
	p("")
	p("### Fleet benchmark (attache-loadgen)")
	p("")
	p("- Command: `%s`", strings.Join(os.Args, " "))
	p("- Machine: %d CPUs (%s), %s RAM, Linux %s, %s; control plane and load generator share the machine", m.CPUs, m.CPUModel, m.MemTotal, m.Kernel, m.GoVersion)
	if len(o.cpEnv) > 0 {
		p("- Control plane environment: %s", o.cpEnv.String())
	}
	p("- Store: %s; commit %s; agents: %d simulated in one process, each with its own gRPC connection (mTLS, ECDSA P-256 SVID)", store, commit, o.agents)
	p("")
	p("| figure | target | measured |")
	p("| --- | --- | --- |")
	p("| join tokens minted via ops API (%d in flight, each audited) | — | %.0f/s (%d in %s) |", o.mintConcurrency, r.mintRate, o.agents, r.mintTime.Round(time.Millisecond))
	p("| enrollments (%d in flight, new TLS connection each) | — | %.0f/s (%d in %s, %d failed) |", o.concurrency, r.enrollRate, r.enrolled, r.enrollTime.Round(time.Millisecond), r.enrollFailed)
	if r.sessions > 0 {
		per := float64(r.rssAfter-r.rssBase) / float64(r.sessions)
		p("| idle sessions held by one control plane | 10,000 | %d (opened in %s, %.0f/s; ops API: %d connected; %s) |", r.sessions, r.openTime.Round(time.Millisecond), float64(r.sessions)/r.openTime.Seconds(), r.apiConnected, r.openLoad)
		p("| control plane RSS per idle session | ≤ 60 KiB | %.1f KiB (%.1f MiB per 1,000; RSS %s with sessions, %s baseline) |", per, per*1000/1024, kib(r.rssAfter), kib(r.rssBase))
	}
	if r.ran["heartbeats"] && r.hbSentRate > 0 {
		p("| heartbeats processed | ≥ 20,000/s | %.0f/s for %s (1 every %s per agent); %s; last_seen_at advanced for %d/%d, %d not stored, send-to-store lag p99 %s max %s |",
			r.hbSentRate, o.duration, r.hbInterval, r.hbLoad, r.hbAdvanced, r.sessions, r.hbBehind, r.hbLagP99.Round(time.Millisecond), r.hbLagMax.Round(time.Millisecond))
	}
	if r.ran["plans"] && r.plans.n > 0 {
		pr := r.plans
		p("| signed plans applied, one per agent, all submitted at once (%d submissions in flight) | — | %.0f/s (%d plans on %d agents in %s: first submit to last succeeded report stored; %d succeeded, %d refused, %d not done; ops API confirms %d succeeded); submissions %.0f/s; submit-to-applied p50 %s p99 %s max %s; %s |",
			o.planConcurrency, pr.rate, pr.n, pr.n, pr.total.Round(time.Millisecond), pr.succeeded, pr.refused, pr.missing, pr.apiSucceeded, pr.submitRate,
			pr.p50.Round(time.Millisecond), pr.p99.Round(time.Millisecond), pr.max.Round(time.Millisecond), pr.load)
	}
	if r.ran["restart"] && r.reconnAll > 0 {
		p("| all agents back after a control-plane restart | ≤ 15 s | %s from SIGTERM (p50 %s, p90 %s, p99 %s; %d missing); CP exit %s, start %s; storm: %s |",
			r.reconnAll.Round(time.Millisecond), r.reconnP50.Round(time.Millisecond), r.reconnP90.Round(time.Millisecond), r.reconnP99.Round(time.Millisecond), r.reconnMissing, r.stopTime.Round(time.Millisecond), r.startTime.Round(time.Millisecond), r.reconnLoad)
		if r.sessions > 0 {
			p("| control plane RSS after the reconnection | — | %s (%.1f KiB per session over baseline) |", kib(r.rssRestart), float64(r.rssRestart-r.rssBase)/float64(r.sessions))
		}
	}
	if r.loadgenRSS > 0 {
		p("")
		p("Load generator RSS with all sessions open: %s.", kib(r.loadgenRSS))
	}
	fmt.Print(b.String())
}

// agentID is the agent-ID segment of the agent's SPIFFE ID.
func agentID(st *svid.State) string {
	_, id, err := identity.ParseAgentID(st.TrustDomain(), st.ID)
	if err != nil {
		return ""
	}
	return id
}

func redactDSN(s string) string {
	if i := strings.Index(s, "@"); i >= 0 {
		if j := strings.Index(s, "://"); j >= 0 && j < i {
			return s[:j+3] + "…" + s[i:]
		}
	}
	return s
}

func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func kib(k int64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }

// load is the CPU picture of one phase, in percent of one core.
type load struct {
	cp, self, others, steal float64
	cpWait                  float64 // seconds the control plane's threads spent runnable but not running, per second
}

func (l load) String() string {
	return fmt.Sprintf("CPU (100%% = 1 core): control plane %.0f%%, loadgen %.0f%%, other processes %.0f%%, steal %.0f%%; control plane runqueue wait %.2f s/s",
		l.cp, l.self, l.others, l.steal, l.cpWait)
}

type meter struct {
	cpPID    int
	cp, self *fleet.CPUMeter
	machine  *fleet.MachineMeter
	wait0    time.Duration
	t0       time.Time
}

func startMeter(cpPID int) *meter {
	m := &meter{cpPID: cpPID, t0: time.Now()}
	if cpPID > 0 {
		m.cp, _ = fleet.StartCPU(cpPID)
		m.wait0, _ = fleet.RunqueueWait(cpPID)
	}
	m.self, _ = fleet.StartCPU(os.Getpid())
	m.machine, _ = fleet.StartMachine()
	return m
}

func (m *meter) stop() load {
	var l load
	if m.cp != nil {
		_, l.cp, _ = m.cp.Stop()
	}
	if m.self != nil {
		_, l.self, _ = m.self.Stop()
	}
	if m.machine != nil {
		var busy float64
		busy, l.steal = m.machine.Stop()
		l.others = max(busy-l.cp-l.self, 0)
	}
	if w, err := fleet.RunqueueWait(m.cpPID); err == nil {
		l.cpWait = (w - m.wait0).Seconds() / time.Since(m.t0).Seconds()
	}
	return l
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, a...)...)
}
