// Package agentapi serves AgentService to enrolled agents over mTLS: the
// long-lived session stream (hello, heartbeats, reports) and SVID renewal.
// The tenant of every message is taken from the caller's verified SPIFFE ID;
// a message that names another tenant ends the session and is audited.
// Revoked agents are refused and their live sessions are cut within seconds.
//
// Plans: after Welcome (which carries the trust roots newer than the agent's)
// a session offers the agent's pending plans in sequence order, each once per
// session, and offers new ones when nudged (NotifyPlans on this replica, a
// store poll for plans created on others). A PlanStatus is stored and only
// then acknowledged, so the agent re-sends whatever the store did not take.
//
// Only controlplane packages import agentapi.
package agentapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"attache.dev/attache/controlplane/ca"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// Config configures the service.
type Config struct {
	Store             store.Store
	CA                *ca.CA
	SVIDTTL           time.Duration
	HeartbeatInterval time.Duration // told to agents in Welcome
	// RevocationPoll is how often the store is asked for new revocations.
	RevocationPoll time.Duration
	// HelloTimeout bounds how long a new session may wait before Hello.
	HelloTimeout time.Duration
	// TrustRoots returns the signed trust-root envelopes of the versions
	// after after+1 … newest, oldest first (consecutive versions), sent in
	// Welcome and plan offers. Nil: none are sent.
	TrustRoots func(after uint32) [][]byte
	// Envelope returns the envelope to offer for a pending plan (the plans
	// service re-signs one whose key was rotated away). Nil: p.Envelope.
	Envelope func(ctx context.Context, p store.Plan) ([]byte, error)
	Logger   *slog.Logger
	Now      func() time.Time
}

// Service implements agentv1.AgentServiceServer. Run must be running for
// heartbeats to reach the store and revocations to cut sessions.
type Service struct {
	agentv1.UnimplementedAgentServiceServer
	cfg      Config
	td       spiffeid.TrustDomain
	sessions *registry
	beats    *batcher
	// frozen mirrors the store's fleet-wide freeze (polled by watch): no
	// plan is offered while it is set.
	frozen atomic.Bool
}

// New returns the service.
func New(cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 15 * time.Second
	}
	if cfg.RevocationPoll <= 0 {
		cfg.RevocationPoll = time.Second
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = 30 * time.Second
	}
	return &Service{
		cfg:      cfg,
		td:       cfg.CA.TrustDomain(),
		sessions: newRegistry(),
		beats:    newBatcher(cfg.Store, cfg.Logger),
	}
}

// Run flushes heartbeats and watches for revocations and new plans until ctx
// ends.
func (s *Service) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.beats.Run(ctx) }()
	s.watch(ctx)
	return <-errc
}

// Flush writes queued heartbeats and session changes now; the server calls
// it after its gRPC server stopped, so sessions cut by the stop are recorded.
func (s *Service) Flush(ctx context.Context) { s.beats.flush(ctx) }

// errRevoked is the cancel cause of a session whose agent was revoked.
var errRevoked = errors.New("agent revoked")

// caller authorizes the peer as an enrolled, unrevoked agent of this trust domain.
func (s *Service) caller(ctx context.Context) (store.Agent, spiffeid.ID, error) {
	id, ok := grpcx.PeerID(ctx)
	if !ok {
		return store.Agent{}, id, status.Error(codes.Unauthenticated, "client certificate required")
	}
	tenant, agentID, err := identity.ParseAgentID(s.td, id)
	if err != nil {
		return store.Agent{}, id, status.Errorf(codes.PermissionDenied, "%v", err)
	}
	a, err := s.cfg.Store.GetAgent(ctx, store.AgentKey{Tenant: tenant, ID: agentID})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return a, id, status.Errorf(codes.PermissionDenied, "agent %s is not enrolled", id)
	case err != nil:
		s.cfg.Logger.Error("load agent", "agent", id.String(), "err", err)
		return a, id, status.Error(codes.Unavailable, "control plane store unavailable")
	case a.RevokedAt != nil:
		s.audit(ctx, id, tenant, "session.open", auditlog.OutcomeDenied, map[string]string{"reason": "agent revoked"})
		return a, id, grpcx.Error(codes.PermissionDenied, grpcx.ReasonAgentRevoked,
			fmt.Sprintf("agent %s was revoked at %s", id, a.RevokedAt.UTC().Format(time.RFC3339)))
	}
	return a, id, nil
}

