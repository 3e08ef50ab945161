// Package server wires the control plane together: store, keys, CA, the agent
// endpoint (gRPC over mTLS), the ops API (HTTP/JSON, with /metrics when
// enabled) and, when configured, the billing export, and runs them until
// its context ends.
//
// Only controlplane packages import server.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"attache.dev/attache/controlplane/agentapi"
	"attache.dev/attache/controlplane/billing"
	"attache.dev/attache/controlplane/ca"
	"attache.dev/attache/controlplane/config"
	"attache.dev/attache/controlplane/enroll"
	"attache.dev/attache/controlplane/httpapi"
	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/metrics"
	"attache.dev/attache/controlplane/plans"
	"attache.dev/attache/controlplane/rollout"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/grpcx"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/securefile"
	"attache.dev/attache/internal/sign"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

// AdminTokenFile is the file in the data directory that receives the first
// admin API token.
const AdminTokenFile = "admin.token"

// serverSVIDTTL is the lifetime of the control plane's own certificate; it is
// re-issued at half.
const serverSVIDTTL = 24 * time.Hour

// Server is a running control plane.
type Server struct {
	cfg      config.Config
	logger   *slog.Logger
	store    store.Store
	ca       *ca.CA
	keys     *keys.Holder
	rollouts *rollout.Driver
	source   *identity.Source
	agentAPI *agentapi.Service
	plans    *plans.Service
	billing  *billing.Exporter // nil unless configured
	grpc     *grpc.Server
	http     *http.Server

	agentLn, apiLn net.Listener
}

// New prepares a control plane: it creates the data directory, CA and keys
// on first start, opens (and migrates) the store, writes the first admin
// token, and binds both listeners.
func New(ctx context.Context, cfg config.Config, logger *slog.Logger) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	now := time.Now()
	if err := securefile.MkdirAll(cfg.DataDir); err != nil {
		return nil, err
	}
	authority, err := ca.LoadOrCreate(cfg.DataDir, td, now)
	if err != nil {
		return nil, fmt.Errorf("certificate authority: %w", err)
	}
	material, err := keys.LoadOrCreate(ctx, cfg.DataDir, td.Name(), now)
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	st, err := store.Open(ctx, cfg.StoreDSN(), logger)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	tokenPath := filepath.Join(cfg.DataDir, AdminTokenFile)
	created, err := httpapi.Bootstrap(ctx, st, tokenPath, now)
	if err != nil {
		return nil, fmt.Errorf("bootstrap admin token: %w", err)
	}
	if created {
		logger.Info("wrote the first admin API token", "path", tokenPath)
	}

	holder := keys.NewHolder(material, cfg.DataDir, td.Name(), logger.With("component", "keys"))
	s := &Server{cfg: cfg, logger: logger, store: st, ca: authority, keys: holder}
	svid, err := authority.IssueServer(identity.ControlPlaneID(td), cfg.API.Hosts, serverSVIDTTL, now)
	if err != nil {
		return nil, err
	}
	s.source = identity.NewSource(svid, authority.Bundle())

	// The plans service and the agent API need each other: submit nudges
	// the agent's session, the session asks for (re-signed) envelopes.
	var agentAPI *agentapi.Service
	s.plans = plans.New(plans.Config{
		Store:  st,
		Keys:   holder.Current,
		Notify: func(k store.AgentKey) { agentAPI.NotifyPlans(k) },
		Logger: logger.With("component", "plans"),
	})
	agentAPI = agentapi.New(agentapi.Config{
		Store:             st,
		CA:                authority,
		SVIDTTL:           time.Duration(cfg.SVIDTTL),
		HeartbeatInterval: time.Duration(cfg.HeartbeatInterval),
		Logger:            logger.With("component", "agentapi"),
		TrustRoots:        func(after uint32) [][]byte { return holder.Current().RootChain(int(after)) },
		Envelope:          s.plans.Envelope,
	})
	s.agentAPI = agentAPI
	s.rollouts = rollout.New(rollout.Config{
		Store:  st,
		Plans:  s.plans,
		Logger: logger.With("component", "rollout"),
	})
	enrollSvc := enroll.New(enroll.Config{
		Store: st,
		CA:    authority,
		TrustRoot: func(pin [32]byte) ([]byte, bool) {
			return holder.Current().RootByHash(pin)
		},
		SVIDTTL: time.Duration(cfg.SVIDTTL),
		Logger:  logger.With("component", "enroll"),
	})
	s.grpc = grpc.NewServer(grpcx.ServerOptions(
		credentials.NewTLS(identity.ServerTLSConfig(s.source, td)),
		agentv1.EnrollmentService_Enroll_FullMethodName,
	)...)
	agentv1.RegisterEnrollmentServiceServer(s.grpc, enrollSvc)
	agentv1.RegisterAgentServiceServer(s.grpc, s.agentAPI)

	var metricsHandler http.Handler
	if cfg.Metrics.Enabled {
		col, err := metrics.New(metrics.Config{
			Store:             st,
			HeartbeatInterval: time.Duration(cfg.HeartbeatInterval),
			MaxTenantSeries:   cfg.Metrics.MaxTenantSeries,
			Logger:            logger.With("component", "metrics"),
		})
		if err != nil {
			return nil, err
		}
		metricsHandler = col.Handler()
	}
	if cfg.Billing != nil {
		if s.billing, err = newBilling(*cfg.Billing, st, logger); err != nil {
			return nil, err
		}
	}
	api, err := httpapi.New(httpapi.Config{
		Store:             st,
		Logger:            logger.With("component", "httpapi"),
		TrustDomain:       td.Name(),
		AgentAddr:         cfg.AgentAdvertise(),
		CAKeySHA256:       authority.KeySHA256,
		TrustRootSHA256:   func() [32]byte { return holder.Current().RootHash() },
		Plans:             s.plans,
		ReleaseRoot:       func() *sign.Root { return holder.Current().Root },
		Rollouts:          s.rollouts,
		HeartbeatInterval: time.Duration(cfg.HeartbeatInterval),
		Metrics:           metricsHandler,
	})
	if err != nil {
		return nil, err
	}
	s.http = &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	if !cfg.API.InsecureHTTP {
		s.http.TLSConfig = &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				sv, err := s.source.GetX509SVID()
				if err != nil {
					return nil, err
				}
				c := &tls.Certificate{PrivateKey: sv.PrivateKey, Leaf: sv.Certificates[0]}
				for _, x := range sv.Certificates {
					c.Certificate = append(c.Certificate, x.Raw)
				}
				return c, nil
			},
		}
	}

	var lc net.ListenConfig
	if s.agentLn, err = lc.Listen(ctx, "tcp", cfg.Agent.Listen); err != nil {
		return nil, fmt.Errorf("agent endpoint: %w", err)
	}
	if s.apiLn, err = lc.Listen(ctx, "tcp", cfg.API.Listen); err != nil {
		s.agentLn.Close()
		return nil, fmt.Errorf("ops API: %w", err)
	}
	return s, nil
}

