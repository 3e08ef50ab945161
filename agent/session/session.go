// Package session runs the agent's one long-lived stream to the control
// plane: it dials over mTLS (the agent's SVID, the control plane's SPIFFE ID
// authorized), says hello, sends heartbeats, handles what the control plane
// offers, and reconnects with jittered exponential backoff when the stream
// breaks.
//
// Only agent packages import session.
package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/version"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// ErrRevoked means the control plane revoked this agent: retrying is
// pointless, it must be enrolled again with a new join token.
var ErrRevoked = errors.New("this agent was revoked by the control plane; enroll it again with a new join token")

// Config configures a Client.
type Config struct {
	State  *svid.State
	Logger *slog.Logger
	// Backoff bounds; defaults 250ms and 10s.
	BackoffBase, BackoffMax time.Duration
	// StableAfter resets the backoff once a session has lasted this long.
	StableAfter time.Duration
	// Providers is the provider inventory announced in Hello.
	Providers []*agentv1.ProviderInfo
	// Health reports component health for heartbeats; may be nil.
	Health func() []*agentv1.ComponentHealth
	// Plans receives plan offers and supplies plan status reports.
	// Required.
	Plans Plans
	// Usage supplies spooled usage batches and learns of their
	// acknowledgement; nil sends none.
	Usage Usage
	// UsageWindow bounds the usage batches in flight (sent, not yet
	// acknowledged) on one session. Default 8.
	UsageWindow int
}

// Usage is what the session needs from the agent's usage spool: batches are
// written durably before they are offered here, and deleted only once the
// control plane acknowledged them, so a batch is sent again after any
// disconnect until it is acknowledged.
type Usage interface {
	// Changed is signalled when new batches were spooled.
	Changed() <-chan struct{}
	// Pending returns up to limit unacknowledged batches with a sequence
	// above after, in sequence order.
	Pending(after uint64, limit int) ([]*agentv1.UsageBatch, error)
	// Acked records that the control plane stored batch seq.
	Acked(seq uint64) error
	// HealthHistory removes and returns up to limit spooled health
	// snapshots (changes of component status, with the time they
	// happened), oldest first, sent before each live heartbeat.
	HealthHistory(limit int) ([]*agentv1.Heartbeat, error)
}

// Plans is what the session needs from the agent's plan runner
// (agent/planrun.Runner implements it).
type Plans interface {
	// HelloState is what Hello reports: the last accepted plan sequence and
	// the version of the pinned trust root.
	HelloState() (lastSequence uint64, trustRootVersion uint32)
	// FollowRoots follows trust roots newer than the pinned one.
	FollowRoots(ctx context.Context, roots [][]byte) error
	// Offer verifies and journals, or refuses, one offered plan. It must
	// not block on the plan's execution. An error (the agent's own failure,
	// e.g. its journal cannot be written) ends the session: the plan stays
	// unacknowledged and is offered again after the reconnect.
	Offer(ctx context.Context, o *agentv1.PlanOffer) error
	// Changed is signalled when a plan's journaled state changed.
	Changed() <-chan struct{}
	// Unreported returns the latest status of every plan whose latest
	// state the control plane has not acknowledged.
	Unreported() []Report
	// Acked records that the control plane stored the report of version.
	Acked(planID string, version uint64)
}

// Report is the status of one plan at one journal version.
type Report struct {
	Status  *agentv1.PlanStatus
	Version uint64
}

// Client keeps a session open.
type Client struct {
	cfg Config
}

// New returns a client.
func New(cfg Config) *Client {
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 250 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 10 * time.Second
	}
	if cfg.StableAfter <= 0 {
		cfg.StableAfter = 30 * time.Second
	}
	if cfg.UsageWindow <= 0 {
		cfg.UsageWindow = 8
	}
	return &Client{cfg: cfg}
}

