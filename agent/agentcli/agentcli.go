// Package agentcli is the attache-agent command line: enroll if needed, then
// keep the session to the control plane open and the SVID fresh.
//
// Only agent/cmd/attache-agent and tests import agentcli.
package agentcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/agent/session"
	"attache.dev/attache/agent/svid"
	"attache.dev/attache/internal/logging"
	"attache.dev/attache/internal/version"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
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
	root.AddCommand(newRunCommand(stderr), newStatusCommand(stdout))
	return root
}

func newRunCommand(stderr io.Writer) *cobra.Command {
	var (
		stateDir, token, tokenFile, logLevel, logFormat string
		backoffMax                                      time.Duration
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
It exits with status 3 if the control plane revoked it.`,
		Example: `  attache-agent run --state-dir /var/lib/attache-agent --token "$(cat join-token)"
  ATTACHE_JOIN_TOKEN=attache-join-v1.… attache-agent run --state-dir ./agent`,
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
			return run(cmd.Context(), logger, stateDir, token, backoffMax)
		},
	}
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", "", "directory for the agent's key, SVID, trust bundle and trust root (required)")
	f.StringVar(&token, "token", "", "one-time join token (only needed for the first run)")
	f.StringVar(&tokenFile, "token-file", "", "file holding the join token")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	f.DurationVar(&backoffMax, "reconnect-max-delay", 10*time.Second, "upper bound of the jittered reconnect delay")
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

func run(ctx context.Context, logger *slog.Logger, stateDir, token string, backoffMax time.Duration) error {
	st, err := svid.Load(stateDir)
	switch {
	case errors.Is(err, svid.ErrNotEnrolled):
		if token == "" {
			return fmt.Errorf("%s holds no identity yet: pass a join token with --token (create one with `attache token create --tenant T`)", stateDir)
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
	renewDone := make(chan error, 1)
	go func() { renewDone <- st.RunRenewer(ctx, logger.With("component", "svid")) }()

	client := session.New(session.Config{
		State:      st,
		Logger:     logger.With("component", "session"),
		BackoffMax: backoffMax,
		Health:     func() []*agentv1.ComponentHealth { return health(st) },
	})
	err = client.Run(ctx)
	cancel()
	<-renewDone
	if errors.Is(err, session.ErrRevoked) {
		return &ExitError{Code: ExitRevoked, Err: err}
	}
	return err
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
