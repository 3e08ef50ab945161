package local_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/local"
	"attache.dev/attache/providers/local/localtest"
	"attache.dev/attache/providers/providertest"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	_ "modernc.org/sqlite"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestConformanceInProcess runs the providertest suite against the provider
// served in-process over real gRPC.
func TestConformanceInProcess(t *testing.T) {
	bin := localtest.BuildSampleApp(t)
	providertest.Run(t, func(t *testing.T) providertest.Fixture {
		root := t.TempDir()
		ip, err := sdk.ServeInProcess(local.New(quiet(), "test"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ip.Close() })
		localtest.Configure(t, ip, root, bin)
		return providertest.Fixture{Provider: ip, Snapshot: func(t *testing.T) []byte { return localtest.Snapshot(t, root) }}
	}, localtest.Cases(t))
}

// newLocal returns a configured provider called directly and its root.
func newLocal(t *testing.T, bin string) (*local.Provider, string) {
	t.Helper()
	root := t.TempDir()
	p := local.New(quiet(), "test")
	localtest.Configure(t, p, root, bin)
	return p, root
}

func apply(t *testing.T, p sdk.Provider, s *providerv1.Step) *providerv1.ApplyResult {
	t.Helper()
	res, err := p.Apply(t.Context(), s, func(pr *providerv1.Progress) { t.Logf("progress: %s", pr.GetMessage()) })
	if err != nil {
		t.Fatalf("Apply %s: %v", s.GetId(), err)
	}
	return res
}

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), contains) {
		t.Fatalf("got %v, want %s containing %q", err, code, contains)
	}
}

func TestUnconfigured(t *testing.T) {
	p := local.New(quiet(), "test")
	_, err := p.Plan(t.Context(), localtest.Step("s", "tenant.provision", "acme", nil))
	wantCode(t, err, codes.FailedPrecondition, "not configured")
	err = p.Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: []byte(`{"root":"relative"}`)})
	wantCode(t, err, codes.InvalidArgument, "config.root")
	err = p.Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: []byte(`{"root":"/tmp","colour":"red"}`)})
	wantCode(t, err, codes.InvalidArgument, "colour")
}

func TestProvisionRefusesSymlinkEscape(t *testing.T) {
	p, root := newLocal(t, t.TempDir())
	res := apply(t, p, localtest.Step("p", "tenant.provision", "acme", nil))
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatal(res.GetMessage())
	}
	for _, d := range []string{"data", "config"} {
		if fi, err := os.Stat(filepath.Join(root, "tenants/acme", d)); err != nil || !fi.IsDir() {
			t.Fatalf("tenants/acme/%s: %v", d, err)
		}
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "tenants/acme/config/evil")); err != nil {
		t.Fatal(err)
	}
	s := localtest.Step("p", "tenant.provision", "acme", map[string]any{"files": []any{map[string]any{"path": "config/evil/x", "content": "pwned"}}})
	_, err := p.Apply(t.Context(), s, nil)
	wantCode(t, err, codes.InvalidArgument, "params.files[0].path")
	if _, err := os.Stat(filepath.Join(outside, "x")); err == nil {
		t.Fatal("file written through the symlink")
	}
	// A symlinked tenant directory is refused too.
	if err := os.Symlink(outside, filepath.Join(root, "tenants/evil")); err != nil {
		t.Fatal(err)
	}
	_, err = p.Apply(t.Context(), localtest.Step("p", "db.migrate", "evil", map[string]any{"migrations": localtest.Migrations}), nil)
	wantCode(t, err, codes.InvalidArgument, "symbolic link")
}

func TestProvisionUpdatesFiles(t *testing.T) {
	p, root := newLocal(t, t.TempDir())
	step := func(content, mode string) *providerv1.Step {
		return localtest.Step("p", "tenant.provision", "acme", map[string]any{"files": []any{map[string]any{"path": "config/app.env", "content": content, "mode": mode}}})
	}
	apply(t, p, step("A=1\n", "0600"))
	changes, err := p.Plan(t.Context(), step("A=2\n", "0600"))
	if err != nil {
		t.Fatal(err)
	}
	last := changes[len(changes)-1]
	if last.GetOperation() != providerv1.Operation_OPERATION_UPDATE {
		t.Fatalf("plan: %v", changes)
	}
	apply(t, p, step("A=2\n", "0640"))
	b, _ := os.ReadFile(filepath.Join(root, "tenants/acme/config/app.env"))
	fi, _ := os.Stat(filepath.Join(root, "tenants/acme/config/app.env"))
	if string(b) != "A=2\n" || fi.Mode().Perm() != 0o640 {
		t.Fatalf("content %q mode %v", b, fi.Mode().Perm())
	}
}