// Run keeps a session open until ctx ends (nil) or the agent is revoked
// (ErrRevoked) or its SVID expired (an error saying so).
func (c *Client) Run(ctx context.Context) error {
	b := Backoff{Base: c.cfg.BackoffBase, Max: c.cfg.BackoffMax}
	for {
		if leaf := c.cfg.State.Leaf(); time.Now().After(leaf.NotAfter) {
			return fmt.Errorf("the agent's SVID expired at %s while it could not reach the control plane; enroll it again with a new join token", leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		start := time.Now()
		err := c.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrRevoked) {
			return err
		}
		if time.Since(start) >= c.cfg.StableAfter {
			b.Reset()
		}
		d := b.Next()
		c.cfg.Logger.Warn("session ended; reconnecting", "err", err, "in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

// runOnce dials, runs one session and returns why it ended.
func (c *Client) runOnce(ctx context.Context) error {
	st := c.cfg.State
	conn, err := grpc.NewClient(st.Meta.ControlPlaneAddr, grpcx.DialOptions(st.TLSCredentials())...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := agentv1.NewAgentServiceClient(conn).Session(ctx)
	if err != nil {
		return classify(err)
	}
	hostname, _ := os.Hostname()
	hello := &agentv1.Hello{
		AgentVersion:      version.Version,
		CapabilityVersion: version.CapabilityVersion,
		Inventory:         &agentv1.Inventory{Hostname: hostname, Os: runtime.GOOS, Arch: runtime.GOARCH, Providers: c.cfg.Providers},
	}
	hello.LastPlanSequence, hello.TrustRootVersion = c.cfg.Plans.HelloState()
	if err := stream.Send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Hello{Hello: hello}}); err != nil {
		return classify(streamErr(stream, err))
	}
	first, err := stream.Recv()
	if err != nil {
		return classify(err)
	}
	welcome := first.GetWelcome()
	if welcome == nil {
		return errors.New("control plane did not answer hello with welcome")
	}
	interval := heartbeatInterval(defaultHeartbeat, welcome.GetConfig())
	c.cfg.Logger.Info("session open", "session", welcome.GetSessionId(), "control_plane", st.Meta.ControlPlaneAddr, "heartbeat_interval", interval)
	if roots := welcome.GetTrustRoots(); len(roots) > 0 {
		if err := c.cfg.Plans.FollowRoots(ctx, roots); err != nil {
			// Refused and audited by the runner; plans signed under the
			// refused root will be refused one by one.
			c.cfg.Logger.Error("trust root rotation refused", "err", err)
		}
	}

	// Sends happen only on this goroutine; the receiver hands messages over.
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
			// Send reports io.EOF; the real status arrives on Recv, which
			// the receiver goroutine owns: wait for what it saw.
			select {
			case rerr := <-recvErr:
				return classify(rerr)
			case <-ctx.Done():
				return err
			case <-time.After(5 * time.Second):
				return err
			}
		}
		return nil
	}
	heartbeat := func() error {
		if c.cfg.Usage != nil {
			history, err := c.cfg.Usage.HealthHistory(100)
			if err != nil {
				c.cfg.Logger.Warn("health history not sent", "err", err)
			}
			for _, hb := range history {
				if err := send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: hb}}); err != nil {
					return err
				}
			}
		}
		var comps []*agentv1.ComponentHealth
		if c.cfg.Health != nil {
			comps = c.cfg.Health()
		}
		return send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Heartbeat{Heartbeat: &agentv1.Heartbeat{
			SentAt: timestamppb.Now(), Components: comps,
		}}})
	}
	if err := heartbeat(); err != nil {
		return err
	}
	// Plan reports: the latest status of each plan whose latest version the
	// control plane has not acknowledged. sent remembers what this session
	// already sent (a version is sent once per session); inFlight maps a
	// message id to the report it carried, until its Ack.
	type sentReport struct {
		plan    string
		version uint64
	}
	sent := map[string]uint64{}
	inFlight := map[uint64]sentReport{}
	report := func() error {
		for _, r := range c.cfg.Plans.Unreported() {
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
	// Usage batches: every unacknowledged batch is sent once per session,
	// at most UsageWindow in flight; usageSent is the highest sequence sent.
	var (
		usageSent     uint64
		usageInFlight = map[uint64]uint64{} // message id → batch sequence
		usageChanged  <-chan struct{}
	)
	sendUsage := func() error {
		if c.cfg.Usage == nil {
			return nil
		}
		room := c.cfg.UsageWindow - len(usageInFlight)
		if room <= 0 {
			return nil
		}
		batches, err := c.cfg.Usage.Pending(usageSent, room)
		if err != nil {
			return fmt.Errorf("usage spool: %w", err)
		}
		for _, b := range batches {
			if err := send(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_UsageBatch{UsageBatch: b}}); err != nil {
				return err
			}
			usageInFlight[msgID] = b.GetSequence()
			usageSent = max(usageSent, b.GetSequence())
		}
		return nil
	}
	if c.cfg.Usage != nil {
		usageChanged = c.cfg.Usage.Changed()
	}
	if err := sendUsage(); err != nil {
		return err
	}
	changed := c.cfg.Plans.Changed()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			return classify(err)
		case <-tick.C:
			if err := heartbeat(); err != nil {
				return err
			}
		case <-changed:
			if err := report(); err != nil {
				return err
			}
		case <-usageChanged:
			if err := sendUsage(); err != nil {
				return err
			}
		case m := <-in:
			switch b := m.GetBody().(type) {
			case *agentv1.ControlMessage_Config:
				if next := heartbeatInterval(interval, b.Config); next != interval {
					interval = next
					tick.Reset(interval)
				}
			case *agentv1.ControlMessage_Ack:
				if seq, ok := usageInFlight[b.Ack.GetRef()]; ok {
					delete(usageInFlight, b.Ack.GetRef())
					if got := b.Ack.GetUsageSequence(); got != seq {
						return fmt.Errorf("control plane acknowledged usage batch %d for the message that carried batch %d", got, seq)
					}
					if err := c.cfg.Usage.Acked(seq); err != nil {
						return fmt.Errorf("usage spool: %w", err)
					}
					if err := sendUsage(); err != nil {
						return err
					}
				}
				if r, ok := inFlight[b.Ack.GetRef()]; ok {
					delete(inFlight, b.Ack.GetRef())
					c.cfg.Plans.Acked(r.plan, r.version)
					if sent[r.plan] == r.version {
						delete(sent, r.plan) // reported; Unreported no longer lists it at this version
					}
				}
			case *agentv1.ControlMessage_PlanOffer:
				if err := c.cfg.Plans.Offer(ctx, b.PlanOffer); err != nil {
					return fmt.Errorf("plan offer: %w", err)
				}
				if err := report(); err != nil {
					return err
				}
			default:
				c.cfg.Logger.Debug("ignoring unknown control message")
			}
		}
	}
}