// RenewSVID implements agentv1.AgentServiceServer.
func (s *Service) RenewSVID(ctx context.Context, req *agentv1.RenewSVIDRequest) (*agentv1.RenewSVIDResponse, error) {
	a, id, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	chain, err := s.cfg.CA.IssueFromCSR(req.GetCsr(), id, s.cfg.SVIDTTL, now)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if err := s.cfg.Store.UpdateAgentCert(ctx, store.AgentKey{Tenant: a.Tenant, ID: a.ID}, chain[0].SerialNumber.Text(16), chain[0].NotAfter); err != nil {
		s.cfg.Logger.Error("record renewed SVID", "agent", id.String(), "err", err)
		return nil, status.Error(codes.Unavailable, "control plane store unavailable")
	}
	s.audit(ctx, id, a.Tenant, "agent.svid.renew", auditlog.OutcomeSuccess, map[string]string{
		"serial": chain[0].SerialNumber.Text(16), "expires_at": chain[0].NotAfter.UTC().Format(time.RFC3339),
	})
	return &agentv1.RenewSVIDResponse{
		SvidChain:   identity.CertsDER(chain),
		TrustBundle: identity.CertsDER(s.cfg.CA.Bundle().X509Authorities()),
	}, nil
}

// Session implements agentv1.AgentServiceServer.
func (s *Service) Session(stream agentv1.AgentService_SessionServer) error {
	ctx := stream.Context()
	a, id, err := s.caller(ctx)
	if err != nil {
		return err
	}
	key := store.AgentKey{Tenant: a.Tenant, ID: a.ID}
	log := s.cfg.Logger.With("tenant", a.Tenant, "agent", a.ID)

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The only receiver of this stream; the handler goroutine selects over
	// what it delivers, revocation and the hello deadline.
	in := make(chan *agentv1.AgentMessage)
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
			case <-sctx.Done():
				return
			}
		}
	}()

	hello, err := s.awaitHello(sctx, in, recvErr)
	if err != nil {
		return err
	}
	inv, _ := protojson.Marshal(hello.GetInventory())
	sessionID := newSessionID()
	now := s.cfg.Now()
	s.beats.session(store.SessionUpdate{
		AgentKey: key, SessionID: sessionID, Connected: true, At: now,
		Version: hello.GetAgentVersion(), CapabilityVersion: hello.GetCapabilityVersion(), Inventory: inv,
	})
	nudge := make(chan struct{}, 1)
	s.sessions.add(key, sessionID, cancel, nudge)
	defer func() {
		s.sessions.remove(key, sessionID)
		s.beats.session(store.SessionUpdate{AgentKey: key, SessionID: sessionID, Connected: false, At: s.cfg.Now()})
	}()
	log.Info("session opened", "session", sessionID, "version", hello.GetAgentVersion(), "capability", hello.GetCapabilityVersion())

	plans := &offerer{key: key, rootVersion: hello.GetTrustRootVersion(), offered: make(map[string]bool)}
	if err := stream.Send(&agentv1.ControlMessage{Body: &agentv1.ControlMessage_Welcome{Welcome: &agentv1.Welcome{
		SessionId:  sessionID,
		ServerTime: timestamppb.New(now),
		Config:     &agentv1.AgentConfig{HeartbeatIntervalSeconds: uint32(s.cfg.HeartbeatInterval / time.Second)},
		TrustRoots: plans.sendRoots(s),
	}}}); err != nil {
		return err
	}

	var lastHealth []byte
	// retry is set while a store or envelope error keeps pending plans
	// from being offered.
	var retry <-chan time.Time
	offer := func() error {
		done, err := s.offerPending(sctx, stream, plans, log)
		retry = nil
		if !done && err == nil && sctx.Err() == nil {
			retry = time.After(offerRetry)
		}
		return err
	}
	if err := offer(); err != nil {
		return s.sessionEnd(sctx, id, err)
	}
	for {
		var err error
		select {
		case <-sctx.Done():
			if errors.Is(context.Cause(sctx), errRevoked) {
				log.Info("session closed: agent revoked", "session", sessionID)
			}
			return s.sessionEnd(sctx, id, nil)
		case err := <-recvErr:
			log.Info("session closed", "session", sessionID, "reason", err)
			return nil
		case m := <-in:
			err = s.handle(sctx, stream, id, key, m, &lastHealth)
		case <-nudge:
			err = offer()
		case <-retry:
			err = offer()
		}
		if err != nil {
			return s.sessionEnd(sctx, id, err)
		}
	}
}

