// Package local is attache-provider-local, the embedded default provider used
// for development and the demo. It acts on the machine it runs on, always
// below one configured root directory:
//
//   - tenant.provision: <root>/tenants/<tenant>/{data,config} and the files
//     a step declares;
//   - db.migrate: a SQLite database per tenant (<root>/tenants/<tenant>/app.db)
//     with versioned SQL migrations, a state table
//     attache_schema_migrations(version, name, checksum, applied_at,
//     duration_ms), checksum checks and resume;
//   - app.upgrade / app.stop: a local process of the vendor's app, run by
//     version with a health check, switch-over and rollback.
//
// Every action is idempotent and validates its parameters strictly (unknown
// keys, paths outside the root, ".." and symlink escapes are refused).
//
// Imported by its command (cmd/attache-provider-local) and its tests; the
// agent never links it (it uses SQLite) but runs the binary through
// agent/catalog.
package local

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
)

// Name is the provider's name; its binary is attache-provider-local.
const Name = "local"

// Config is the provider's configuration (ConfigureRequest.config).
type Config struct {
	// Root is the absolute directory everything the provider touches lives
	// under. It is created if missing.
	Root string `json:"root"`
	// BinDir is the absolute directory app.upgrade may run executables from
	// (command[0] is resolved below it). Defaults to <root>/bin. The
	// customer chooses it; plans cannot name a program outside it.
	BinDir string `json:"bin_dir,omitempty"`
}

// Provider is the local provider. Create it with New, then Configure it.
type Provider struct {
	version string
	log     *slog.Logger

	mu      sync.Mutex // guards the fields below
	root    *os.Root
	rootDir string
	binDir  string
	tenant  *providerv1.TenantContext
	locks   map[string]*sync.Mutex // per tenant: one action at a time
	procs   map[int]*proc          // app processes this provider started
}

var _ sdk.Provider = (*Provider)(nil)

// New returns an unconfigured provider reporting version in Describe.
func New(log *slog.Logger, version string) *Provider {
	return &Provider{version: version, log: log, locks: map[string]*sync.Mutex{}, procs: map[int]*proc{}}
}

// action is one action the provider offers.
type action struct {
	info  *providerv1.ActionInfo
	plan  func(ctx context.Context, env *env, step *providerv1.Step) ([]*providerv1.Change, error)
	apply func(ctx context.Context, env *env, step *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error)
}

// actions lists every action by name.
var actions = map[string]action{}

func register(a action) { actions[a.info.GetName()] = a }

// env is what an action works with: the configured root and the provider.
type env struct {
	p       *Provider
	root    *os.Root
	rootDir string
	binDir  string
}

// Describe lists the actions.
func (p *Provider) Describe(context.Context) (*providerv1.DescribeResponse, error) {
	resp := &providerv1.DescribeResponse{Name: Name, Version: p.version}
	for _, a := range actions {
		resp.Actions = append(resp.Actions, a.info)
	}
	sort.Slice(resp.Actions, func(i, j int) bool { return resp.Actions[i].GetName() < resp.Actions[j].GetName() })
	return resp, nil
}

// Configure sets the root directory (creating it) and the bin directory.
// It may be called again, e.g. after the host restarted the plugin.
func (p *Provider) Configure(_ context.Context, req *providerv1.ConfigureRequest) error {
	var cfg Config
	if err := sdk.DecodeConfig(req, &cfg); err != nil {
		return err
	}
	if cfg.Root == "" || !filepath.IsAbs(cfg.Root) {
		return sdk.InvalidArgument("config.root", "must be an absolute directory, got %q", cfg.Root)
	}
	if cfg.BinDir != "" && !filepath.IsAbs(cfg.BinDir) {
		return sdk.InvalidArgument("config.bin_dir", "must be an absolute directory, got %q", cfg.BinDir)
	}
	if err := os.MkdirAll(cfg.Root, 0o750); err != nil {
		return fmt.Errorf("config.root: %w", err)
	}
	rootDir, err := filepath.EvalSymlinks(cfg.Root)
	if err != nil {
		return fmt.Errorf("config.root: %w", err)
	}
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return fmt.Errorf("config.root: %w", err)
	}
	binDir := cfg.BinDir
	if binDir == "" {
		binDir = filepath.Join(rootDir, "bin")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.root != nil {
		_ = p.root.Close()
	}
	p.root, p.rootDir, p.binDir, p.tenant = root, rootDir, binDir, req.GetTenant()
	p.log.Info("configured", "root", rootDir, "bin_dir", binDir, "tenant", req.GetTenant().GetTenant())
	return nil
}

