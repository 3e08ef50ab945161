package svid

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// TLSCredentials returns the gRPC credentials of the enrolled agent: its
// current SVID (swapped in place on renewal) and the control plane's ID.
func (s *State) TLSCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(identity.ClientTLSConfig(s.Source, s.ServerID))
}

// RenewAt is when the current SVID should be renewed: at half its lifetime.
func (s *State) RenewAt() time.Time {
	leaf := s.Leaf()
	return leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
}

// Renew obtains a new SVID for a fresh key over a new mTLS connection,
// persists it and swaps it into the source. Established connections — the
// session — are not touched.
func (s *State) Renew(ctx context.Context) error {
	key, err := identity.NewKey()
	if err != nil {
		return err
	}
	csr, err := identity.NewCSR(key)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(s.Meta.ControlPlaneAddr, grpcx.DialOptions(s.TLSCredentials())...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := agentv1.NewAgentServiceClient(conn).RenewSVID(ctx, &agentv1.RenewSVIDRequest{Csr: csr})
	if err != nil {
		return fmt.Errorf("renew SVID: %w", err)
	}
	sv, err := svidFrom(resp.GetSvidChain(), key)
	if err != nil {
		return fmt.Errorf("renew SVID: %w", err)
	}
	if sv.ID != s.ID {
		return fmt.Errorf("renew SVID: control plane issued %s, want %s", sv.ID, s.ID)
	}
	var bundle *x509bundle.Bundle
	if len(resp.GetTrustBundle()) > 0 {
		authorities, err := identity.ParseChain(resp.GetTrustBundle())
		if err != nil {
			return fmt.Errorf("renew SVID: trust bundle: %w", err)
		}
		bundle = x509bundle.FromX509Authorities(s.TrustDomain(), authorities)
	}
	if err := s.saveSVID(sv, bundle); err != nil {
		return fmt.Errorf("renew SVID: save: %w", err)
	}
	s.Source.Set(sv, bundle)
	return nil
}

// RunRenewer renews the SVID at half its lifetime until ctx ends, retrying
// failures with jittered backoff while the certificate is still valid.
func (s *State) RunRenewer(ctx context.Context, logger *slog.Logger) error {
	retry := time.Second
	for {
		wait := time.Until(s.RenewAt())
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		if err := s.Renew(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			left := time.Until(s.Leaf().NotAfter)
			logger.Warn("SVID renewal failed; retrying", "err", err, "expires_in", left.Round(time.Second))
			d := min(retry, max(left/4, time.Second))
			d = d/2 + rand.N(d/2+1)
			retry = min(retry*2, 30*time.Second)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
			continue
		}
		retry = time.Second
		logger.Info("renewed SVID", "expires", s.Leaf().NotAfter.UTC().Format(time.RFC3339))
		// However the control plane dated the new SVID, never renew back to
		// back: wait at least half of what is left of it.
		if time.Until(s.RenewAt()) <= 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(max(time.Until(s.Leaf().NotAfter)/2, time.Second)):
			}
		}
	}
}
