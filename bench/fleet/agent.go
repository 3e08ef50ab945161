package fleet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/agent/session"
	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/version"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// Reconnection parameters of agent/session (its defaults).
const (
	backoffBase = 250 * time.Millisecond
	backoffMax  = 10 * time.Second
	stableAfter = 30 * time.Second
)

// Agent is one simulated agent.
type Agent struct {
	f     *Fleet
	st    *svid.State
	index int
	plans *plans // nil: refuses every plan, like an agent without a runner

	lastWelcome atomic.Int64 // unix nanoseconds
	lastBeat    atomic.Int64 // unix nanoseconds of the last heartbeat sent

	mu       sync.Mutex
	stage    string // what the agent is doing, for diagnostics
	since    time.Time
	attempts int
	lastErr  error
}

func (a *Agent) setStage(s string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stage, a.since = s, time.Now()
	if s == "dialing" {
		a.attempts++
	}
	if err != nil {
		a.lastErr = err
	}
}

// Describe says what the agent is doing, for diagnostics.
func (a *Agent) Describe() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return fmt.Sprintf("%s for %s, %d attempts, last welcome %s, last error: %v",
		a.stage, time.Since(a.since).Round(time.Millisecond), a.attempts, a.LastWelcome().Format(time.TimeOnly+".000"), a.lastErr)
}

// State is the agent's identity.
func (a *Agent) State() *svid.State { return a.st }

// LastWelcome is when the agent last received Welcome (zero if never).
func (a *Agent) LastWelcome() time.Time { return unixNano(a.lastWelcome.Load()) }

// LastHeartbeat is when the agent last sent a heartbeat (zero if never).
func (a *Agent) LastHeartbeat() time.Time { return unixNano(a.lastBeat.Load()) }

func unixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// run is session.Client.Run: keep a session open, reconnecting with
// session.Backoff (full jitter, 250ms base, 10s cap, reset after a session
// that lasted 30s) until ctx ends or the agent is revoked.
func (a *Agent) run(ctx context.Context) {
	b := session.Backoff{Base: backoffBase, Max: backoffMax}
	first := true
	for {
		var ready func()
		if first {
			select {
			case a.f.gate <- struct{}{}:
			case <-ctx.Done():
				return
			}
			ready = sync.OnceFunc(func() { <-a.f.gate })
			first = false
		}
		start := time.Now()
		err := a.runOnce(ctx, ready)
		if ready != nil {
			ready()
		}
		if ctx.Err() != nil {
			return
		}
		a.f.recordErr(err)
		if grpcx.HasReason(err, grpcx.ReasonAgentRevoked) {
			return // as session.Client: a revoked agent stops retrying
		}
		if time.Since(start) >= stableAfter {
			b.Reset()
		}
		d := b.Next()
		a.setStage(fmt.Sprintf("backing off %s", d.Round(time.Millisecond)), err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// runOnce is session.Client.runOnce: dial over mTLS, Hello, Welcome (follow
// its trust roots), a heartbeat at once and then every interval, plan
// offers handed to the simulated runner and its reports sent and
// acknowledged, until the stream breaks. ready (if not nil) is called once
// Welcome arrived.
func (a *Agent) runOnce(ctx context.Context, ready func()) error {
	a.f.attempts.Add(1)
	a.setStage("dialing", nil)
	conn, err := grpc.NewClient(a.st.Meta.ControlPlaneAddr, grpcx.DialOptions(a.st.TLSCredentials())...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := agentv1.NewAgentServiceClient(conn).Session(ctx)
	if err != nil {
		return err
	}
	hello := &agentv1.Hello{
		AgentVersion:      version.Version,
		CapabilityVersion: version.CapabilityVersion,
		Inventory:         &agentv1.Inventory{Hostname: fmt.Sprintf("sim-%05d", a.index), Os: runtime.GOOS, Arch: runtime.GOARCH},
	}
	if a.plans != nil {
		hello.LastPlanSequence, hello.TrustRootVersion = a.plans.helloState()
	}
	if err := stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: hello}}); err != nil {
		return streamErr(stream, err)
	}
	a.setStage("awaiting welcome", nil)
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return errors.New("control plane did not answer hello with welcome")
	}
	serverInterval := time.Duration(welcome.GetConfig().GetHeartbeatIntervalSeconds()) * time.Second
	if serverInterval <= 0 {
		serverInterval = 15 * time.Second
	}
	if roots := welcome.GetTrustRoots(); len(roots) > 0 && a.plans != nil {
		if err := a.plans.followRoots(ctx, roots); err != nil {
			a.f.recordErr(fmt.Errorf("trust root rotation refused: %w", err))
		}
	}
	a.setStage("connected", nil)
	a.lastWelcome.Store(time.Now().UnixNano())
	a.f.welcomes.Add(1)
	a.f.connected.Add(1)
	defer a.f.connected.Add(-1)
	if ready != nil {
		ready()
	}

	in := make(chan *agentv1.ControlMessage)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case in <- m:
			case <-ctx.Done():
				return
			}
		}
	}()

	var msgID uint64
	send := func(m *agentv1.AgentMessage) error {
		msgID++
		m.Id = msgID
		if err := stream.Send(m); err != nil {
			// Deliberately NOT agent/session's streamErr here: calling
			// stream.Recv while the receiver goroutine is also in Recv can
			// block forever, ignoring ctx (seen in the restart phase: one
			// agent in 10,000 never reconnected). The receiver goroutine
			// owns Recv and reports the stream's real status.
			select {
			case rerr := <-recvErr:
				return rerr
			case <-ctx.Done():
				return err
			case <-time.After(5 * time.Second):
				return err
			}
		}
		return nil
	}
	heartbeat := func() error {
		if err := send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{
			SentAt: timestamppb.Now(),
		}}}); err != nil {
			return err
		}
		a.lastBeat.Store(time.Now().UnixNano())
		a.f.sent.Add(1)
		return nil
	}
	if err := heartbeat(); err != nil {
		return err
	}
	// Plan reports, as agent/session sends them: the latest status of each
	// plan whose latest version the control plane has not acknowledged,
	// each version once per session; inFlight maps a message id to the
	// report it carried, until its Ack.
	type sentReport struct {
		plan    string
		version uint64
	}
	sent := map[string]uint64{}
	inFlight := map[uint64]sentReport{}
	report := func() error {
		if a.plans == nil {
			return nil
		}
		for _, r := range a.plans.unreported() {
			id := r.Status.GetPlanId()
			if sent[id] >= r.Version {
				continue
			}
			if err := send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_PlanStatus{PlanStatus: r.Status}}); err != nil {
				return err
			}
			sent[id] = r.Version
			inFlight[msgID] = sentReport{plan: id, version: r.Version}
		}
		return nil
	}
	if err := report(); err != nil {
		return err
	}
	override, changed := a.f.pace.get()
	interval := serverInterval
	if override > 0 {
		interval = override
	}
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			return err
		case <-timer.C:
			if err := heartbeat(); err != nil {
				return err
			}
			timer.Reset(interval)
		case <-changed:
			override, changed = a.f.pace.get()
			next := serverInterval
			if override > 0 {
				next = override
			}
			if next < interval {
				timer.Reset(rand.N(next) + 1) // random phase: spread the fleet
			} else {
				timer.Reset(next)
			}
			interval = next
		case m := <-in:
			switch b := m.GetBody().(type) {
			case *agentv1.ControlMessage_Config:
				if s := b.Config.GetHeartbeatIntervalSeconds(); s > 0 {
					serverInterval = time.Duration(s) * time.Second
					if override <= 0 {
						interval = serverInterval
						timer.Reset(interval)
					}
				}
			case *agentv1.ControlMessage_Ack:
				if r, ok := inFlight[b.Ack.GetRef()]; ok {
					delete(inFlight, b.Ack.GetRef())
					if state := a.plans.acked(r.plan, r.version); state != "" {
						a.f.planDone(r.plan, state, time.Now())
					}
				}
			case *agentv1.ControlMessage_PlanOffer:
				a.f.plansOffered.Add(1)
				if a.plans == nil {
					if err := send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_PlanStatus{PlanStatus: &agentv1.PlanStatus{
						PlanId: b.PlanOffer.GetPlanId(), Sequence: b.PlanOffer.GetSequence(),
						State: "refused", Reason: "NO_RUNNER", Message: "simulated agent without a plan runner",
					}}}); err != nil {
						return err
					}
					continue
				}
				// The runner journals the plan accepted (reported at
				// once), then executes it (reported when done).
				a.plans.offer(ctx, b.PlanOffer)
				if err := report(); err != nil {
					return err
				}
				if a.plans.run() {
					if err := report(); err != nil {
						return err
					}
				}
			}
		}
	}
}

// streamErr returns the stream's real status after a failed Send.
func streamErr(stream agentv1.AgentService_SessionClient, err error) error {
	if _, rerr := stream.Recv(); rerr != nil {
		return rerr
	}
	return err
}