// sessionEnd is the status a session ends with: why its context ended, if
// it did (revocation, replacement, the client going away), else err.
func (s *Service) sessionEnd(sctx context.Context, id spiffeid.ID, err error) error {
	if sctx.Err() == nil {
		return err
	}
	if errors.Is(context.Cause(sctx), errRevoked) {
		return grpcx.Error(codes.PermissionDenied, grpcx.ReasonAgentRevoked, fmt.Sprintf("agent %s was revoked", id))
	}
	return status.FromContextError(sctx.Err()).Err()
}

// awaitHello waits for the first message, which must be a Hello, for at
// most HelloTimeout.
func (s *Service) awaitHello(ctx context.Context, in <-chan *agentv1.AgentMessage, recvErr <-chan error) (*agentv1.Hello, error) {
	t := time.NewTimer(s.cfg.HelloTimeout)
	defer t.Stop()
	select {
	case m := <-in:
		h := m.GetHello()
		if h == nil {
			return nil, status.Error(codes.InvalidArgument, "session must start with hello")
		}
		if len(h.GetAgentVersion()) > 64 {
			return nil, status.Error(codes.InvalidArgument, "hello: agent_version longer than 64 bytes")
		}
		return h, nil
	case err := <-recvErr:
		return nil, err
	case <-t.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "no hello within %s", s.cfg.HelloTimeout)
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// handle processes one message. A returned error ends the session.
// lastHealth is the session's last recorded health (see recordHealth).
func (s *Service) handle(ctx context.Context, stream agentv1.AgentService_SessionServer, id spiffeid.ID, key store.AgentKey, m *agentv1.AgentMessage, lastHealth *[]byte) error {
	switch b := m.GetBody().(type) {
	case *agentv1.AgentMessage_Heartbeat:
		var health []byte
		if cs := b.Heartbeat.GetComponents(); len(cs) > 0 {
			health = healthJSON(cs)
		}
		s.beats.add(store.Heartbeat{AgentKey: key, At: s.cfg.Now(), Health: health})
		s.recordHealth(ctx, key, lastHealth, health, b.Heartbeat.GetComponents(), s.heartbeatTime(b.Heartbeat))
		return nil
	case *agentv1.AgentMessage_PlanStatus:
		if t := foreignTenant(m, key.Tenant); t != "" {
			return s.crossTenant(ctx, id, key, t, "plan_status")
		}
		return s.planStatus(ctx, stream, id, key, m)
	case *agentv1.AgentMessage_UsageBatch:
		if t := foreignTenant(m, key.Tenant); t != "" {
			return s.crossTenant(ctx, id, key, t, "usage_batch")
		}
		return s.usageBatch(ctx, stream, id, key, m)
	case *agentv1.AgentMessage_Hello:
		return status.Error(codes.InvalidArgument, "hello sent twice on one session")
	default:
		// A message type newer than this control plane: ignore it.
		s.cfg.Logger.Debug("ignoring unknown session message", "agent", id.String())
		return nil
	}
}

// foreignTenant returns the first tenant m names that is not own, or "".
// Every message member that carries a tenant must be listed here.
func foreignTenant(m *agentv1.AgentMessage, own string) string {
	check := func(t string) bool { return t != "" && t != own }
	switch b := m.GetBody().(type) {
	case *agentv1.AgentMessage_PlanStatus:
		if t := b.PlanStatus.GetTenant(); check(t) {
			return t
		}
	case *agentv1.AgentMessage_UsageBatch:
		for _, r := range b.UsageBatch.GetRecords() {
			if t := r.GetTenant(); check(t) {
				return t
			}
		}
	}
	return ""
}

func (s *Service) crossTenant(ctx context.Context, id spiffeid.ID, key store.AgentKey, named, kind string) error {
	s.audit(ctx, id, key.Tenant, "session.cross_tenant", auditlog.OutcomeDenied, map[string]string{
		"message": kind, "named_tenant": named,
	})
	s.cfg.Logger.Warn("cross-tenant message refused", "tenant", key.Tenant, "agent", key.ID, "named_tenant", named, "message", kind)
	return grpcx.Error(codes.PermissionDenied, grpcx.ReasonCrossTenant,
		fmt.Sprintf("%s names tenant %q but this agent belongs to tenant %q", kind, named, key.Tenant))
}

func (s *Service) audit(ctx context.Context, id spiffeid.ID, tenant, action, outcome string, detail map[string]string) {
	if _, err := s.cfg.Store.AppendAudit(context.WithoutCancel(ctx), s.auditEntry(ctx, id, tenant, action, id.String(), outcome, detail)); err != nil {
		s.cfg.Logger.Error("append audit", "action", action, "err", err)
	}
}

// auditEntry is an audit entry for an action of agent id.
func (s *Service) auditEntry(ctx context.Context, id spiffeid.ID, tenant, action, target, outcome string, detail map[string]string) auditlog.Entry {
	src := ""
	if p, ok := peer.FromContext(ctx); ok {
		src = p.Addr.String()
	}
	var d json.RawMessage
	if detail != nil {
		d, _ = json.Marshal(detail)
	}
	return auditlog.Entry{
		Time: s.cfg.Now(), Actor: id.String(), Role: "agent", Action: action, Tenant: tenant,
		Target: target, Outcome: outcome, Source: src, Detail: d,
	}
}

// watch polls the store (so it works across replicas sharing one database)
// for revocations, cutting the matching local sessions, and for new plans,
// nudging the matching local sessions to offer them.
func (s *Service) watch(ctx context.Context) {
	since := s.cfg.Now().Add(-time.Minute)
	s.pollFreeze(ctx)
	t := time.NewTicker(s.cfg.RevocationPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.cfg.Now()
		s.pollFreeze(ctx)
		keys, err := s.cfg.Store.RevokedSince(ctx, since)
		if err != nil {
			s.cfg.Logger.Warn("poll revocations", "err", err)
			continue
		}
		for _, k := range keys {
			if s.sessions.cancel(k, errRevoked) {
				s.cfg.Logger.Info("cutting session of revoked agent", "tenant", k.Tenant, "agent", k.ID)
			}
		}
		// A session that has offered a plan already ignores the nudge.
		keys, err = s.cfg.Store.PlansCreatedSince(ctx, since)
		if err != nil {
			s.cfg.Logger.Warn("poll new plans", "err", err)
			continue
		}
		for _, k := range keys {
			s.sessions.nudge(k)
		}
		// Overlap windows so a revocation or plan committed during a poll
		// (or stamped by a replica whose clock is a little behind) is seen.
		since = now.Add(-5 * time.Second)
	}
}

// pollFreeze reads the fleet-wide freeze. While it is set no plan is
// offered; when it is lifted every session on this replica looks for its
// pending plans at once.
func (s *Service) pollFreeze(ctx context.Context) {
	f, err := s.cfg.Store.GetFreeze(ctx)
	if err != nil {
		s.cfg.Logger.Warn("poll freeze", "err", err)
		return
	}
	was := s.frozen.Swap(f != nil)
	switch {
	case f != nil && !was:
		s.cfg.Logger.Warn("fleet frozen: no plan is offered until unfrozen", "by", f.By, "reason", f.Reason)
	case f == nil && was:
		s.cfg.Logger.Info("fleet unfrozen: offering pending plans")
		s.sessions.nudgeAll()
	}
}

func healthJSON(cs []*agentv1.ComponentHealth) []byte {
	out := make([]json.RawMessage, 0, len(cs))
	for _, c := range cs {
		b, err := protojson.Marshal(c)
		if err == nil {
			out = append(out, b)
		}
	}
	b, _ := json.Marshal(out)
	return b
}

func newSessionID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
