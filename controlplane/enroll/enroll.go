// Package enroll serves EnrollmentService: it turns a one-time join token and
// an agent's CSR into an X.509-SVID, atomically consuming the token. It is the
// only RPC an unauthenticated caller may reach.
//
// Only controlplane packages import enroll.
package enroll

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"attache.dev/attache/controlplane/ca"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/jointoken"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// Config configures the service.
type Config struct {
	Store store.Store
	CA    *ca.CA
	// TrustRoot returns the signed trust-root envelope whose sha256 a join
	// token pinned: the current root, or an older version kept in the
	// history when the root rotated after the token was made (the agent
	// then follows the newer versions on its first session). false means
	// no kept version has that hash.
	TrustRoot func(pin [32]byte) ([]byte, bool)
	SVIDTTL   time.Duration
	Logger    *slog.Logger
	Now       func() time.Time
}

// Service implements agentv1.EnrollmentServiceServer.
type Service struct {
	agentv1.UnimplementedEnrollmentServiceServer
	cfg Config
	td  spiffeid.TrustDomain
}

// New returns the enrollment service.
func New(cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg, td: cfg.CA.TrustDomain()}
}

// Enroll implements agentv1.EnrollmentServiceServer.
func (s *Service) Enroll(ctx context.Context, req *agentv1.EnrollRequest) (*agentv1.EnrollResponse, error) {
	now := s.cfg.Now()
	src := ""
	if p, ok := peer.FromContext(ctx); ok {
		src = p.Addr.String()
	}
	tok, err := validate(req, s.td.Name(), s.cfg.CA.KeySHA256())
	if err != nil {
		s.refuse(ctx, src, tok.ID, "", status.Convert(err).Message())
		return nil, err
	}

	stored, err := s.cfg.Store.GetJoinToken(ctx, tok.ID)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			s.refuse(ctx, src, tok.ID, "", "unknown join token")
			return nil, status.Error(codes.Unauthenticated, "join token is not valid (unknown or revoked)")
		}
		return nil, s.internal(err)
	}
	// Before the token is spent: a root this control plane no longer knows
	// would make the agent refuse what it is sent.
	root, ok := s.cfg.TrustRoot(tok.TrustRootSHA256)
	if !ok {
		s.refuse(ctx, src, tok.ID, stored.Tenant, "join token pins an unknown trust root")
		return nil, status.Error(codes.FailedPrecondition, "the trust root this join token pins is not one this control plane has; create a new join token")
	}
	agentID, err := newAgentID()
	if err != nil {
		return nil, s.internal(err)
	}
	id, err := identity.AgentID(s.td, stored.Tenant, agentID)
	if err != nil {
		return nil, s.internal(err)
	}
	chain, err := s.cfg.CA.IssueFromCSR(req.GetCsr(), id, s.cfg.SVIDTTL, now)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "issue SVID: %v", err)
	}
	detail, _ := json.Marshal(map[string]string{"token_id": tok.ID, "hostname": req.GetHostname(), "agent_version": req.GetAgentVersion()})
	_, err = s.cfg.Store.Enroll(ctx, tok.ID, tok.SecretHash(), now, store.Agent{
		Tenant:        stored.Tenant,
		ID:            agentID,
		SPIFFEID:      id.String(),
		Hostname:      req.GetHostname(),
		Version:       req.GetAgentVersion(),
		EnrolledAt:    now,
		CertSerial:    chain[0].SerialNumber.Text(16),
		CertExpiresAt: chain[0].NotAfter,
	}, auditlog.Entry{
		Time: now, Actor: id.String(), Role: "agent", Action: "agent.enroll",
		Tenant: stored.Tenant, Target: agentID, Outcome: auditlog.OutcomeSuccess, Source: src, Detail: detail,
	})
	switch {
	case err == nil:
	case errors.Is(err, store.ErrTokenUsed):
		s.refuse(ctx, src, tok.ID, stored.Tenant, "join token already used")
		return nil, status.Error(codes.Unauthenticated, "join token has already been used: create a new one with `attache token create`")
	case errors.Is(err, store.ErrTokenExpired):
		s.refuse(ctx, src, tok.ID, stored.Tenant, "join token expired")
		return nil, status.Error(codes.Unauthenticated, "join token has expired: create a new one with `attache token create`")
	case errors.Is(err, store.ErrNotFound):
		s.refuse(ctx, src, tok.ID, stored.Tenant, "join token secret does not match")
		return nil, status.Error(codes.Unauthenticated, "join token is not valid (unknown or revoked)")
	default:
		return nil, s.internal(err)
	}
	s.cfg.Logger.Info("agent enrolled", "tenant", stored.Tenant, "agent", agentID, "token_id", tok.ID, "source", src)
	return &agentv1.EnrollResponse{
		SpiffeId:       id.String(),
		SvidChain:      identity.CertsDER(chain),
		TrustBundle:    identity.CertsDER(s.cfg.CA.Bundle().X509Authorities()),
		TrustRoot:      root,
		ControlPlaneId: identity.ControlPlaneID(s.td).String(),
	}, nil
}

// validate checks everything in a request that needs no store: the token's
// form and that this control plane issued it, the CSR, the field sizes.
// Errors are gRPC status errors; tok.ID is set whenever the token parsed.
func validate(req *agentv1.EnrollRequest, trustDomain string, caKey [32]byte) (jointoken.Token, error) {
	tok, err := jointoken.Parse(req.GetJoinToken())
	if err != nil {
		return jointoken.Token{}, status.Errorf(codes.InvalidArgument, "join token: %v", err)
	}
	if tok.TrustDomain != trustDomain || tok.CAKeySHA256 != caKey {
		return tok, status.Error(codes.FailedPrecondition, "join token was issued by another control plane (trust domain or CA does not match)")
	}
	if _, err := identity.ParseCSR(req.GetCsr()); err != nil {
		return tok, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if len(req.GetAgentVersion()) > 64 {
		return tok, status.Error(codes.InvalidArgument, "agent_version: longer than 64 bytes")
	}
	if len(req.GetHostname()) > 255 {
		return tok, status.Error(codes.InvalidArgument, "hostname: longer than 255 bytes")
	}
	return tok, nil
}

func (s *Service) refuse(ctx context.Context, src, tokenID, tenant, reason string) {
	detail, _ := json.Marshal(map[string]string{"token_id": tokenID, "reason": reason})
	if _, err := s.cfg.Store.AppendAudit(context.WithoutCancel(ctx), auditlog.Entry{
		Time: s.cfg.Now(), Actor: "anonymous", Role: "anonymous", Action: "agent.enroll",
		Tenant: tenant, Target: tokenID, Outcome: auditlog.OutcomeDenied, Source: src, Detail: detail,
	}); err != nil {
		s.cfg.Logger.Error("audit refused enrollment", "err", err)
	}
	s.cfg.Logger.Warn("enrollment refused", "token_id", tokenID, "tenant", tenant, "reason", reason, "source", src)
}

func (s *Service) internal(err error) error {
	s.cfg.Logger.Error("enrollment failed", "err", err)
	return status.Error(codes.Internal, "internal error during enrollment")
}

func newAgentID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("agent id: %w", err)
	}
	return hex.EncodeToString(b), nil
}