// AgentAddr is the bound agent endpoint address.
func (s *Server) AgentAddr() net.Addr { return s.agentLn.Addr() }

// APIAddr is the bound ops API address.
func (s *Server) APIAddr() net.Addr { return s.apiLn.Addr() }

// Store is the server's store.
func (s *Server) Store() store.Store { return s.store }

// Run serves until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	defer s.store.Close()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.agentAPI.Run(ctx) })
	g.Go(func() error { return s.rotateServerSVID(ctx) })
	g.Go(func() error { return s.keys.Run(ctx) })
	g.Go(func() error { return s.rollouts.Run(ctx) })
	if s.billing != nil {
		g.Go(func() error { return s.billing.Run(ctx) })
	}
	g.Go(func() error {
		if err := s.grpc.Serve(s.agentLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("agent endpoint: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		var err error
		if s.http.TLSConfig != nil {
			err = s.http.ServeTLS(s.apiLn, "", "")
		} else {
			err = s.http.Serve(s.apiLn)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("ops API: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		// Sessions are long-lived streams; GracefulStop would wait for all
		// of them. Agents reconnect with backoff, so stop at once — first,
		// so a restart is not held up by the ops API draining.
		s.grpc.Stop()
		// Handlers have returned (WaitForHandlers): record their closings.
		s.agentAPI.Flush(context.WithoutCancel(ctx))
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = s.http.Shutdown(sctx)
		return nil
	})
	s.logger.Info("control plane serving",
		"trust_domain", s.cfg.TrustDomain, "agent_endpoint", s.agentLn.Addr().String(),
		"api", s.apiLn.Addr().String(), "store", s.store.Engine(),
		"metrics", s.cfg.Metrics.Enabled, "billing_export", s.billing != nil)
	return g.Wait()
}

// newBilling builds the billing exporter from its configuration: the API
// key from its secret reference, customers from the tenant label.
func newBilling(bc config.Billing, st store.Store, logger *slog.Logger) (*billing.Exporter, error) {
	key, err := bc.APIKey()
	if err != nil {
		return nil, err
	}
	if bc.APIKeyFile != "" {
		if fi, err := os.Stat(bc.APIKeyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			logger.Warn("billing API key file is readable by group or others", "path", bc.APIKeyFile, "mode", fi.Mode().Perm().String())
		}
	}
	meters := make(map[string]billing.Meter, len(bc.Meters))
	for name, m := range bc.Meters {
		agg := m.Aggregation
		if agg == "" {
			agg = billing.AggregationSum
		}
		meters[name] = billing.Meter{EventName: m.EventName, Aggregation: agg}
	}
	label := bc.Label()
	exp, err := billing.New(billing.Config{
		Endpoint:  bc.Endpoint,
		APIKey:    key,
		Meters:    meters,
		Customers: tenantCustomers(st, label),
		Interval:  time.Duration(bc.Interval),
		Delay:     time.Duration(bc.Delay),
		Store:     st,
		Logger:    logger,
	})
	if err != nil {
		return nil, err
	}
	logger.Info("billing export enabled", "meters", len(meters), "customer_label", label)
	return exp, nil
}

// tenantCustomers maps a tenant to the billing customer ID in its label; a
// tenant without the label (or an unknown tenant) is not billed.
func tenantCustomers(st store.Store, label string) func(ctx context.Context, tenant string) (string, bool, error) {
	return func(ctx context.Context, tenant string) (string, bool, error) {
		t, err := st.GetTenant(ctx, tenant)
		if errors.Is(err, store.ErrNotFound) {
			return "", false, nil
		}
		if err != nil {
			return "", false, err
		}
		id := t.Labels[label]
		return id, id != "", nil
	}
}

func (s *Server) rotateServerSVID(ctx context.Context) error {
	for {
		sv, err := s.source.GetX509SVID()
		if err != nil {
			return err
		}
		leaf := sv.Certificates[0]
		wait := time.Until(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(max(wait, time.Second)):
		}
		next, err := s.ca.IssueServer(sv.ID, s.cfg.API.Hosts, serverSVIDTTL, time.Now())
		if err != nil {
			s.logger.Error("renew control plane SVID", "err", err)
			continue
		}
		s.source.Set(next, nil)
		s.logger.Info("renewed control plane SVID", "expires", next.Certificates[0].NotAfter)
	}
}