// env returns the configured environment or FailedPrecondition.
func (p *Provider) env() (*env, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.root == nil {
		return nil, sdk.FailedPrecondition("provider %q is not configured (call Configure first)", Name)
	}
	return &env{p: p, root: p.root, rootDir: p.rootDir, binDir: p.binDir}, nil
}

// lockTenant serializes actions on one tenant and returns the unlock.
func (p *Provider) lockTenant(tenant string) func() {
	p.mu.Lock()
	l, ok := p.locks[tenant]
	if !ok {
		l = &sync.Mutex{}
		p.locks[tenant] = l
	}
	p.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// lookup validates the step's action and tenant.
func lookup(step *providerv1.Step) (action, error) {
	a, ok := actions[step.GetAction()]
	if !ok {
		names := make([]string, 0, len(actions))
		for n := range actions {
			names = append(names, n)
		}
		sort.Strings(names)
		return action{}, sdk.InvalidArgument("action", "unknown action %q (known: %v)", step.GetAction(), names)
	}
	if err := validTenant(step.GetTenant()); err != nil {
		return action{}, err
	}
	return a, nil
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// validTenant refuses a tenant that is not a DNS label.
func validTenant(t string) error {
	if !dnsLabel.MatchString(t) {
		return sdk.InvalidArgument("tenant", "must be a DNS label (lower-case letters, digits and '-', at most 63), got %q", t)
	}
	return nil
}

// Plan returns the diff of step without changing anything.
func (p *Provider) Plan(ctx context.Context, step *providerv1.Step) ([]*providerv1.Change, error) {
	a, err := lookup(step)
	if err != nil {
		return nil, err
	}
	e, err := p.env()
	if err != nil {
		return nil, err
	}
	defer p.lockTenant(step.GetTenant())()
	return a.plan(ctx, e, step)
}

// Apply carries step out.
func (p *Provider) Apply(ctx context.Context, step *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	a, err := lookup(step)
	if err != nil {
		return nil, err
	}
	e, err := p.env()
	if err != nil {
		return nil, err
	}
	defer p.lockTenant(step.GetTenant())()
	p.log.Info("apply", "step", step.GetId(), "action", step.GetAction(), "tenant", step.GetTenant(), "plan", step.GetPlanId(), "attempt", step.GetAttempt())
	if err := recordApply(e, step, time.Now()); err != nil {
		return nil, err
	}
	return a.apply(ctx, e, step, progress)
}

// ApplyLogFile is the provider's record of every Apply it started, one JSON
// object per line (ApplyLogEntry), relative to the root. Operators read it
// to see what ran when; tests read it to prove a step was not run twice.
const ApplyLogFile = "apply.log"

// ApplyLogEntry is one line of ApplyLogFile.
type ApplyLogEntry struct {
	Time    time.Time `json:"time"`
	Tenant  string    `json:"tenant"`
	Plan    string    `json:"plan"`
	Step    string    `json:"step"`
	Action  string    `json:"action"`
	Attempt uint32    `json:"attempt"`
}

// recordApply appends step to the apply log before the action starts.
func recordApply(e *env, step *providerv1.Step, now time.Time) error {
	line, err := json.Marshal(ApplyLogEntry{
		Time: now.UTC(), Tenant: step.GetTenant(), Plan: step.GetPlanId(), Step: step.GetId(),
		Action: step.GetAction(), Attempt: step.GetAttempt(),
	})
	if err != nil {
		return err
	}
	f, err := e.root.OpenFile(ApplyLogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("record apply: %w", err)
	}
	// One write of a short line with O_APPEND: lines of concurrent applies
	// (different tenants) do not interleave.
	_, err = f.Write(append(line, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record apply: %w", err)
	}
	return nil
}

// succeeded builds a SUCCEEDED result.
func succeeded(msg string, changes []*providerv1.Change) *providerv1.ApplyResult {
	return &providerv1.ApplyResult{State: providerv1.StepState_STEP_STATE_SUCCEEDED, Message: msg, Changes: changes}
}

// change builds one Change.
func change(resource string, op providerv1.Operation, format string, args ...any) *providerv1.Change {
	return &providerv1.Change{Resource: resource, Operation: op, Summary: fmt.Sprintf(format, args...)}
}

// countChanges counts the changes that are not NOOP.
func countChanges(cs []*providerv1.Change) int {
	n := 0
	for _, c := range cs {
		if c.GetOperation() != providerv1.Operation_OPERATION_NOOP {
			n++
		}
	}
	return n
}
