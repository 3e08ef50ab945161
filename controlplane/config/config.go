// Package config is the control plane's configuration: the file schema
// (YAML, strictly decoded, versioned), defaults, and Validate, which reports
// every problem at once. Command-line flags override file values.
//
// Only controlplane packages import config.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"attache.dev/attache/controlplane/billing"
	"attache.dev/attache/controlplane/store"
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
	// Metrics serves GET /metrics (Prometheus, no authentication) on the
	// ops API listener when enabled: "metrics: true", or an object.
	Metrics Metrics `json:"metrics"`
	// Billing, when present, exports hourly usage to a billing endpoint.
	Billing *Billing `json:"billing,omitempty"`
}

// Metrics configures the /metrics endpoint. In the file it is either a
// boolean (metrics: true) or an object with these keys.
type Metrics struct {
	Enabled bool `json:"enabled"`
	// MaxTenantSeries is how many tenants get series of their own (the
	// others are folded into tenant="_other"); 0 means 1000.
	MaxTenantSeries int `json:"max_tenant_series,omitempty"`
}

// UnmarshalJSON accepts a boolean or an object (unknown keys refused).
func (m *Metrics) UnmarshalJSON(b []byte) error {
	switch t := strings.TrimSpace(string(b)); t {
	case "true", "false":
		*m = Metrics{Enabled: t == "true"}
		return nil
	case "null":
		*m = Metrics{}
		return nil
	}
	type plain Metrics
	var v plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("metrics: want true, false or {enabled, max_tenant_series}: %w", err)
	}
	*m = Metrics(v)
	return nil
}

// Billing configures the billing export (controlplane/billing): hourly
// per-tenant meter events posted to Endpoint in the shape of Stripe's
// meter-events API.
type Billing struct {
	// Endpoint is the meter-events URL: https (http only to a loopback IP).
	Endpoint string `json:"endpoint"`
	// The API key is read from the environment variable APIKeyEnv or the
	// file APIKeyFile (exactly one), never from this file.
	APIKeyEnv  string `json:"api_key_env,omitempty"`
	APIKeyFile string `json:"api_key_file,omitempty"`
	// Interval between export passes (default 1m); Delay after an hour's
	// end before it is exported, for late batches (default 5m).
	Interval Duration `json:"interval,omitempty"`
	Delay    Duration `json:"delay,omitempty"`
	// Meters lists the exported meters by name; other meters are not
	// billed.
	Meters map[string]BillingMeter `json:"meters"`
	// CustomerLabel is the tenant label holding the tenant's billing
	// customer ID (default DefaultCustomerLabel); tenants without it are
	// not billed.
	CustomerLabel string `json:"customer_label,omitempty"`
}

// BillingMeter says how one meter is exported.
type BillingMeter struct {
	// EventName is the billing system's meter event name.
	EventName string `json:"event_name"`
	// Aggregation is which of an hour's figures is sent: sum (default),
	// max or last.
	Aggregation string `json:"aggregation,omitempty"`
}

// DefaultCustomerLabel is the tenant label that holds the billing customer
// ID unless billing.customer_label says otherwise.
const DefaultCustomerLabel = "billing.customer_id"

// Label returns the customer label in use.
func (b Billing) Label() string {
	if b.CustomerLabel == "" {
		return DefaultCustomerLabel
	}
	return b.CustomerLabel
}

// APIKey loads the API key from the configured environment variable or
// file (surrounding white space trimmed). The error never holds the key.
func (b Billing) APIKey() (string, error) {
	var key string
	switch {
	case b.APIKeyEnv != "":
		key = strings.TrimSpace(os.Getenv(b.APIKeyEnv))
		if key == "" {
			return "", fmt.Errorf("billing.api_key_env: environment variable %s is empty or not set", b.APIKeyEnv)
		}
	case b.APIKeyFile != "":
		raw, err := os.ReadFile(b.APIKeyFile)
		if err != nil {
			return "", fmt.Errorf("billing.api_key_file: %w", err)
		}
		key = strings.TrimSpace(string(raw))
		if key == "" {
			return "", fmt.Errorf("billing.api_key_file: %s is empty", b.APIKeyFile)
		}
	default:
		return "", errors.New("billing: set api_key_env or api_key_file")
	}
	return key, nil
}