func migrateStep(ms ...any) *providerv1.Step {
	return localtest.Step("m", "db.migrate", "acme", map[string]any{"migrations": ms})
}

func TestMigrateResumeAndChecksum(t *testing.T) {
	p, root := newLocal(t, t.TempDir())
	m1, m2 := localtest.Migrations[0], localtest.Migrations[1]
	bad := map[string]any{"version": 3.0, "name": "broken", "sql": "CREATE TABLE t3 (x);\nINSERT INTO nope VALUES (1);"}
	res := apply(t, p, migrateStep(m1, m2, bad))
	if res.GetState() != providerv1.StepState_STEP_STATE_FAILED || !strings.Contains(res.GetMessage(), "migration 3 broken failed") {
		t.Fatalf("got %s: %s", res.GetState(), res.GetMessage())
	}
	db, err := sql.Open("sqlite", filepath.Join(root, "tenants/acme/app.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM attache_schema_migrations`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("applied migrations: %d, %v", n, err)
	}
	// The failed migration's transaction was rolled back: t3 does not exist.
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE name = 't3'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("t3 exists after rollback: %d %v", n, err)
	}
	// Resume: fixed migration 3 runs, 1 and 2 are skipped.
	fixed := map[string]any{"version": 3.0, "name": "fixed", "sql": "CREATE TABLE t3 (x);"}
	res = apply(t, p, migrateStep(m1, m2, fixed))
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatal(res.GetMessage())
	}
	ops := []providerv1.Operation{}
	for _, c := range res.GetChanges() {
		ops = append(ops, c.GetOperation())
	}
	want := []providerv1.Operation{providerv1.Operation_OPERATION_NOOP, providerv1.Operation_OPERATION_NOOP, providerv1.Operation_OPERATION_CREATE}
	if len(ops) != 3 || ops[0] != want[0] || ops[1] != want[1] || ops[2] != want[2] {
		t.Fatalf("changes %v, want %v", ops, want)
	}
	var durMs int64
	var at string
	if err := db.QueryRow(`SELECT applied_at, duration_ms FROM attache_schema_migrations WHERE version = 3`).Scan(&at, &durMs); err != nil || at == "" || durMs < 0 {
		t.Fatalf("state row: %q %d %v", at, durMs, err)
	}
	// A changed migration that was applied is refused, in Plan and Apply.
	edited := map[string]any{"version": 2.0, "name": "create_orders", "sql": "CREATE TABLE orders (id INTEGER);"}
	_, err = p.Plan(t.Context(), migrateStep(m1, edited, fixed))
	wantCode(t, err, codes.FailedPrecondition, "checksum")
	_, err = p.Apply(t.Context(), migrateStep(m1, edited, fixed), nil)
	wantCode(t, err, codes.FailedPrecondition, "params.migrations[1]")
	// A gap below the newest applied version is refused.
	_, err = p.Plan(t.Context(), migrateStep(m1, map[string]any{"version": 2.5, "name": "late", "sql": "SELECT 1"}))
	if status.Code(err) != codes.InvalidArgument { // 2.5 is not an integer
		t.Fatalf("fractional version: %v", err)
	}
}

func TestMigrateOutOfOrder(t *testing.T) {
	p, _ := newLocal(t, t.TempDir())
	m1 := localtest.Migrations[0]
	m5 := map[string]any{"version": 5.0, "name": "five", "sql": "CREATE TABLE five (x);"}
	apply(t, p, migrateStep(m1, m5))
	_, err := p.Plan(t.Context(), migrateStep(m1, map[string]any{"version": 3.0, "name": "three", "sql": "SELECT 1"}, m5))
	wantCode(t, err, codes.FailedPrecondition, "out-of-order")
}

type currentJSON struct {
	Version   string   `json:"version"`
	Pid       int      `json:"pid"`
	HealthURL string   `json:"health_url"`
	Command   []string `json:"command"`
}

