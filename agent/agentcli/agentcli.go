// Package agentcli is the attache-agent command line: enroll if needed, then
// keep the session to the control plane open and the SVID fresh and apply
// the plans it receives; pin provider binaries for the config file; and read
// the plan journal and the agent's audit log.
//
// Only agent/cmd/attache-agent and tests import agentcli.
package agentcli

import (
	"attache.dev/attache/agent/spool"
	"attache.dev/attache/agent/telemetry"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"attache.dev/attache/agent/catalog"
	"attache.dev/attache/agent/executor"
	"attache.dev/attache/agent/journal"
	"attache.dev/attache/agent/planrun"
	"attache.dev/attache/agent/session"
	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/logging"
	"attache.dev/attache/internal/securefile"
	"attache.dev/attache/internal/version"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
)

// NewRootCommand returns the attache-agent command tree.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "attache-agent",
		Short:         "The Attaché agent: runs in the customer's account and applies the vendor's signed plans",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newRunCommand(stderr), newStatusCommand(stdout), newProviderCommand(stdout),
		newPlansCommand(stdout), newAuditCommand(stdout))
	return root
}

func newRunCommand(stderr io.Writer) *cobra.Command {
	var (
		stateDir, token, tokenFile, logLevel, logFormat, configPath string
		backoffMax, usageInterval                                   time.Duration
		newJournal, allowUnreleased                                 bool
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Enroll if needed, then stay connected to the control plane",
		Long: `Run the agent.

If --state-dir holds no identity yet, the agent enrolls with the join token
(--token, --token-file or $ATTACHE_JOIN_TOKEN): it generates its private key
locally, verifies the control plane against the CA hash pinned in the token
before sending the token, and stores its SVID, the trust bundle and the plan
trust root in --state-dir (files mode 0600). The token is single-use and is not
needed again.

The agent then dials the control plane (outbound only), keeps one mTLS session
open, sends heartbeats, renews its SVID before half its lifetime, and
reconnects with jittered exponential backoff when the connection drops.
It exits with status 3 if the control plane revoked it.

Plans: the agent verifies every plan the control plane offers against the
trust root it pinned at enrollment (signature by the plans key, its own tenant
and agent ID, a sequence newer than the last accepted, not expired), journals
it in --state-dir/journal.db, and applies its steps one plan at a time through
the provider plugins listed in --config, each pinned by SHA-256 (see
"attache-agent provider pin"). A provider binary that is missing or does not
match its pinned checksum stops the agent at start, before it enrolls. A
refused plan is reported with its reason and recorded in the agent's own audit
log. After a crash the agent resumes the interrupted plan and never repeats a
step that succeeded. Without --config the agent has no providers, and plans
that need one fail. "attache-agent plans" and "attache-agent audit" read the
journal while the agent is stopped.

Releases: by default the agent runs only plans rendered from a release that
the vendor signed with its release key (the "releases" role of the trust root,
a key the control plane does not hold). Such a plan carries the signed release;
the agent verifies that signature as well as the control plane's and renders
the release itself, and refuses the plan (reason RELEASE) unless its steps are
exactly that rendering. So a control plane whose plans key is stolen can choose
who gets a signed release and when, but cannot make this agent run an image,
manifest, migration or step that the release key did not sign. Plans that carry
no release (ad hoc plans: "attache plan submit") are refused (reason
UNRELEASED). --allow-unreleased-plans accepts them too: then the control
plane's plans key alone decides what runs here, which is convenient for
development and for one-off operations, but gives up that protection.

Usage: every --usage-interval the agent asks its providers for health and
usage and, when --config has app_metrics, scrapes the vendor app's Prometheus
endpoint (http_requests_total, http_request_duration_seconds) for the meters
app.http_requests, app.http_errors and app.http_latency_p95_seconds. Usage is
written to --state-dir/spool.db before it is sent.`,
		Example: `  attache-agent run --state-dir /var/lib/attache-agent --token "$(cat join-token)"
  ATTACHE_JOIN_TOKEN=attache-join-v1.… attache-agent run --state-dir ./agent
  attache-agent run --state-dir /var/lib/attache-agent --config /etc/attache/agent.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := logging.New(stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			if token == "" && tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("--token-file: %w", err)
				}
				token = strings.TrimSpace(string(b))
			}
			if token == "" {
				token = os.Getenv("ATTACHE_JOIN_TOKEN")
			}
			var cfg *Config
			if configPath != "" {
				if cfg, err = LoadConfig(configPath); err != nil {
					return err
				}
			} else {
				cfg = &Config{}
			}
			// Fail fast, before enrolling or opening the journal: a provider
			// binary that is missing or does not match its pinned checksum.
			if err := catalog.CheckBinaries(cfg.Providers); err != nil {
				return fmt.Errorf("config %s: %w", configPath, err)
			}
			if allowUnreleased {
				logger.Warn("accepting plans that carry no signed release (--allow-unreleased-plans): the control plane's plans key alone decides what runs here")
			}
			return run(cmd.Context(), logger, stateDir, token, backoffMax, cfg, newJournal, usageInterval, allowUnreleased)
		},
	}
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", "", "directory for the agent's key, SVID, trust bundle and trust root (required)")
	f.StringVar(&configPath, "config", "", "agent config file (YAML): the provider plugins, pinned by sha256, and their configuration")
	f.StringVar(&token, "token", "", "one-time join token (only needed for the first run)")
	f.StringVar(&tokenFile, "token-file", "", "file holding the join token")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	f.BoolVar(&newJournal, "new-journal", false, "start a new, empty plan journal for an enrolled agent whose journal.db is lost (resets replay protection)")
	f.BoolVar(&allowUnreleased, "allow-unreleased-plans", false, "also accept plans that carry no release signed by the vendor's release key (ad hoc plans); the control plane's plans key alone then decides what runs, so a stolen plans key could run anything: for development and one-off operations")
	f.DurationVar(&backoffMax, "reconnect-max-delay", 10*time.Second, "upper bound of the jittered reconnect delay")
	f.DurationVar(&usageInterval, "usage-interval", telemetry.DefaultInterval, "how often to collect health and usage from the providers (usage is spooled in spool.db before it is sent)")
	_ = cmd.MarkFlagRequired("state-dir")
	return cmd
}

// ExitRevoked is the exit status of an agent the control plane revoked.
const ExitRevoked = 3

// ExitError carries a process exit status.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

func run(ctx context.Context, logger *slog.Logger, stateDir, token string, backoffMax time.Duration, cfg *Config, newJournal bool, usageInterval time.Duration, allowUnreleased bool) error {
	journalPath := filepath.Join(stateDir, JournalFile)
	var jr *journal.Journal
	defer func() {
		if jr != nil {
			jr.Close()
		}
	}()
	st, err := svid.Load(stateDir)
	switch {
	case errors.Is(err, svid.ErrNotEnrolled):
		if token == "" {
			return fmt.Errorf("%s holds no identity yet: pass a join token with --token (create one with `attache token create --tenant T`)", stateDir)
		}
		// The journal exists before the identity does, so an enrolled
		// agent without one was tampered with or restored incompletely.
		if err := securefile.MkdirAll(stateDir); err != nil {
			return err
		}
		if jr, err = journal.Open(journalPath, journal.Options{}); err != nil {
			return err
		}
		logger.Info("enrolling")
		st, err = svid.Enroll(ctx, stateDir, token)
		if err != nil {
			return err
		}
		logger.Info("enrolled", "spiffe_id", st.ID.String(), "control_plane", st.Meta.ControlPlaneAddr)
	case err != nil:
		return err
	default:
		if token != "" {
			logger.Info("already enrolled; ignoring the join token", "spiffe_id", st.ID.String())
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if jr == nil {
		// The journal holds the last accepted plan sequence, the agent's
		// replay protection: a missing one would accept any older plan
		// still within its lifetime. Starting afresh takes a decision.
		if _, err := os.Stat(journalPath); errors.Is(err, fs.ErrNotExist) && !newJournal {
			return fmt.Errorf("%s is enrolled but has no plan journal (%s): it holds the agent's replay protection, so the agent will not start without it; restore it from the backup of this state directory, or pass --new-journal to start a new one (plans already applied may then be offered again and are refused only if expired)", stateDir, JournalFile)
		}
		if jr, err = journal.Open(journalPath, journal.Options{}); err != nil {
			return err
		}
	}
	// A new spool starts above any sequence a lost one may have used (the
	// control plane ingests each agent sequence once).
	sp, err := spool.Open(filepath.Join(stateDir, spool.FileName), spool.Options{StartAfter: uint64(time.Now().UnixMicro())})
	if err != nil {
		return err
	}
	defer sp.Close()
	cat, err := loadProviders(ctx, logger, st.ID, cfg.Providers)
	if err != nil {
		return err
	}
	defer cat.Close()
	tenant, _, err := identity.ParseAgentID(st.ID.TrustDomain(), st.ID)
	if err != nil {
		return err
	}
	appMetrics, err := cfg.AppMetrics.Telemetry()
	if err != nil {
		return fmt.Errorf("config: app_metrics: %w", err)
	}
	collector, err := telemetry.New(telemetry.Config{
		Spool: sp, Providers: cat, Tenant: tenant, Interval: usageInterval, AppMetrics: appMetrics,
		Self:   func() []*agentv1.ComponentHealth { return health(st) },
		Logger: logger.With("component", "telemetry"),
	})
	if err != nil {
		return err
	}
	inventory := providerInventory(ctx, cat, cfg.Providers, logger)
	runner, err := planrun.New(planrun.Config{
		Journal: jr,
		Executor: executor.New(executor.Config{
			Journal: jr, Providers: cat, Logger: logger.With("component", "executor"),
		}),
		State:           st,
		Logger:          logger.With("component", "plans"),
		AllowUnreleased: allowUnreleased,
	})
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	renewDone := make(chan error, 1)
	go func() { renewDone <- st.RunRenewer(ctx, logger.With("component", "svid")) }()
	wg.Go(func() { _ = cat.Run(ctx) })
	wg.Go(func() { _ = runner.Run(ctx) })
	wg.Go(func() { _ = collector.Run(ctx) })

	client := session.New(session.Config{
		State:      st,
		Logger:     logger.With("component", "session"),
		BackoffMax: backoffMax,
		Health:     collector.Health,
		Plans:      runner,
		Usage:      collector,
		Providers:  inventory,
	})
	err = client.Run(ctx)
	cancel()
	<-renewDone
	wg.Wait()
	if errors.Is(err, session.ErrRevoked) {
		return &ExitError{Code: ExitRevoked, Err: err}
	}
	return err
}

// loadProviders starts and configures the providers in entries for the
// agent id (each binary checked against its pinned sha256 again as it
// starts).
func loadProviders(ctx context.Context, logger *slog.Logger, id spiffeid.ID, entries []catalog.Entry) (*catalog.Catalog, error) {
	tenant, agentID, err := identity.ParseAgentID(id.TrustDomain(), id)
	if err != nil {
		return nil, err
	}
	return catalog.Load(ctx, entries, catalog.Options{
		Logger: logger.With("component", "providers"),
		Tenant: &providerv1.TenantContext{Tenant: tenant, AgentId: agentID, TrustDomain: id.TrustDomain().Name()},
	})
}

// JournalFile is the plan journal inside the state directory.
const JournalFile = "journal.db"

// providerInventory describes the configured providers for Hello.
func providerInventory(ctx context.Context, cat *catalog.Catalog, entries []catalog.Entry, logger *slog.Logger) []*agentv1.ProviderInfo {
	out := make([]*agentv1.ProviderInfo, 0, len(entries))
	for _, e := range entries {
		info := &agentv1.ProviderInfo{Name: e.Name, Sha256: e.SHA256}
		if p, err := cat.Provider(e.Name); err == nil {
			if d, err := p.Describe(ctx); err == nil {
				info.Version = d.GetVersion()
			} else {
				logger.Warn("describe provider", "provider", e.Name, "err", err)
			}
		}
		out = append(out, info)
	}
	return out
}

// health reports the agent's own components.
func health(st *svid.State) []*agentv1.ComponentHealth {
	leaf := st.Leaf()
	h := &agentv1.ComponentHealth{Name: "svid", Status: agentv1.HealthStatus_HEALTH_STATUS_HEALTHY,
		Message: "expires " + leaf.NotAfter.UTC().Format(time.RFC3339)}
	if left := time.Until(leaf.NotAfter); left < leaf.NotAfter.Sub(leaf.NotBefore)/4 {
		h.Status = agentv1.HealthStatus_HEALTH_STATUS_DEGRADED
		h.Message = "renewal overdue; expires " + leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	return []*agentv1.ComponentHealth{
		{Name: "agent", Status: agentv1.HealthStatus_HEALTH_STATUS_HEALTHY, Message: "version " + version.Version},
		h,
	}
}

func newStatusCommand(stdout io.Writer) *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's identity as stored in its state directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := svid.Load(stateDir)
			if err != nil {
				return err
			}
			leaf := st.Leaf()
			fmt.Fprintf(stdout, "SPIFFE ID:      %s\n", st.ID)
			fmt.Fprintf(stdout, "Control plane:  %s (%s)\n", st.Meta.ControlPlaneAddr, st.ServerID)
			fmt.Fprintf(stdout, "Enrolled at:    %s\n", st.Meta.EnrolledAt.Format(time.RFC3339))
			fmt.Fprintf(stdout, "SVID serial:    %s\n", leaf.SerialNumber.Text(16))
			fmt.Fprintf(stdout, "SVID expires:   %s (renews at %s)\n", leaf.NotAfter.UTC().Format(time.RFC3339), st.RenewAt().UTC().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", "", "the agent's state directory (required)")
	_ = cmd.MarkFlagRequired("state-dir")
	return cmd
}
