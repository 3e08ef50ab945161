package agentcli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/yaml"

	"attache.dev/attache/agent/catalog"
	"attache.dev/attache/agent/telemetry"
	"attache.dev/attache/internal/yamldoc"
)

// MaxConfigBytes bounds the agent's config file.
const MaxConfigBytes = 1 << 20

// Config is the agent's config file (--config), written by the customer:
// which provider plugins the agent may run, pinned by checksum, and their
// configuration; and, optionally, the vendor app's Prometheus endpoint the
// agent scrapes for request, error and latency usage.
//
//	providers:
//	  - name: local
//	    path: /usr/local/libexec/attache/attache-provider-local
//	    sha256: 3f1c…   # attache-agent provider pin prints it
//	    config:
//	      root: /var/lib/attache/local
//	      bin_dir: /opt/vendor/bin
//	app_metrics:        # optional
//	  url: http://127.0.0.1:8080/metrics
//	  tenant_label: tenant   # default tenant
//	  timeout: 5s            # default 5s, 1s..60s
type Config struct {
	Providers  []catalog.Entry   `json:"providers"`
	AppMetrics *AppMetricsConfig `json:"app_metrics,omitempty"`
}

// AppMetricsConfig is the app_metrics key: the vendor app's Prometheus
// endpoint (text format), scraped every collection round (see
// agent/telemetry).
type AppMetricsConfig struct {
	// URL is http or https.
	URL string `json:"url"`
	// TenantLabel names the label that carries a series' tenant; default
	// "tenant".
	TenantLabel string `json:"tenant_label,omitempty"`
	// Timeout is a Go duration between 1s and 60s; default 5s.
	Timeout string `json:"timeout,omitempty"`
}

// Telemetry returns the collector's settings; nil when a is nil. The
// config must have been validated.
func (a *AppMetricsConfig) Telemetry() (*telemetry.AppMetrics, error) {
	if a == nil {
		return nil, nil
	}
	out := &telemetry.AppMetrics{URL: a.URL, TenantLabel: a.TenantLabel}
	if a.Timeout != "" {
		d, err := time.ParseDuration(a.Timeout)
		if err != nil {
			return nil, fmt.Errorf("timeout: %q is not a duration such as 5s", a.Timeout)
		}
		out.Timeout = d
	}
	return out, nil
}

// validate reports every problem at once.
func (a *AppMetricsConfig) validate(providers []catalog.Entry) error {
	var errs []error
	tm, err := a.Telemetry()
	if err != nil {
		errs = append(errs, err)
		tm = &telemetry.AppMetrics{URL: a.URL, TenantLabel: a.TenantLabel}
	} else if a.Timeout != "" && tm.Timeout == 0 {
		errs = append(errs, fmt.Errorf("timeout: must be between %s and %s", telemetry.MinAppMetricsTimeout, telemetry.MaxAppMetricsTimeout))
	}
	if err := tm.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, p := range providers {
		if p.Name+"." == telemetry.AppMeterPrefix {
			errs = append(errs, fmt.Errorf("a provider named %q would share the app metrics' meter prefix %q; rename the provider", p.Name, telemetry.AppMeterPrefix))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("app_metrics: %w", err)
	}
	return nil
}

// LoadConfig reads and validates a config file strictly: unknown keys are
// errors, every problem is reported at once, and a file others may write is
// refused (it decides which programs the agent runs).
func LoadConfig(path string) (*Config, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("config: %s is writable by group or others (mode %04o): it decides which programs the agent runs; chmod go-w it", path, fi.Mode().Perm())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(b) > MaxConfigBytes {
		return nil, fmt.Errorf("config: %s is larger than %d bytes", path, MaxConfigBytes)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes YAML (or JSON) config strictly and validates it:
// one document, no duplicate keys, no unknown keys.
func ParseConfig(b []byte) (*Config, error) {
	if yamldoc.Multiple(b) {
		return nil, errors.New("more than one YAML document; the config is a single document")
	}
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode: more than one document")
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := catalog.Validate(c.Providers); err != nil {
		errs = append(errs, err)
	}
	if c.AppMetrics != nil {
		if err := c.AppMetrics.validate(c.Providers); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// FileSHA256 returns the hex SHA-256 of the file at path, the value a
// provider entry pins.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// PinEntry returns the config entry pinning the provider binary at path.
func PinEntry(name, path string, config json.RawMessage) (catalog.Entry, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return catalog.Entry{}, err
	}
	sum, err := FileSHA256(abs)
	if err != nil {
		return catalog.Entry{}, err
	}
	e := catalog.Entry{Name: name, Path: abs, SHA256: sum, Config: config}
	if err := catalog.Validate([]catalog.Entry{e}); err != nil {
		return catalog.Entry{}, err
	}
	return e, nil
}