// maxEventName is the longest meter event name billing accepts.
const maxEventName = 100

func (b Billing) validate() []error {
	var errs []error
	u, err := url.Parse(b.Endpoint)
	switch {
	case b.Endpoint == "":
		errs = append(errs, errors.New("billing.endpoint: required"))
	case err != nil:
		errs = append(errs, fmt.Errorf("billing.endpoint: %w", err))
	case u.Host == "" || u.User != nil || u.Fragment != "":
		errs = append(errs, fmt.Errorf("billing.endpoint: %q: want an absolute https URL without user info or fragment", u.Redacted()))
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopbackIP(u.Hostname()):
	default:
		errs = append(errs, fmt.Errorf("billing.endpoint: %q must be https (http only to a loopback address)", u.Redacted()))
	}
	switch {
	case b.APIKeyEnv != "" && b.APIKeyFile != "":
		errs = append(errs, errors.New("billing: set api_key_env or api_key_file, not both"))
	case b.APIKeyEnv == "" && b.APIKeyFile == "":
		errs = append(errs, errors.New("billing: set api_key_env or api_key_file (the API key never goes in the config file)"))
	case b.APIKeyEnv != "" && !envName(b.APIKeyEnv):
		errs = append(errs, fmt.Errorf("billing.api_key_env: %q is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)", b.APIKeyEnv))
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"billing.interval", b.Interval}, {"billing.delay", b.Delay}} {
		if d.v != 0 && (time.Duration(d.v) < time.Second || time.Duration(d.v) > 24*time.Hour) {
			errs = append(errs, fmt.Errorf("%s: %s must be between 1s and 24h (omit it for the default)", d.name, d.v))
		}
	}
	if len(b.Meters) == 0 {
		errs = append(errs, errors.New("billing.meters: name at least one meter to export"))
	}
	for _, name := range slices.Sorted(maps.Keys(b.Meters)) {
		m := b.Meters[name]
		if !store.ValidMeter(name) {
			errs = append(errs, fmt.Errorf("billing.meters: %q is not a meter name (^[a-z][a-z0-9_.]{0,99}$)", name))
		}
		if m.EventName == "" || len(m.EventName) > maxEventName || !utf8.ValidString(m.EventName) {
			errs = append(errs, fmt.Errorf("billing.meters.%s.event_name: %q must be 1-%d bytes of UTF-8", name, m.EventName, maxEventName))
		}
		switch m.Aggregation {
		case "", billing.AggregationSum, billing.AggregationMax, billing.AggregationLast:
		default:
			errs = append(errs, fmt.Errorf("billing.meters.%s.aggregation: %q must be sum, max or last", name, m.Aggregation))
		}
	}
	if l := b.CustomerLabel; l != "" && (len(l) > 316 || strings.IndexFunc(l, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./", r))
	}) >= 0) {
		errs = append(errs, fmt.Errorf("billing.customer_label: %q is not a tenant label key", l))
	}
	return errs
}

func isLoopbackIP(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func envName(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
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

// maxTenantSeries bounds metrics.max_tenant_series: every tenant label
// costs a handful of series.
const maxTenantSeries = 100_000

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
	if n := c.Metrics.MaxTenantSeries; n < 0 || n > maxTenantSeries {
		errs = append(errs, fmt.Errorf("metrics.max_tenant_series: %d must be between 1 and %d (0 or omitted: 1000)", n, maxTenantSeries))
	}
	if c.Billing != nil {
		errs = append(errs, c.Billing.validate()...)
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
