package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/protobuf/types/known/structpb"
)

// The app actions run the vendor's app as a local process. The provider owns
// those processes: each runs in its own process group (setpgid), is recorded
// with its pid and group in <root>/apps/<tenant>/current.json (the running
// version) or next.json (a version being started), and is stopped by
// signalling its whole group, SIGTERM then SIGKILL. An app keeps running when
// the provider exits — it is the product, and the agent restarts providers at
// will — and a later provider adopts it from current.json; a version left in
// next.json by an interrupted upgrade is stopped by the next app action.
// app.stop stops the app and forgets it.
func init() {
	register(action{
		info: &providerv1.ActionInfo{
			Name:    "app.upgrade",
			Summary: "start the app at a version, wait until healthy, switch to it and stop the old version; roll back if it is not healthy",
			Params: []*providerv1.ParamInfo{
				{Name: "version", Type: "string", Required: true, Description: "version to run ([A-Za-z0-9._-]+)"},
				{Name: "command", Type: "array<string>", Required: true, Description: "argv; command[0] is relative to the provider's bin_dir"},
				{Name: "health_url", Type: "string", Description: "http URL on a loopback host that answers 2xx when the version is healthy (or set port)"},
				{Name: "port", Type: "number", Description: "shorthand for health_url http://127.0.0.1:<port>/healthz; 0 picks a free loopback port per start, substituted for {port} in command"},
				{Name: "flags", Type: "object<string>", Description: "the tenant's feature flags, written to tenants/<tenant>/config/flags.json (0600) for the app to read"},
				{Name: "health_timeout", Type: "string", Description: "how long to wait for health, a Go duration (default \"30s\")"},
			},
		},
		plan:  planUpgrade,
		apply: applyUpgrade,
	})
	register(action{
		info: &providerv1.ActionInfo{
			Name:    "app.stop",
			Summary: "stop the tenant's app (its whole process group) and forget it",
		},
		plan:  planStop,
		apply: applyStop,
	})
}

// appRecord is current.json / next.json.
type appRecord struct {
	Version   string    `json:"version"`
	Pid       int       `json:"pid"`
	Pgid      int       `json:"pgid"`
	Command   []string  `json:"command"`
	HealthURL string    `json:"health_url"`
	StartedAt time.Time `json:"started_at"`
}

// upgradeSpec is app.upgrade's validated parameters.
type upgradeSpec struct {
	version   string
	argv      []string // argv[0] absolute, below bin_dir
	healthURL string   // empty with autoPort until a port is picked
	autoPort  bool     // port 0: pick a free port at each start
	timeout   time.Duration
	flags     map[string]string // nil: leave flags.json alone
}

var (
	versionRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	flagKeyRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
)

// Flag limits (the control plane enforces the same).
const (
	maxFlags     = 64
	maxFlagValue = 1024
)

// upgradeParams validates app.upgrade's parameters.
func upgradeParams(e *env, step *providerv1.Step) (*upgradeSpec, error) {
	p := sdk.NewParams(step.GetParams())
	s := &upgradeSpec{
		version: p.String("version", true),
		argv:    p.Strings("command", true),
		timeout: p.Duration("health_timeout", false),
		flags:   p.StringMap("flags", false),
	}
	rawURL := p.String("health_url", false)
	hasPort := p.Has("port")
	port := p.Int("port", false)
	if s.version != "" && !versionRE.MatchString(s.version) {
		p.Fail("version", "must match [A-Za-z0-9._-]{1,64}, got %q", s.version)
	}
	switch {
	case rawURL != "" && hasPort:
		p.Fail("port", "set health_url or port, not both")
	case rawURL == "" && !hasPort:
		p.Fail("health_url", "required (or set port)")
	case hasPort && port == 0:
		s.autoPort = true
	case hasPort && (port < 1 || port > 65535):
		p.Fail("port", "must be 0 (pick one) or between 1 and 65535, got %d", port)
	case hasPort:
		s.healthURL = "http://127.0.0.1:" + strconv.FormatInt(port, 10) + "/healthz"
	default:
		if err := checkHealthURL(rawURL); err != nil {
			p.Fail("health_url", "%v", err)
		}
		s.healthURL = rawURL
	}
	if s.timeout == 0 {
		s.timeout = 30 * time.Second
	}
	if len(s.flags) > maxFlags {
		p.Fail("flags", "%d flags, limit %d", len(s.flags), maxFlags)
	}
	for k, v := range s.flags {
		if !flagKeyRE.MatchString(k) || len(v) > maxFlagValue {
			p.FailPath(p.Field("flags")+"."+k, "a flag key is [a-z0-9][a-z0-9_.-]{0,63} and its value at most %d bytes", maxFlagValue)
		}
	}
	if len(s.argv) > 0 {
		if err := checkRel("params.command[0]", s.argv[0]); err != nil {
			p.FailPath("params.command[0]", "%s (it is resolved below the provider's bin_dir)", sdkViolation(err))
		}
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	bin, err := resolveBin(e.binDir, s.argv[0])
	if err != nil {
		return nil, err
	}
	s.argv = append([]string{bin}, s.argv[1:]...)
	return s, nil
}

// checkHealthURL accepts only http(s) URLs on a loopback host: the local
// provider probes the process it started, nothing else.
func checkHealthURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("must be an http or https URL, got %q", raw)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("must be on a loopback host (127.0.0.1, ::1, localhost), got %q", host)
	}
	return nil
}

