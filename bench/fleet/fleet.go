// Package fleet is the machinery of the fleet benchmark (bench/cmd/attache-loadgen):
// it runs a real attache-controlplane binary as a child process, measures
// its RSS and CPU from /proc, and simulates thousands of agents in the
// calling process. Each simulated agent enrolls over the real enrollment
// protocol (kept in memory rather than in a state directory) and holds a
// session the way agent/session does: its own gRPC ClientConn over mTLS with
// its SVID, Hello, Welcome, heartbeats, and reconnection with
// session.Backoff after the stream breaks. It takes plan offers the way
// agent/planrun does, verifying each with internal/planverify against the
// trust root it pinned at enrollment, and reports them accepted and then
// succeeded without running any provider, with the session's reporting and
// acknowledgement protocol.
//
// Only bench packages import fleet.
package fleet

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	"attache.dev/attache/agent/svid"
)

// Fleet is a set of simulated agents.
type Fleet struct {
	agents []*Agent
	pace   pacer
	// gate bounds the agents making their first connection at once, so
	// the initial open measures steady session setup rather than a
	// synchronized storm (reconnections are not gated: they use backoff).
	gate chan struct{}

	welcomes  atomic.Int64 // Welcome messages received
	connected atomic.Int64 // sessions open now
	sent      atomic.Int64 // heartbeats sent
	attempts  atomic.Int64 // session attempts (dials)

	errMu sync.Mutex
	errs  map[string]int

	plansOffered atomic.Int64 // plan offers received
	plansDone    atomic.Int64 // plans whose final report was acknowledged
	planMu       sync.Mutex
	planResults  map[string]PlanResult // by plan ID
}

// New returns a fleet of one agent per state. openConcurrency bounds the
// first connections in flight. Each agent loads the trust root pinned in
// its state (verifying its signatures) to verify the plans it is offered;
// an agent whose root does not load refuses every plan, and the error is
// counted in Errors.
func New(states []*svid.State, openConcurrency int) *Fleet {
	f := &Fleet{gate: make(chan struct{}, max(openConcurrency, 1)), errs: map[string]int{}, planResults: map[string]PlanResult{}}
	f.pace.changed = make(chan struct{})
	for i, st := range states {
		a := &Agent{f: f, st: st, index: i}
		var err error
		if a.plans, err = newPlans(st); err != nil {
			f.recordErr(fmt.Errorf("plan runner: %w", err))
		}
		f.agents = append(f.agents, a)
	}
	return f
}

// Agents returns the agents.
func (f *Fleet) Agents() []*Agent { return f.agents }

// Start runs every agent until ctx ends. The returned function waits for all
// of them to stop.
func (f *Fleet) Start(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	for _, a := range f.agents {
		wg.Go(func() { a.run(ctx) })
	}
	return wg.Wait
}

// SetHeartbeatInterval overrides the interval the control plane announced
// in Welcome; 0 goes back to it. A shorter interval starts each agent at a
// random phase within it, so the fleet's heartbeats are spread evenly.
func (f *Fleet) SetHeartbeatInterval(d time.Duration) { f.pace.set(d) }

// Connected is the number of sessions open now (Welcome received, stream
// not yet broken).
func (f *Fleet) Connected() int64 { return f.connected.Load() }

// Welcomes is the number of Welcome messages received so far.
func (f *Fleet) Welcomes() int64 { return f.welcomes.Load() }

// HeartbeatsSent is the number of heartbeats sent so far.
func (f *Fleet) HeartbeatsSent() int64 { return f.sent.Load() }

// Attempts is the number of session attempts (dials) so far.
func (f *Fleet) Attempts() int64 { return f.attempts.Load() }

// WelcomedSince returns, for every agent whose latest Welcome came after t,
// how long after t it came, sorted; and the number of agents without one.
func (f *Fleet) WelcomedSince(t time.Time) (after []time.Duration, missing int) {
	for _, a := range f.agents {
		w := a.LastWelcome()
		if w.After(t) {
			after = append(after, w.Sub(t))
		} else {
			missing++
		}
	}
	sort.Slice(after, func(i, j int) bool { return after[i] < after[j] })
	return after, missing
}

// Errors returns how often each kind of session error occurred.
func (f *Fleet) Errors() map[string]int {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	out := make(map[string]int, len(f.errs))
	for k, v := range f.errs {
		out[k] = v
	}
	return out
}

func (f *Fleet) recordErr(err error) {
	if err == nil {
		return
	}
	s := status.Convert(err)
	msg := s.Message()
	if i := strings.Index(msg, ": "); i > 0 && len(msg) > 60 {
		msg = msg[:i]
	}
	if len(msg) > 60 {
		msg = msg[:60]
	}
	k := s.Code().String() + ": " + msg
	f.errMu.Lock()
	f.errs[k]++
	f.errMu.Unlock()
}

// pacer holds the heartbeat-interval override and wakes agents when it
// changes.
type pacer struct {
	mu       sync.Mutex
	interval time.Duration
	changed  chan struct{}
}

func (p *pacer) get() (time.Duration, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.interval, p.changed
}

func (p *pacer) set(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.interval = d
	close(p.changed)
	p.changed = make(chan struct{})
}
