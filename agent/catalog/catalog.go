// Package catalog is the agent's provider plugin host: it starts each
// provider binary named in the agent's config with hashicorp/go-plugin (gRPC
// only, AutoMTLS, the binary's SHA-256 pinned through SecureConfig, a
// sanitized environment), configures it, hands out a per-version facade that
// puts a timeout on every unary RPC, and restarts a provider whose Ping
// fails — checked before each use and on a ticker (Run).
//
// Imported by the agent's executor and command. The process that uses a
// Catalog must `defer plugin.CleanupClients()` in main (the clients are
// Managed), so no provider process outlives the agent even on a panic; Close
// kills this catalog's providers.
package catalog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	plugin "github.com/hashicorp/go-plugin"
)

// Entry is one provider in the agent's config.
type Entry struct {
	// Name is the provider's name, as plan steps refer to it ("local").
	Name string `json:"name"`
	// Path is the absolute path of the provider binary.
	Path string `json:"path"`
	// SHA256 is the hex SHA-256 of the binary; a binary that does not match
	// is refused.
	SHA256 string `json:"sha256"`
	// Config is the provider's configuration, passed to Configure as JSON.
	Config json.RawMessage `json:"config,omitempty"`
	// PassEnv names variables of the agent's environment handed to this
	// provider's process, and only to it: how a secret such as a database
	// connection string reaches a provider (its config names the variable)
	// without appearing in a file or a plan. Nothing else of the agent's
	// environment is inherited. A variable that is not set is not passed.
	PassEnv []string `json:"pass_env,omitempty"`
}

// Options tune a Catalog. Zero values take the defaults.
type Options struct {
	// Logger receives the catalog's and go-plugin's logs, and the
	// providers' stderr lines. Required.
	Logger *slog.Logger
	// Tenant is passed to every provider's Configure.
	Tenant *providerv1.TenantContext
	// CallTimeout bounds each unary RPC (Describe, Configure, Plan,
	// Health, Usage). Default 30s. Apply is bounded only by its context.
	CallTimeout time.Duration
	// StartTimeout bounds a provider's start-up handshake. Default 20s.
	StartTimeout time.Duration
	// PingInterval is how often Run pings every provider. Default 15s.
	PingInterval time.Duration
	// PingTimeout bounds one Ping. Default 5s.
	PingTimeout time.Duration
	// Env is the provider processes' whole environment besides what
	// go-plugin adds (its magic cookie, ports, AutoMTLS certificate).
	// Default: PATH=/usr/local/bin:/usr/bin:/bin and, if set, TMPDIR.
	// The agent's own environment (credentials!) is never inherited.
	Env []string
}

func (o *Options) defaults() {
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 20 * time.Second
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 15 * time.Second
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = 5 * time.Second
	}
	if o.Env == nil {
		o.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
		if tmp := os.Getenv("TMPDIR"); tmp != "" {
			o.Env = append(o.Env, "TMPDIR="+tmp)
		}
	}
}

// ErrChecksumMismatch is returned (wrapped, naming the provider, its path and
// both sums) when a provider binary's SHA-256 is not the pinned one.
var ErrChecksumMismatch = errors.New("provider binary checksum does not match the pinned sha256")

// ErrUnknownProvider is returned (wrapped) for a provider name not in the
// catalog.
var ErrUnknownProvider = errors.New("unknown provider")

// Catalog holds the running providers.
type Catalog struct {
	opts    Options
	log     *slog.Logger
	plugins map[string]*managed
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	// reservedEnv are variables the catalog or go-plugin set themselves.
	reservedEnv = map[string]bool{"PATH": true, "TMPDIR": true, sdk.Handshake.MagicCookieKey: true}
)

