// Package opscli is the `attache` command line: vendor ops (tenants, join
// tokens, agents and their health, per-tenant usage, signed deployment
// plans, signed releases and their rollouts in waves, feature flags, the
// fleet-wide freeze, API tokens) and compliance reviewers (audit log,
// export, offline verification) talk to the control plane's ops API
// through it.
// NewRootCommand builds the whole command tree so tests can run it
// in-process.
//
// Imported only by controlplane/cmd/attache and its tests.
package opscli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"attache.dev/attache/controlplane/apiclient"
)

// Environment variables that stand in for the global flags.
const (
	EnvServer    = "ATTACHE_SERVER"
	EnvToken     = "ATTACHE_TOKEN"
	EnvTokenFile = "ATTACHE_TOKEN_FILE"
	EnvCAFile    = "ATTACHE_CA_FILE"

	defaultServer = "https://127.0.0.1:7443"
)

// globals holds the persistent flags and the output streams.
type globals struct {
	stdout, stderr io.Writer
	server         string
	token          string
	tokenFile      string
	caFile         string
	output         string
	root           *cobra.Command
}

// NewRootCommand returns the `attache` command. Commands write results to
// stdout and progress or details to stderr.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "attache",
		Short: "Operate an Attaché control plane and verify its audit trail",
		Long: `attache talks to an Attaché control plane's ops API: register tenants, mint
join tokens for their agents, watch and revoke agents, submit signed
deployment plans and follow them, push signed releases and roll them out in
waves, set tenants' feature flags, freeze the fleet in an incident, manage
API tokens, and read, export and verify the tamper-evident audit trail, see
which agents are unhealthy or silent and what usage each tenant reported.

Authenticate with an API token (--token, --token-file, or the ATTACHE_TOKEN /
ATTACHE_TOKEN_FILE environment variables). The control plane writes the first
admin token to its data directory when it starts on an empty store.`,
		Example: `  export ATTACHE_SERVER=https://cp.example.com:7443
  export ATTACHE_CA_FILE=./ca.pem ATTACHE_TOKEN_FILE=./admin.token
  attache tenant create acme --display-name "Acme Corp" --label tier=silo
  attache token create --tenant acme --ttl 2h
  attache agent list --tenant acme
  attache plan submit --tenant acme install.yaml --wait
  attache release push release.signed.json
  attache rollout start --release 1.5.0 --selector all --waves canary:2,10%,50%,100% --bake 10m --watch
  attache health
  attache usage show --tenant acme --from -7d
  attache audit verify`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			switch g.output {
			case "table", "json":
				return nil
			default:
				return fmt.Errorf("--output must be table or json, not %q", g.output)
			}
		},
	}
	g.root = root
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true

	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", envOr(EnvServer, defaultServer), "control plane ops API URL (env "+EnvServer+")")
	// No env defaults shown for the token: --help must not print secrets.
	pf.StringVar(&g.token, "token", "", "API token (env "+EnvToken+")")
	pf.StringVar(&g.tokenFile, "token-file", "", "file holding the API token (env "+EnvTokenFile+")")
	pf.StringVar(&g.caFile, "ca-file", os.Getenv(EnvCAFile), "PEM root CA to trust for an https server (env "+EnvCAFile+")")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")

	root.AddCommand(
		newTenantCommand(g),
		newTokenCommand(g),
		newAgentCommand(g),
		newPlanCommand(g),
		newAPITokenCommand(g),
		newAuditCommand(g),
		newUsageCommand(g),
		newHealthCommand(g),
		newReleaseCommand(g),
		newRolloutCommand(g),
		newFlagCommand(g),
		newFreezeCommand(g),
		newUnfreezeCommand(g),
	)
	return root
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// client builds the API client from the global flags.
func (g *globals) client() (*apiclient.Client, error) {
	token, err := g.resolveToken()
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 60 * time.Second}
	if g.caFile != "" {
		if !strings.HasPrefix(g.server, "https://") {
			return nil, fmt.Errorf("--ca-file is set but --server %q is not https://", g.server)
		}
		pem, err := os.ReadFile(g.caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", g.caFile)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		hc.Transport = tr
	}
	return apiclient.New(g.server, token, hc), nil
}

// resolveToken: flags beat the environment; --token and --token-file
// exclude each other.
func (g *globals) resolveToken() (string, error) {
	flags := g.root.PersistentFlags()
	tokenSet, fileSet := flags.Changed("token"), flags.Changed("token-file")
	switch {
	case tokenSet && fileSet:
		return "", errors.New("use --token or --token-file, not both")
	case tokenSet:
		return strings.TrimSpace(g.token), nil
	case fileSet:
		return readTokenFile(g.tokenFile)
	}
	if v := os.Getenv(EnvToken); v != "" {
		return strings.TrimSpace(v), nil
	}
	if p := os.Getenv(EnvTokenFile); p != "" {
		return readTokenFile(p)
	}
	return "", errors.New("no API token: set --token, --token-file, " + EnvToken + " or " + EnvTokenFile)
}

func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return t, nil
}
