// Package cpcli is the attache-controlplane command line: flags and config
// file in, a running server out (serve), and the offline key tooling (keys
// show, keys rotate) that works on the data directory.
//
// Only controlplane/cmd/attache-controlplane and tests import cpcli.
package cpcli

import (
	"io"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/config"
	"attache.dev/attache/controlplane/server"
	"attache.dev/attache/internal/logging"
	"attache.dev/attache/internal/version"
)

// NewRootCommand returns the attache-controlplane command tree.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "attache-controlplane",
		Short:         "The Attaché control plane: CA, agent endpoint and ops API",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newServeCommand(stderr), newKeysCommand(stdout, stderr))
	return root
}

func newServeCommand(stderr io.Writer) *cobra.Command {
	var (
		configFile string
		logFormat  string
		hosts      []string
		svidTTL    time.Duration
		heartbeat  time.Duration
	)
	cfg := config.Default()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the control plane",
		Long: `Run the control plane.

On first start it creates, in --data-dir: the trust domain's CA (ca.key, ca.crt),
the plan-signing trust root and keys (root.json, *.key), the SQLite store
(attache.db, unless --store names PostgreSQL) and the first admin API token
(admin.token). Key and token files are mode 0600.

Agents connect to --agent-listen (gRPC over mTLS with SPIFFE X.509-SVIDs);
operators and the attache CLI use the ops API on --api-listen (HTTPS with a
certificate from the same CA: pass --ca-file <data-dir>/ca.crt to attache).
With --metrics (or metrics: true in the config file) the same listener
serves Prometheus metrics at /metrics to any API token (give the scraper an
auditor token). The billing
export is configured in the config file only (billing:, see
docs/operations.md).`,
		Example: `  # Local, everything embedded:
  attache-controlplane serve --data-dir ./cp

  # Production-like, on PostgreSQL, reachable by agents at cp.example.com:7440:
  attache-controlplane serve --data-dir /var/lib/attache --trust-domain example.com \
    --store postgres://attache@db/attache --agent-listen 0.0.0.0:7440 \
    --agent-advertise cp.example.com:7440 --api-listen 0.0.0.0:7443 --api-host cp.example.com`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				loaded, err := config.Load(configFile)
				if err != nil {
					return err
				}
				// Flags given explicitly win over the file.
				flags := cmd.Flags()
				merge := loaded
				if flags.Changed("data-dir") {
					merge.DataDir = cfg.DataDir
				}
				if flags.Changed("trust-domain") {
					merge.TrustDomain = cfg.TrustDomain
				}
				if flags.Changed("store") {
					merge.Store = cfg.Store
				}
				if flags.Changed("agent-listen") {
					merge.Agent.Listen = cfg.Agent.Listen
				}
				if flags.Changed("agent-advertise") {
					merge.Agent.Advertise = cfg.Agent.Advertise
				}
				if flags.Changed("api-listen") {
					merge.API.Listen = cfg.API.Listen
				}
				if flags.Changed("api-insecure-http") {
					merge.API.InsecureHTTP = cfg.API.InsecureHTTP
				}
				if flags.Changed("log-level") {
					merge.LogLevel = cfg.LogLevel
				}
				if flags.Changed("metrics") {
					merge.Metrics.Enabled = cfg.Metrics.Enabled
				}
				cfg = merge
			}
			flags := cmd.Flags()
			if flags.Changed("api-host") {
				cfg.API.Hosts = hosts
			}
			if flags.Changed("svid-ttl") {
				cfg.SVIDTTL = config.Duration(svidTTL)
			}
			if flags.Changed("heartbeat-interval") {
				cfg.HeartbeatInterval = config.Duration(heartbeat)
			}
			logger, err := logging.New(stderr, cfg.LogLevel, logFormat)
			if err != nil {
				return err
			}
			srv, err := server.New(cmd.Context(), cfg, logger)
			if err != nil {
				return err
			}
			return srv.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML config file (flags given explicitly override it)")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the CA, keys, admin token and SQLite store")
	f.StringVar(&cfg.TrustDomain, "trust-domain", cfg.TrustDomain, "SPIFFE trust domain of this control plane")
	f.StringVar(&cfg.Store, "store", "", "PostgreSQL URL (postgres://…) or SQLite path (default <data-dir>/attache.db)")
	f.StringVar(&cfg.Agent.Listen, "agent-listen", cfg.Agent.Listen, "address of the agent endpoint (gRPC, mTLS)")
	f.StringVar(&cfg.Agent.Advertise, "agent-advertise", "", "host:port agents dial, written into join tokens (default --agent-listen)")
	f.StringVar(&cfg.API.Listen, "api-listen", cfg.API.Listen, "address of the ops API (HTTPS)")
	f.StringSliceVar(&hosts, "api-host", cfg.API.Hosts, "DNS names and IPs for the ops API certificate")
	f.BoolVar(&cfg.API.InsecureHTTP, "api-insecure-http", false, "serve the ops API over plain HTTP (only behind a TLS-terminating proxy)")
	f.DurationVar(&svidTTL, "svid-ttl", time.Duration(cfg.SVIDTTL), "lifetime of agent SVIDs (agents renew at half)")
	f.DurationVar(&heartbeat, "heartbeat-interval", time.Duration(cfg.HeartbeatInterval), "how often agents send heartbeats")
	f.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	f.BoolVar(&cfg.Metrics.Enabled, "metrics", false, "serve Prometheus metrics at /metrics on the ops API listener, to any API token (config: metrics: true)")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}