// processEnv is a provider's environment: the catalog's base, then each
// variable of passEnv that lookup finds.
func processEnv(base, passEnv []string, lookup func(string) (string, bool)) []string {
	env := append([]string(nil), base...)
	for _, k := range passEnv {
		if v, ok := lookup(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// Validate reports every problem with entries at once.
func Validate(entries []Entry) error {
	var errs []error
	seen := map[string]bool{}
	for i, e := range entries {
		where := fmt.Sprintf("providers[%d] (%s)", i, e.Name)
		if !nameRE.MatchString(e.Name) {
			errs = append(errs, fmt.Errorf("%s: name must be a DNS label", where))
		}
		if seen[e.Name] {
			errs = append(errs, fmt.Errorf("%s: duplicate name", where))
		}
		seen[e.Name] = true
		if !filepath.IsAbs(e.Path) {
			errs = append(errs, fmt.Errorf("%s: path must be absolute, got %q", where, e.Path))
		}
		if b, err := hex.DecodeString(e.SHA256); err != nil || len(b) != sha256.Size {
			errs = append(errs, fmt.Errorf("%s: sha256 must be 64 hex digits", where))
		}
		if len(e.Config) > 0 && !json.Valid(e.Config) {
			errs = append(errs, fmt.Errorf("%s: config is not valid JSON", where))
		}
		for j, v := range e.PassEnv {
			switch {
			case !envNameRE.MatchString(v):
				errs = append(errs, fmt.Errorf("%s: pass_env[%d]: %q is not an environment variable name", where, j, v))
			case reservedEnv[v] || strings.HasPrefix(v, "PLUGIN_"):
				errs = append(errs, fmt.Errorf("%s: pass_env[%d]: %s is set by the agent or go-plugin and cannot be passed", where, j, v))
			case strings.HasPrefix(v, "LD_") || strings.HasPrefix(v, "DYLD_") || v == "GODEBUG":
				errs = append(errs, fmt.Errorf("%s: pass_env[%d]: %s changes how the pinned binary loads or runs and cannot be passed", where, j, v))
			}
		}
	}
	return errors.Join(errs...)
}

// Load validates entries, then starts and configures every provider. It
// fails — killing what it started — if any provider cannot start, e.g. when
// its checksum does not match (errors.Is(err, ErrChecksumMismatch)).
func Load(ctx context.Context, entries []Entry, opts Options) (*Catalog, error) {
	if opts.Logger == nil {
		return nil, errors.New("catalog: Options.Logger is required")
	}
	if err := Validate(entries); err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	opts.defaults()
	c := &Catalog{opts: opts, log: opts.Logger, plugins: map[string]*managed{}}
	for _, e := range entries {
		sum, _ := hex.DecodeString(e.SHA256)
		m := &managed{cat: c, entry: e, sum: sum, log: c.log.With("provider", e.Name)}
		if err := m.start(ctx); err != nil {
			c.Close()
			return nil, err
		}
		c.plugins[e.Name] = m
	}
	return c, nil
}

// Names lists the providers, sorted.
func (c *Catalog) Names() []string {
	names := make([]string, 0, len(c.plugins))
	for n := range c.plugins {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Provider returns the facade for the named provider. The facade checks the
// plugin before each call and restarts it if its Ping fails, so callers may
// keep it.
func (c *Catalog) Provider(name string) (sdk.Provider, error) {
	m, ok := c.plugins[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (configured: %v)", ErrUnknownProvider, name, c.Names())
	}
	return &v1{m: m, timeout: c.opts.CallTimeout}, nil
}

// Run pings every provider each PingInterval and restarts those that fail,
// until ctx ends.
func (c *Catalog) Run(ctx context.Context) error {
	t := time.NewTicker(c.opts.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, name := range c.Names() {
			if _, err := c.plugins[name].live(ctx); err != nil {
				c.log.Warn("provider unavailable", "provider", name, "err", err)
			}
		}
	}
}

// Close kills every provider process.
func (c *Catalog) Close() {
	for _, m := range c.plugins {
		m.kill()
	}
}

// managed is one provider plugin and its current process.
type managed struct {
	cat   *Catalog
	entry Entry
	sum   []byte
	log   *slog.Logger

	mu       sync.Mutex
	config   *providerv1.ConfigureRequest // last Configure, replayed after a restart
	client   *plugin.Client
	prov     sdk.Provider
	restarts int
}

// checkSum hashes the binary and refuses a mismatch with a clear error.
// go-plugin checks again (SecureConfig) as it starts the binary.
func (m *managed) checkSum() error { return checkBinary(m.entry) }

// CheckBinaries validates entries and checks every provider binary against
// its pinned SHA-256, without starting anything: the agent calls it first
// thing, so a wrong checksum stops it before it enrolls or opens its
// journal. Every problem is reported at once; a mismatch names the
// provider, its path and both sums (errors.Is(err, ErrChecksumMismatch)).
// Load checks again as it starts each provider.
func CheckBinaries(entries []Entry) error {
	if err := Validate(entries); err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, checkBinary(e))
	}
	return errors.Join(errs...)
}

// checkBinary hashes e's binary and compares it with e.SHA256 (which
// Validate checked is 64 hex digits).
func checkBinary(e Entry) error {
	f, err := os.Open(e.Path)
	if err != nil {
		return fmt.Errorf("provider %q: %w", e.Name, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("provider %q: read %s: %w", e.Name, e.Path, err)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), strings.ToLower(e.SHA256); got != want {
		return fmt.Errorf("provider %q: %s has sha256 %s, config pins %s: %w", e.Name, e.Path, got, want, ErrChecksumMismatch)
	}
	return nil
}

// start launches and configures the provider; m.mu must be held or m not
// yet shared.
func (m *managed) start(ctx context.Context) error {
	if err := m.checkSum(); err != nil {
		return err
	}
	cmd := exec.Command(m.entry.Path)
	cmd.Env = processEnv(m.cat.opts.Env, m.entry.PassEnv, os.LookupEnv)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          sdk.PluginSet(),
		Cmd:              cmd,
		SkipHostEnv:      true,
		SecureConfig:     &plugin.SecureConfig{Checksum: m.sum, Hash: sha256.New()}, // a fresh hash per start: it is stateful
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Managed:          true,
		StartTimeout:     m.cat.opts.StartTimeout,
		Logger:           newHCLogger(m.log),
	})
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
			return fmt.Errorf("provider %q: %s: %w", m.entry.Name, m.entry.Path, ErrChecksumMismatch)
		}
		return fmt.Errorf("provider %q: start %s: %w", m.entry.Name, m.entry.Path, err)
	}
	raw, err := rpc.Dispense(sdk.PluginName)
	if err != nil {
		client.Kill()
		return fmt.Errorf("provider %q: dispense: %w", m.entry.Name, err)
	}
	prov, ok := raw.(sdk.Provider)
	if !ok {
		client.Kill()
		return fmt.Errorf("provider %q: dispensed %T, not a provider", m.entry.Name, raw)
	}
	cctx, cancel := context.WithTimeout(ctx, m.cat.opts.CallTimeout)
	defer cancel()
	req := m.config
	if req == nil {
		req = &providerv1.ConfigureRequest{ConfigJson: m.entry.Config, Tenant: m.cat.opts.Tenant}
	}
	if err := prov.Configure(cctx, req); err != nil {
		client.Kill()
		return fmt.Errorf("provider %q: configure: %w", m.entry.Name, err)
	}
	m.client, m.prov, m.config = client, prov, req
	m.log.Info("provider started", "path", m.entry.Path, "pid", pidOf(client), "restarts", m.restarts)
	return nil
}