// Heartbeat interval bounds: whatever the control plane says, the agent
// neither floods it nor goes silent for long.
const (
	defaultHeartbeat = 15 * time.Second
	minHeartbeat     = time.Second
	maxHeartbeat     = 10 * time.Minute
)

// heartbeatInterval is the interval c asks for, clamped to the bounds, or cur
// when c does not set one.
func heartbeatInterval(cur time.Duration, c *agentv1.AgentConfig) time.Duration {
	s := c.GetHeartbeatIntervalSeconds()
	if s == 0 {
		return cur
	}
	return min(max(time.Duration(s)*time.Second, minHeartbeat), maxHeartbeat)
}

// streamErr returns the stream's real status after a failed Send (Send
// reports io.EOF; the status arrives on Recv). Only for use before the
// receiver goroutine starts: two concurrent Recv calls are not allowed.
func streamErr(stream agentv1.AgentService_SessionClient, err error) error {
	if _, rerr := stream.Recv(); rerr != nil {
		return rerr
	}
	return err
}

// classify turns a revocation into ErrRevoked.
func classify(err error) error {
	if grpcx.HasReason(err, grpcx.ReasonAgentRevoked) {
		return fmt.Errorf("%w (%s)", ErrRevoked, status.Convert(err).Message())
	}
	return err
}