// resolveBin resolves name below binDir, refusing symlinks and non-executables.
func resolveBin(binDir, name string) (string, error) {
	r, err := os.OpenRoot(binDir)
	if err != nil {
		return "", sdk.FailedPrecondition("bin_dir %s: %v", binDir, err)
	}
	defer r.Close()
	if err := noSymlinks(r, "params.command[0]", name); err != nil {
		return "", err
	}
	fi, err := r.Stat(name)
	if err != nil {
		return "", sdk.InvalidArgument("params.command[0]", "%s: not found in bin_dir %s", name, binDir)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", sdk.InvalidArgument("params.command[0]", "%s in bin_dir %s is not an executable file", name, binDir)
	}
	return filepath.Join(binDir, filepath.FromSlash(name)), nil
}

// readRecord reads apps/<tenant>/<file>; nil if absent.
func readRecord(e *env, tenant, file string) (*appRecord, error) {
	rel := appDir(tenant) + "/" + file
	if err := noSymlinks(e.root, "tenant", rel); err != nil {
		return nil, err
	}
	b, err := e.root.ReadFile(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r appRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	return &r, nil
}

// writeRecord writes apps/<tenant>/<file> atomically.
func writeRecord(e *env, tenant, file string, r *appRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(e, fileSpec{field: appDir(tenant) + "/" + file, rel: appDir(tenant) + "/" + file, content: append(b, '\n'), mode: 0o600})
}

// removeRecord removes apps/<tenant>/<file> if present.
func removeRecord(e *env, tenant, file string) error {
	err := e.root.Remove(appDir(tenant) + "/" + file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// appChanges is the diff shared by Plan and Apply.
func appChanges(e *env, tenant string, s *upgradeSpec) (cur, next *appRecord, changes []*providerv1.Change, err error) {
	if cur, err = readRecord(e, tenant, "current.json"); err != nil {
		return nil, nil, nil, err
	}
	if next, err = readRecord(e, tenant, "next.json"); err != nil {
		return nil, nil, nil, err
	}
	res := appDir(tenant)
	if next != nil && e.p.alive(next) && (cur == nil || next.Pid != cur.Pid) {
		changes = append(changes, change(res+"/next.json", providerv1.Operation_OPERATION_DELETE,
			"stop %s (pid %d) left starting by an interrupted upgrade", next.Version, next.Pid))
	}
	curAlive := cur != nil && e.p.alive(cur)
	switch {
	case cur == nil:
		changes = append(changes, change(res, providerv1.Operation_OPERATION_CREATE, "start %s", s.version))
	case cur.Version == s.version && curAlive:
		changes = append(changes, change(res, providerv1.Operation_OPERATION_NOOP, "%s is running (pid %d)", s.version, cur.Pid))
	case curAlive && s.autoPort:
		changes = append(changes, change(res, providerv1.Operation_OPERATION_UPDATE, "upgrade %s → %s", cur.Version, s.version))
	case cur.Version == s.version:
		changes = append(changes, change(res, providerv1.Operation_OPERATION_UPDATE, "restart %s (pid %d is gone)", s.version, cur.Pid))
	case curAlive && cur.HealthURL == s.healthURL:
		return nil, nil, nil, sdk.FailedPrecondition("params.health_url: the running version %s (pid %d) already serves %s; the new version needs its own address to be health-checked before the switch",
			cur.Version, cur.Pid, s.healthURL)
	default:
		changes = append(changes, change(res, providerv1.Operation_OPERATION_UPDATE, "upgrade %s → %s", cur.Version, s.version))
	}
	return cur, next, changes, nil
}

func planUpgrade(_ context.Context, e *env, step *providerv1.Step) ([]*providerv1.Change, error) {
	s, err := upgradeParams(e, step)
	if err != nil {
		return nil, err
	}
	_, _, changes, err := appChanges(e, step.GetTenant(), s)
	if err != nil {
		return nil, err
	}
	if c, err := flagsChange(e, step.GetTenant(), s.flags); err != nil {
		return nil, err
	} else if c != nil {
		changes = append([]*providerv1.Change{c}, changes...)
	}
	return changes, nil
}

// flagsPath is where a tenant's flags are written.
func flagsPath(tenant string) string { return tenantDir(tenant) + "/config/flags.json" }

func encodeFlags(flags map[string]string) []byte {
	b, _ := json.MarshalIndent(flags, "", "  ") // sorted keys
	return append(b, '\n')
}

// flagsChange is the change writing flags would make, nil when flags is nil.
func flagsChange(e *env, tenant string, flags map[string]string) (*providerv1.Change, error) {
	if flags == nil {
		return nil, nil
	}
	want := encodeFlags(flags)
	cur, err := e.root.ReadFile(flagsPath(tenant))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return change(flagsPath(tenant), providerv1.Operation_OPERATION_CREATE, "write %d flags", len(flags)), nil
	case err != nil:
		return nil, err
	case string(cur) == string(want):
		return change(flagsPath(tenant), providerv1.Operation_OPERATION_NOOP, "%d flags unchanged", len(flags)), nil
	default:
		return change(flagsPath(tenant), providerv1.Operation_OPERATION_UPDATE, "update flags (%d)", len(flags)), nil
	}
}

// applyFlags writes flags.json when flags changed.
func applyFlags(e *env, tenant string, flags map[string]string) (*providerv1.Change, error) {
	c, err := flagsChange(e, tenant, flags)
	if err != nil || c == nil || c.GetOperation() == providerv1.Operation_OPERATION_NOOP {
		return c, err
	}
	if err := noSymlinks(e.root, "params.flags", flagsPath(tenant)); err != nil {
		return nil, err
	}
	return c, writeFileAtomic(e, fileSpec{field: "params.flags", rel: flagsPath(tenant), content: encodeFlags(flags), mode: 0o600})
}

func applyUpgrade(ctx context.Context, e *env, step *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	tenant := step.GetTenant()
	s, err := upgradeParams(e, step)
	if err != nil {
		return nil, err
	}
	cur, next, changes, err := appChanges(e, tenant, s)
	if err != nil {
		return nil, err
	}
	// Flags first: a version that starts reads them.
	if c, err := applyFlags(e, tenant, s.flags); err != nil {
		return nil, err
	} else if c != nil {
		changes = append([]*providerv1.Change{c}, changes...)
	}
	if next != nil {
		if e.p.alive(next) && (cur == nil || next.Pid != cur.Pid) {
			sdk.Report(progress, appDir(tenant), fmt.Sprintf("stopping %s (pid %d) left by an interrupted upgrade", next.Version, next.Pid))
			e.p.stop(next)
		}
		if err := removeRecord(e, tenant, "next.json"); err != nil {
			return nil, err
		}
	}
	main := changes[len(changes)-1]
	if main.GetOperation() == providerv1.Operation_OPERATION_NOOP {
		return &providerv1.ApplyResult{
			State: providerv1.StepState_STEP_STATE_SUCCEEDED, Message: main.GetSummary(),
			Outputs: outputs(cur, ""), Changes: changes,
		}, nil
	}

	if s.autoPort {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.healthURL = "http://127.0.0.1:" + strconv.Itoa(port) + "/healthz"
		for i, a := range s.argv {
			s.argv[i] = strings.ReplaceAll(a, "{port}", strconv.Itoa(port))
		}
	}
	sdk.Report(progress, appDir(tenant), "starting "+s.version)
	if err := e.root.MkdirAll(appDir(tenant), 0o750); err != nil {
		return nil, err
	}
	np, err := e.p.start(e, tenant, s)
	if err != nil {
		return failed(fmt.Sprintf("could not start %s: %v; nothing changed", s.version, err), changes), nil
	}
	if err := writeRecord(e, tenant, "next.json", np); err != nil {
		e.p.stop(np)
		return nil, err
	}
	sdk.Report(progress, appDir(tenant), fmt.Sprintf("%s started (pid %d); waiting up to %s for %s", s.version, np.Pid, s.timeout, s.healthURL))
	healthErr := e.p.waitHealthy(ctx, np, s.healthURL, s.timeout)
	if healthErr != nil || ctx.Err() != nil {
		sdk.Report(progress, appDir(tenant), fmt.Sprintf("stopping %s (pid %d)", s.version, np.Pid))
		e.p.stop(np)
		if err := removeRecord(e, tenant, "next.json"); err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		kept := "no version was running before"
		if cur != nil && e.p.alive(cur) {
			kept = fmt.Sprintf("%s (pid %d) keeps running", cur.Version, cur.Pid)
		}
		return failed(fmt.Sprintf("%s is not healthy: %v; rolled back: %s stopped, %s (log: %s)",
			s.version, healthErr, s.version, kept, appDir(tenant)+"/"+s.version+".log"), changes), nil
	}
	if err := writeRecord(e, tenant, "current.json", np); err != nil {
		e.p.stop(np)
		return nil, err
	}
	if err := removeRecord(e, tenant, "next.json"); err != nil {
		return nil, err
	}
	prev := ""
	if cur != nil {
		prev = cur.Version
		if cur.Pid != np.Pid && e.p.alive(cur) {
			sdk.Report(progress, appDir(tenant), fmt.Sprintf("%s is healthy; stopping %s (pid %d)", s.version, cur.Version, cur.Pid))
			e.p.stop(cur)
		}
	}
	return &providerv1.ApplyResult{
		State: providerv1.StepState_STEP_STATE_SUCCEEDED, Message: fmt.Sprintf("%s running (pid %d) and healthy", s.version, np.Pid),
		Outputs: outputs(np, prev), Changes: changes,
	}, nil
}

// freePort picks a free loopback TCP port for an app version to listen on.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// failed builds a FAILED result.
func failed(msg string, changes []*providerv1.Change) *providerv1.ApplyResult {
	return &providerv1.ApplyResult{State: providerv1.StepState_STEP_STATE_FAILED, Message: msg, Changes: changes}
}

// outputs describes the running version.
func outputs(r *appRecord, previous string) *structpb.Struct {
	if r == nil {
		return nil
	}
	m := map[string]any{"version": r.Version, "pid": float64(r.Pid), "health_url": r.HealthURL}
	if previous != "" {
		m["previous_version"] = previous
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil
	}
	return s
}

func stopParams(step *providerv1.Step) error {
	return sdk.NewParams(step.GetParams()).Err()
}

func planStop(_ context.Context, e *env, step *providerv1.Step) ([]*providerv1.Change, error) {
	if err := stopParams(step); err != nil {
		return nil, err
	}
	var changes []*providerv1.Change
	for _, file := range []string{"next.json", "current.json"} {
		r, err := readRecord(e, step.GetTenant(), file)
		if err != nil {
			return nil, err
		}
		res := appDir(step.GetTenant()) + "/" + file
		if r == nil {
			changes = append(changes, change(res, providerv1.Operation_OPERATION_NOOP, "no %s", file))
			continue
		}
		changes = append(changes, change(res, providerv1.Operation_OPERATION_DELETE, "stop %s (pid %d) and forget it", r.Version, r.Pid))
	}
	return changes, nil
}

func applyStop(ctx context.Context, e *env, step *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	changes, err := planStop(ctx, e, step)
	if err != nil {
		return nil, err
	}
	for _, file := range []string{"next.json", "current.json"} {
		r, err := readRecord(e, step.GetTenant(), file)
		if err != nil || r == nil {
			continue
		}
		if e.p.alive(r) {
			sdk.Report(progress, appDir(step.GetTenant()), fmt.Sprintf("stopping %s (pid %d)", r.Version, r.Pid))
			e.p.stop(r)
		}
		if err := removeRecord(e, step.GetTenant(), file); err != nil {
			return nil, err
		}
	}
	return succeeded(fmt.Sprintf("app of tenant %s stopped (%d changes)", step.GetTenant(), countChanges(changes)), changes), nil
}

// waitHealthy polls url until it answers 2xx, the process exits, timeout
// passes or ctx ends.
func (p *Provider) waitHealthy(ctx context.Context, r *appRecord, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := errors.New("no answer yet")
	for {
		if exited, why := p.exited(r); exited {
			return fmt.Errorf("process exited before it was healthy: %s", why)
		}
		err := probe(ctx, client, url)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil { // keep the app's answer, not our own deadline
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not healthy within %s: %v", timeout, last)
		case <-tick.C:
		}
	}
}

// probe makes one health request.
func probe(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