// pidOf returns the plugin's pid for logs, 0 if unknown.
func pidOf(c *plugin.Client) int {
	if rc := c.ReattachConfig(); rc != nil {
		return rc.Pid
	}
	return 0
}

// live returns the running provider, restarting it if it exited or its
// Ping fails.
func (m *managed) live(ctx context.Context) (sdk.Provider, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.client != nil && !m.client.Exited() {
		err := m.ping()
		if err == nil {
			return m.prov, nil
		}
		m.log.Warn("provider ping failed; restarting", "err", err)
	} else if m.client != nil {
		m.log.Warn("provider exited; restarting")
	}
	if m.client != nil {
		m.client.Kill()
		m.client, m.prov = nil, nil
	}
	m.restarts++
	if err := m.start(ctx); err != nil {
		return nil, err
	}
	return m.prov, nil
}

// ping pings the plugin with PingTimeout (go-plugin's Ping takes no context).
func (m *managed) ping() error {
	rpc, err := m.client.Client()
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- rpc.Ping() }()
	select {
	case err := <-done:
		return err
	case <-time.After(m.cat.opts.PingTimeout):
		return fmt.Errorf("ping: no answer within %s", m.cat.opts.PingTimeout)
	}
}

// kill ends the plugin process.
func (m *managed) kill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.client != nil {
		m.client.Kill()
		m.client, m.prov = nil, nil
	}
}

// Restarts reports how often the named provider was restarted (for tests
// and the agent's health report).
func (c *Catalog) Restarts(name string) int {
	m, ok := c.plugins[name]
	if !ok {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.restarts
}