func readCurrent(t *testing.T, root string) *currentJSON {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "apps/acme/current.json"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var c currentJSON
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

func healthVersion(t *testing.T, port int) (string, int) {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + itoa(port) + "/healthz")
	if err != nil {
		return "", 0
	}
	defer resp.Body.Close()
	var h struct{ Version string }
	_ = json.NewDecoder(resp.Body).Decode(&h)
	return h.Version, resp.StatusCode
}

func itoa(n int) string { return strconv.Itoa(n) }

func structString(s string) *structpb.Value { return structpb.NewStringValue(s) }

func TestUpgradeSwitchesAndRollsBack(t *testing.T) {
	bin := localtest.BuildSampleApp(t)
	p, root := newLocal(t, bin)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, _ = p.Apply(ctx, localtest.Step("stop", "app.stop", "acme", nil), nil)
	})
	p1, p2, p3 := localtest.FreePort(t), localtest.FreePort(t), localtest.FreePort(t)

	res := apply(t, p, localtest.AppStep("up1", "acme", "v1", p1))
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatal(res.GetMessage())
	}
	if v, code := healthVersion(t, p1); v != "v1" || code != 200 {
		t.Fatalf("v1 health: %q %d", v, code)
	}
	cur := readCurrent(t, root)
	if cur == nil || cur.Version != "v1" {
		t.Fatalf("current.json: %+v", cur)
	}

	// Same address as the running version: refused before starting anything.
	_, err := p.Apply(t.Context(), localtest.AppStep("up2", "acme", "v2", p1), nil)
	wantCode(t, err, codes.FailedPrecondition, "params.health_url")

	// v2 healthy: switch, v1 stopped.
	res = apply(t, p, localtest.AppStep("up2", "acme", "v2", p2))
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatal(res.GetMessage())
	}
	if got := res.GetOutputs().GetFields()["previous_version"].GetStringValue(); got != "v1" {
		t.Errorf("outputs.previous_version = %q", got)
	}
	if v, _ := healthVersion(t, p2); v != "v2" {
		t.Fatalf("v2 not serving: %q", v)
	}
	if v, _ := healthVersion(t, p1); v != "" {
		t.Fatalf("v1 still serving after the switch")
	}
	if cur := readCurrent(t, root); cur.Version != "v2" {
		t.Fatalf("current.json: %+v", cur)
	}

	// v3 never healthy: rolled back, v2 keeps running.
	bad := localtest.AppStep("up3", "acme", "v3", p3, "-unhealthy")
	bad.Params.Fields["health_timeout"] = structString("1s")
	res = apply(t, p, bad)
	if res.GetState() != providerv1.StepState_STEP_STATE_FAILED || !strings.Contains(res.GetMessage(), "rolled back") || !strings.Contains(res.GetMessage(), "503") {
		t.Fatalf("got %s: %s", res.GetState(), res.GetMessage())
	}
	if v, _ := healthVersion(t, p2); v != "v2" {
		t.Fatalf("v2 not serving after rollback")
	}
	if v, _ := healthVersion(t, p3); v != "" {
		t.Fatalf("v3 still running after rollback")
	}
	if cur := readCurrent(t, root); cur.Version != "v2" {
		t.Fatalf("current.json after rollback: %+v", cur)
	}

	// A new provider (e.g. after a plugin restart) adopts the running app.
	p2nd := local.New(quiet(), "test")
	localtest.Configure(t, p2nd, root, bin)
	changes, err := p2nd.Plan(t.Context(), localtest.AppStep("up2", "acme", "v2", p2))
	if err != nil || len(changes) != 1 || changes[0].GetOperation() != providerv1.Operation_OPERATION_NOOP {
		t.Fatalf("adopted plan: %v %v", changes, err)
	}
	hr, err := p2nd.Health(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range hr.GetComponents() {
		if c.GetName() == "app/acme" {
			found = c.GetStatus() == providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY
		}
	}
	if !found {
		t.Errorf("health: %v", hr.GetComponents())
	}
	res = apply(t, p2nd, localtest.Step("stop", "app.stop", "acme", nil))
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED || readCurrent(t, root) != nil {
		t.Fatalf("stop: %s", res.GetMessage())
	}
	if v, _ := healthVersion(t, p2); v != "" {
		t.Fatalf("v2 still serving after app.stop")
	}
}

