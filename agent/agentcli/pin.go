package agentcli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"attache.dev/attache/agent/catalog"
)

func newProviderCommand(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "provider",
		Short: "Helpers for the provider entries of the agent's config file",
	}
	var (
		name, config string
		passEnv      []string
	)
	pin := &cobra.Command{
		Use:   "pin PATH",
		Short: "Print a config entry that pins a provider binary by its SHA-256",
		Long: `Print the providers entry for the binary at PATH, with its absolute path and
SHA-256, ready to paste into the agent's --config file. The agent refuses to
start a provider whose binary no longer matches the pinned checksum, so re-run
this after upgrading a provider.`,
		Example: `  attache-agent provider pin --name local /usr/local/libexec/attache/attache-provider-local \
      --config '{"root":"/var/lib/attache/local"}'

  # The database connection string reaches only this provider, from the
  # agent's environment (never from a file or a plan):
  attache-agent provider pin --name postgres /usr/local/libexec/attache/attache-provider-postgres \
      --pass-env ATTACHE_POSTGRES_DSN --config '{"dsn_env":"ATTACHE_POSTGRES_DSN"}'`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var raw json.RawMessage
			if config != "" {
				raw = json.RawMessage(config)
				if !json.Valid(raw) {
					return fmt.Errorf("--config: not valid JSON")
				}
			}
			e, err := PinEntry(name, args[0], raw)
			if err != nil {
				return err
			}
			e.PassEnv = passEnv
			if err := catalog.Validate([]catalog.Entry{e}); err != nil {
				return err
			}
			out, err := yaml.Marshal(Config{Providers: []catalog.Entry{e}})
			if err != nil {
				return err
			}
			_, err = stdout.Write(out)
			return err
		},
	}
	pin.Flags().StringVar(&name, "name", "", "provider name plan steps use, e.g. local (required)")
	pin.Flags().StringVar(&config, "config", "", "the provider's configuration, as JSON")
	pin.Flags().StringSliceVar(&passEnv, "pass-env", nil, "names of agent environment variables this provider receives (e.g. the one holding a database connection string); repeatable")
	_ = pin.MarkFlagRequired("name")
	cmd.AddCommand(pin)
	return cmd
}
