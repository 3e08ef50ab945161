// Package config is the control plane's configuration: the file schema
// (YAML, strictly decoded, versioned), defaults, and Validate, which reports
// every problem at once. Command-line flags override file values.
//
// Only controlplane packages import config.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"
)

// Config is the control plane's configuration.
type Config struct {
	// Version of the file schema; must be 1.
	Version int `json:"version"`
	// DataDir holds the CA, signing keys, the admin token and, by default,
	// the SQLite store.
	DataDir string `json:"data_dir"`
	// TrustDomain is the SPIFFE trust domain, e.g. "example.org".
	TrustDomain string `json:"trust_domain"`
	// Store is a PostgreSQL URL (postgres://…) or a SQLite file path;
	// empty means <data_dir>/attache.db.
	Store string        `json:"store"`
	Agent AgentEndpoint `json:"agent"`
	API   APIEndpoint   `json:"api"`
	// SVIDTTL is the lifetime of agent SVIDs; agents renew at half.
	SVIDTTL Duration `json:"svid_ttl"`
	// HeartbeatInterval is how often agents send heartbeats.
	HeartbeatInterval Duration `json:"heartbeat_interval"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level"`
}

// AgentEndpoint is where agents connect (gRPC over mTLS).
type AgentEndpoint struct {
	Listen string `json:"listen"`
	// Advertise is the host:port put in join tokens; defaults to Listen
	// when that names a specific host.
	Advertise string `json:"advertise"`
}

// APIEndpoint is the ops API (HTTP/JSON).
type APIEndpoint struct {
	Listen string `json:"listen"`
	// Hosts are the DNS names and IPs in the API's TLS certificate.
	Hosts []string `json:"hosts"`
	// InsecureHTTP serves plain HTTP, for use behind a TLS-terminating proxy.
	InsecureHTTP bool `json:"insecure_http"`
}

// Duration is a time.Duration written as "30s", "1h".
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// Default returns the defaults: a local, single-node control plane.
func Default() Config {
	return Config{
		Version:           1,
		DataDir:           "./attache-data",
		TrustDomain:       "attache.local",
		Agent:             AgentEndpoint{Listen: "127.0.0.1:7440"},
		API:               APIEndpoint{Listen: "127.0.0.1:7443", Hosts: []string{"localhost", "127.0.0.1", "::1"}},
		SVIDTTL:           Duration(time.Hour),
		HeartbeatInterval: Duration(15 * time.Second),
		LogLevel:          "info",
	}
}

// Load reads a YAML file over the defaults. Unknown keys are errors.
func Load(path string) (Config, error) {
	cfg := Default()
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// StoreDSN is the store to open.
func (c Config) StoreDSN() string {
	if c.Store != "" {
		return c.Store
	}
	return filepath.Join(c.DataDir, "attache.db")
}

// AgentAdvertise is the address join tokens carry.
func (c Config) AgentAdvertise() string {
	if c.Agent.Advertise != "" {
		return c.Agent.Advertise
	}
	return c.Agent.Listen
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Version != 1 {
		errs = append(errs, fmt.Errorf("version: %d is not supported (want 1)", c.Version))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir: required"))
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("trust_domain: %q: %w", c.TrustDomain, err))
	}
	if err := hostPort(c.Agent.Listen, true); err != nil {
		errs = append(errs, fmt.Errorf("agent.listen: %w", err))
	}
	if err := hostPort(c.AgentAdvertise(), false); err != nil {
		errs = append(errs, fmt.Errorf("agent.advertise: %w", err))
	} else if h, _, _ := net.SplitHostPort(c.AgentAdvertise()); h == "" || h == "0.0.0.0" || h == "::" {
		errs = append(errs, fmt.Errorf("agent.advertise: %q is not an address agents can dial; set agent.advertise (--agent-advertise) to the public host:port", c.AgentAdvertise()))
	}
	if err := hostPort(c.API.Listen, true); err != nil {
		errs = append(errs, fmt.Errorf("api.listen: %w", err))
	}
	if time.Duration(c.SVIDTTL) < 10*time.Second || time.Duration(c.SVIDTTL) > 30*24*time.Hour {
		errs = append(errs, fmt.Errorf("svid_ttl: %s must be between 10s and 720h", time.Duration(c.SVIDTTL)))
	}
	if time.Duration(c.HeartbeatInterval) < time.Second || time.Duration(c.HeartbeatInterval) > 10*time.Minute {
		errs = append(errs, fmt.Errorf("heartbeat_interval: %s must be between 1s and 10m", time.Duration(c.HeartbeatInterval)))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level: %q must be debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

func hostPort(s string, listen bool) error {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	if p == "" || (!listen && h == "") {
		return fmt.Errorf("%q: want host:port", s)
	}
	return nil
}

// String formats the duration.
func (d Duration) String() string { return time.Duration(d).String() }