func TestUsage(t *testing.T) {
	p, _ := newLocal(t, t.TempDir())
	apply(t, p, localtest.Step("p", "tenant.provision", "acme", map[string]any{"files": []any{map[string]any{"path": "data/x", "content": "12345"}}}))
	u, err := p.Usage(t.Context(), &providerv1.UsageRequest{})
	if err != nil || len(u.GetSamples()) != 1 || u.GetSamples()[0].GetValue() != 5 || u.GetSamples()[0].GetTenant() != "acme" {
		t.Fatalf("usage: %v %v", u, err)
	}
}

func TestApplyLogRecordsEveryApply(t *testing.T) {
	p, root := newLocal(t, t.TempDir())
	step := localtest.Step("files", "tenant.provision", "acme", nil)
	step.PlanId = "plan-1"
	apply(t, p, step)
	step.Attempt = 2
	apply(t, p, step)
	if _, err := p.Plan(t.Context(), step); err != nil {
		t.Fatal(err)
	}
	log := localtest.ApplyLog(t, root)
	if got := localtest.Applies(log, "plan-1", "files"); got != 2 {
		t.Fatalf("applies = %d, want 2 (Plan must not be logged): %+v", got, log)
	}
	if log[1].Attempt != 2 || log[1].Tenant != "acme" || log[1].Action != "tenant.provision" {
		t.Fatalf("second entry %+v", log[1])
	}
	fi, err := os.Stat(filepath.Join(root, local.ApplyLogFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("apply log mode: %v %v", fi, err)
	}
}

// TestUpgradeAutoPortAndFlags: port 0 picks a free port per start ({port}
// in the command), and flags are written to the tenant's config, changing
// only flags.json when the version is already running.
func TestUpgradeAutoPortAndFlags(t *testing.T) {
	bin := localtest.BuildSampleApp(t)
	p, root := newLocal(t, bin)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, _ = p.Apply(ctx, localtest.Step("stop", "app.stop", "acme", nil), nil)
	})
	step := func(id, version string, flags map[string]any) *providerv1.Step {
		params := map[string]any{"version": version, "command": []any{"sampleapp", "-version", version, "-addr", "127.0.0.1:{port}"}, "port": 0.0}
		if flags != nil {
			params["flags"] = flags
		}
		return localtest.Step(id, "app.upgrade", "acme", params)
	}
	res := apply(t, p, step("a", "v1", map[string]any{"checkout_v2": "false"}))
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatal(res.GetMessage())
	}
	cur := readCurrent(t, root)
	if cur == nil || !strings.HasPrefix(cur.HealthURL, "http://127.0.0.1:") || strings.Contains(strings.Join(cur.Command, " "), "{port}") {
		t.Fatalf("current.json: %+v", cur)
	}
	flagsFile := filepath.Join(root, "tenants", "acme", "config", "flags.json")
	b, err := os.ReadFile(flagsFile)
	if err != nil || !strings.Contains(string(b), `"checkout_v2": "false"`) {
		t.Fatalf("flags.json: %s, %v", b, err)
	}
	if fi, _ := os.Stat(flagsFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("flags.json mode %v", fi.Mode().Perm())
	}
	// Same version, new flags: flags.json changes, the app keeps running.
	res = apply(t, p, step("b", "v1", map[string]any{"checkout_v2": "true"}))
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED || readCurrent(t, root).Pid != cur.Pid {
		t.Fatalf("flag change restarted the app: %s", res.GetMessage())
	}
	if b, _ := os.ReadFile(flagsFile); !strings.Contains(string(b), `"checkout_v2": "true"`) {
		t.Fatalf("flags.json not updated: %s", b)
	}
	// Idempotent: the same step again changes nothing.
	changes, err := p.Plan(t.Context(), step("c", "v1", map[string]any{"checkout_v2": "true"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		if c.GetOperation() != providerv1.Operation_OPERATION_NOOP {
			t.Fatalf("second apply would change %s: %s", c.GetResource(), c.GetSummary())
		}
	}
	// An upgrade with port 0 gets its own port and switches over.
	res = apply(t, p, step("d", "v2", nil))
	if res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatal(res.GetMessage())
	}
	if next := readCurrent(t, root); next.Version != "v2" || next.HealthURL == cur.HealthURL {
		t.Fatalf("after upgrade: %+v (was %s)", next, cur.HealthURL)
	}
	// Bad flags are refused naming the key.
	_, err = p.Plan(t.Context(), step("e", "v2", map[string]any{"Bad Key": "x"}))
	wantCode(t, err, codes.InvalidArgument, "params.flags.Bad Key")
}
