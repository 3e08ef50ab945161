package opscli_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/httpapi/httpapitest"
	"attache.dev/attache/controlplane/opscli"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/auditlog"
)

const cliReleaseYAML = `
name: sampleapp
version: VERSION
images:
  web: registry.example.com/sampleapp@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
migrations:
  - {version: 1, name: create_accounts, sql: "CREATE TABLE accounts (id int)"}
flags: {checkout_v2: "false", theme: classic}
tiers:
  pool: {replicas: "2"}
steps:
  - {id: migrate, provider: local, action: sqlite.migrate, resource: "tenants/{{tenant}}/db", params: {m: "{{migrations}}"}, on_rollback: skip}
  - {id: app, provider: local, action: app.deploy, resource: "tenants/{{tenant}}/app", params: {image: "{{images.web}}", flags: "{{flags}}"}, depends_on: [migrate]}
`

// pushRelease signs a release with the server's release key and pushes it
// through the CLI.
func pushRelease(t *testing.T, c cli, srv *httpapitest.Server, version string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "release.signed.json")
	writeFile(t, path, string(srv.SignRelease(t, strings.Replace(cliReleaseYAML, "VERSION", version, 1))))
	return c.ok("release", "push", path)
}

// drive changes a rollout as its driver would.
func drive(t *testing.T, srv *httpapitest.Server, id string, fn func(r *store.Rollout, ts []store.RolloutTarget) []store.RolloutTarget) {
	t.Helper()
	ctx := context.Background()
	if ok, err := srv.Store.AcquireRolloutLease(ctx, id, "test-driver", time.Now(), time.Minute); err != nil || !ok {
		t.Errorf("lease: %v, %v", ok, err)
		return
	}
	defer srv.Store.ReleaseRolloutLease(ctx, id, "test-driver")
	if _, err := srv.Store.UpdateRollout(ctx, id, "test-driver", func(r *store.Rollout, ts []store.RolloutTarget) ([]store.RolloutTarget, []auditlog.Entry, error) {
		return fn(r, ts), nil, nil
	}); err != nil {
		t.Errorf("UpdateRollout: %v", err)
	}
}

func TestReleaseCommands(t *testing.T) {
	clearEnv(t)
	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	dir := t.TempDir()

	// An unsigned release document is refused before anything is sent.
	unsigned := filepath.Join(dir, "release.yaml")
	writeFile(t, unsigned, strings.Replace(cliReleaseYAML, "VERSION", "1.0.0", 1))
	if _, _, err := admin.run("release", "push", unsigned); err == nil || !strings.Contains(err.Error(), "is not a signed release") ||
		!strings.Contains(err.Error(), "attache release sign --key") {
		t.Fatalf("push unsigned: %v", err)
	}
	plan := filepath.Join(dir, "plan.signed.json")
	writeFile(t, plan, `{"payloadType":"application/vnd.attache.plan.v1+protobuf","payload":"","signatures":[]}`)
	if _, _, err := admin.run("release", "push", plan); err == nil || !strings.Contains(err.Error(), "it is not a release") {
		t.Fatalf("push a plan: %v", err)
	}

	out := pushRelease(t, admin, srv, "1.0.0")
	if !strings.Contains(out, "sampleapp@1.0.0") || !strings.Contains(out, srv.ReleaseSigner.KeyID()) || !strings.Contains(out, "checkout_v2=false,theme=classic") {
		t.Fatalf("push:\n%s", out)
	}
	if _, _, err := admin.run("release", "push", writeSigned(t, srv, "1.0.0")); err == nil || !strings.Contains(err.Error(), "releases are immutable") {
		t.Fatalf("push twice: %v", err)
	}
	// From standard input.
	var stdout, stderr bytes.Buffer
	root := opscli.NewRootCommand(&stdout, &stderr)
	root.SetIn(bytes.NewReader(srv.SignRelease(t, strings.Replace(cliReleaseYAML, "VERSION", "1.1.0", 1))))
	root.SetArgs([]string{"--server", srv.URL, "--token", srv.AdminToken, "release", "push", "-"})
	if err := root.Execute(); err != nil || !strings.Contains(stdout.String(), "sampleapp@1.1.0") {
		t.Fatalf("push from stdin: %v\n%s", err, stdout.String())
	}

	list := admin.ok("release", "list")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "VERSION") || !strings.HasPrefix(lines[1], "1.1.0") || !strings.HasPrefix(lines[2], "1.0.0") {
		t.Fatalf("list:\n%s", list)
	}
	show := admin.ok("release", "show", "1.0.0")
	for _, want := range []string{"Verifies:", "yes: signed by a release key", "Images:", "create_accounts", "Tier values:", "replicas=2",
		"ON-ROLLBACK", "sqlite.migrate", "skip"} {
		if !strings.Contains(show, want) {
			t.Fatalf("show lacks %q:\n%s", want, show)
		}
	}
	if _, _, err := admin.run("release", "show", "9.9.9"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("show unknown: %v", err)
	}
}

func writeSigned(t *testing.T, srv *httpapitest.Server, version string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "release.signed.json")
	writeFile(t, path, string(srv.SignRelease(t, strings.Replace(cliReleaseYAML, "VERSION", version, 1))))
	return path
}

func TestTenantSet(t *testing.T) {
	clearEnv(t)
	// Argument errors come before any request.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tenant", "set", "acme"}, "nothing to change"},
		{[]string{"tenant", "set", "acme", "--pin", "1.0.0", "--unpin"}, "--pin or --unpin"},
		{[]string{"tenant", "set", "acme", "--pin", ""}, "--pin needs a version"},
		{[]string{"tenant", "set", "acme", "--window", "sat 02:00+1h", "--clear-windows"}, "--window or --clear-windows"},
		{[]string{"tenant", "set", "acme", "--label", "novalue"}, "want key=value"},
	} {
		if _, _, err := run(t, append([]string{"--server", "http://127.0.0.1:1", "--token", "x"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}

	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	admin.ok("tenant", "create", "acme", "--label", "legacy=yes")
	pushRelease(t, admin, srv, "1.0.0")
	enrollAgent(t, srv, "acme", "a1")

	out := admin.ok("tenant", "set", "acme", "--tier", "silo", "--cell", "a1", "--window", "sat,sun 02:00+4h Europe/Paris",
		"--window", "wed 23:00+1h", "--pin", "1.0.0", "--label", "region=eu", "--label", "legacy-")
	for _, want := range []string{"Tier:", "silo", "agent a1", "sat,sun 02:00+4h Europe/Paris; wed 23:00+1h", "Pin:", "1.0.0", "region=eu"} {
		if !strings.Contains(out, want) {
			t.Fatalf("set output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "legacy") {
		t.Fatalf("label not removed:\n%s", out)
	}
	if _, _, err := admin.run("tenant", "set", "acme", "--window", "someday 02:00+1h"); err == nil || !strings.Contains(err.Error(), "windows[0]") {
		t.Fatalf("bad window: %v", err)
	}
	out = admin.ok("tenant", "set", "acme", "--clear-windows", "--unpin", "--cell", "")
	if !strings.Contains(out, "any time (no maintenance windows)") || !strings.Contains(out, "its only active agent") {
		t.Fatalf("cleared:\n%s", out)
	}
	if show := admin.ok("tenant", "show", "acme"); !strings.Contains(show, "Release:") || !strings.Contains(show, "Flags:") {
		t.Fatalf("show:\n%s", show)
	}
	if list := admin.ok("tenant", "list"); !strings.Contains(list, "TIER") || !strings.Contains(list, "silo") {
		t.Fatalf("list:\n%s", list)
	}
}

func TestFlagCommands(t *testing.T) {
	clearEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"flag", "set", "a=b"}, "--tenant or --rollout"},
		{[]string{"flag", "set", "--tenant", "acme", "--rollout", "r", "a=b"}, "not both"},
		{[]string{"flag", "set", "--rollout", "r", "a=b"}, "--rollout needs --wave"},
		{[]string{"flag", "set", "--tenant", "acme", "--wave", "canary", "a=b"}, "--wave goes with --rollout"},
		{[]string{"flag", "set", "--tenant", "acme", "novalue"}, `"novalue": want key=value`},
		{[]string{"flag", "set", "--tenant", "acme", "a=1", "a=2"}, "a is given twice"},
		{[]string{"flag", "unset", "--tenant", "acme", "a=1"}, "unset takes keys"},
		{[]string{"flag", "list"}, "--tenant is required"},
	} {
		if _, _, err := run(t, append([]string{"--server", "http://127.0.0.1:1", "--token", "x"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}

	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	admin.ok("tenant", "create", "acme")
	out := admin.ok("flag", "set", "--tenant", "acme", "checkout_v2=true")
	if !strings.Contains(out, "tenant acme: flags checkout_v2=true") || !strings.Contains(out, "first release") {
		t.Fatalf("set without release:\n%s", out)
	}
	if out := admin.ok("flag", "list", "--tenant", "acme"); !strings.Contains(out, "no release yet") || !strings.Contains(out, "checkout_v2") {
		t.Fatalf("list without release:\n%s", out)
	}

	pushRelease(t, admin, srv, "1.0.0")
	enrollAgent(t, srv, "acme", "a1")
	if _, err := srv.Store.UpdateTenant(context.Background(), "acme", func(t *store.Tenant) error { t.Release = "1.0.0"; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	out = admin.ok("flag", "set", "--tenant", "acme", "theme=dark")
	if !strings.Contains(out, "delivered to agent acme/a1") || !strings.Contains(out, "re-applies release 1.0.0") {
		t.Fatalf("set with release:\n%s", out)
	}
	if _, _, err := admin.run("flag", "set", "--tenant", "acme", "nope=1"); err == nil || !strings.Contains(err.Error(), `flag "nope" is not declared`) {
		t.Fatalf("undeclared flag: %v", err)
	}
	list := admin.ok("flag", "list", "--tenant", "acme")
	if !strings.Contains(list, "release 1.0.0") || !regexpLine(list, "theme", "dark", "dark", "classic") || !regexpLine(list, "checkout_v2", "true", "true", "false") {
		t.Fatalf("list:\n%s", list)
	}
	admin.ok("flag", "unset", "--tenant", "acme", "checkout_v2")
	if list := admin.ok("flag", "list", "--tenant", "acme"); !regexpLine(list, "checkout_v2", "false", "-", "false") {
		t.Fatalf("list after unset:\n%s", list)
	}

	// A wave of a rollout.
	out = admin.ok("rollout", "start", "--release", "1.0.0", "--tenants", "acme", "--waves", "canary:1,100%")
	id := strings.Fields(out)[1]
	id = strings.TrimSuffix(id, ":")
	out = admin.ok("flag", "set", "--rollout", id, "--wave", "canary", "theme=light")
	if !strings.Contains(out, "rollout "+id+", wave canary: 1 tenants") || !strings.Contains(out, "theme=light") {
		t.Fatalf("wave flags:\n%s", out)
	}
}

// regexpLine reports whether some line of a table has exactly these
// fields.
func regexpLine(table string, fields ...string) bool {
	for _, l := range strings.Split(table, "\n") {
		if strings.Join(strings.Fields(l), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

func TestRolloutCommands(t *testing.T) {
	clearEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"rollout", "start", "--selector", "all", "--waves", "100%"}, "--release is required"},
		{[]string{"rollout", "start", "--release", "1", "--waves", "100%"}, "--selector or --tenants is required"},
		{[]string{"rollout", "start", "--release", "1", "--selector", "all"}, "--waves is required"},
		{[]string{"rollout", "start", "--release", "1", "--selector", "all", "--waves", "100%", "--bake", "-1m"}, "--bake must not be negative"},
		{[]string{"rollout", "start", "--release", "1", "--selector", "all", "--waves", "100%", "--bake", "soon"}, "invalid argument"},
		{[]string{"rollout", "status", "x", "--format", "yaml"}, "--format must be table or json"},
	} {
		if _, _, err := run(t, append([]string{"--server", "http://127.0.0.1:1", "--token", "x"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}

	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	for _, n := range []string{"t1", "t2", "t3", "t4"} {
		admin.ok("tenant", "create", n, "--label", "region=eu")
	}
	pushRelease(t, admin, srv, "1.0.0")
	if _, _, err := admin.run("rollout", "start", "--release", "1.0.0", "--selector", "all", "--waves", "canary:1,50%"); err == nil ||
		!strings.Contains(err.Error(), "the last wave must be 100%") {
		t.Fatalf("bad waves: %v", err)
	}
	if _, _, err := admin.run("rollout", "start", "--release", "2.0.0", "--selector", "all", "--waves", "100%"); err == nil ||
		!strings.Contains(err.Error(), "attache release push") {
		t.Fatalf("unknown release: %v", err)
	}
	out, errOut, err := admin.run("rollout", "start", "--release", "1.0.0", "--selector", "region=eu", "--waves", "canary:1,50%,100%",
		"--bake", "10m", "--max-failed", "1", "--max-error-rate", "2%", "--concurrency", "2", "--plan-ttl", "30m")
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSuffix(strings.Fields(out)[1], ":")
	for _, want := range []string{"release 1.0.0, wave 1/3 canary", "Progressing: Started — 4 tenants in 3 waves",
		"selector region=eu; waves canary:1,wave-2:50%,wave-3:100%; bake 10m0s; max failed 1; max error rate 2%; concurrency 2; plan ttl 30m0s",
		"* canary", "[--------------------] 0/1", "pending=1", "t1"} {
		if !strings.Contains(out, want) {
			t.Fatalf("start output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "attache rollout status "+id+" --watch") {
		t.Fatalf("start stderr: %q", errOut)
	}
	// Pending tenants of later waves are summed up in the wave table only.
	if strings.Contains(out, "t4") {
		t.Fatalf("later waves' pending tenants listed:\n%s", out)
	}

	drive(t, srv, id, func(r *store.Rollout, ts []store.RolloutTarget) []store.RolloutTarget {
		r.Wave, r.State, r.Reason, r.Message = 1, store.RolloutWaiting, "MaintenanceWindow", "t2 outside its maintenance window"
		ts[0].State, ts[0].PlanID = store.TargetSucceeded, "p1"
		ts[1].State, ts[1].Message = store.TargetWaiting, "outside its maintenance window; next opens 2026-03-07T01:00:00Z"
		return ts[:2]
	})
	status := admin.ok("rollout", "status", id)
	for _, want := range []string{"Waiting: MaintenanceWindow — t2 outside its maintenance window", "[####################] 1/1", "succeeded=1",
		"* wave-2", "waiting=1", "Not yet succeeded:", "next opens 2026-03-07T01:00:00Z"} {
		if !strings.Contains(status, want) {
			t.Fatalf("status lacks %q:\n%s", want, status)
		}
	}
	var ro struct {
		ID    string
		State string
		Waves []struct{ Size int }
	}
	mustJSON(t, admin.ok("rollout", "status", id, "--format", "json"), &ro)
	if ro.ID != id || ro.State != "Waiting" || len(ro.Waves) != 3 || ro.Waves[2].Size != 2 {
		t.Fatalf("status json: %+v", ro)
	}
	if list := admin.ok("rollout", "list", "--active"); !strings.Contains(list, id) || !strings.Contains(list, "2/3 wave-2") || !strings.Contains(list, "1/4") {
		t.Fatalf("list:\n%s", list)
	}

	if out := admin.ok("rollout", "pause", id); !strings.Contains(out, "pause requested") || !strings.Contains(out, "attache rollout resume "+id) {
		t.Fatalf("pause:\n%s", out)
	}
	if out := admin.ok("rollout", "resume", id); !strings.Contains(out, "resumed") {
		t.Fatalf("resume:\n%s", out)
	}
	if out := admin.ok("rollout", "abort", id); !strings.Contains(out, "abort requested") {
		t.Fatalf("abort:\n%s", out)
	}
	if _, _, err := admin.run("rollout", "resume", id); err == nil || !strings.Contains(err.Error(), "is being aborted") {
		t.Fatalf("resume after abort: %v", err)
	}
}

// watch runs `rollout status ID --watch` while change moves the rollout
// along, and returns what it printed.
func watch(t *testing.T, srv *httpapitest.Server, id string, tty bool, change func(), extra ...string) (string, error) {
	t.Helper()
	defer opscli.SetRolloutPollInterval(5 * time.Millisecond)()
	defer opscli.SetTerminal(tty)()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		change()
	}()
	var stdout, stderr bytes.Buffer
	root := opscli.NewRootCommand(&stdout, &stderr)
	root.SetArgs(append([]string{"--server", srv.URL, "--token", srv.AdminToken, "rollout", "status", id, "--watch"}, extra...))
	err := root.ExecuteContext(ctx)
	<-done
	return stdout.String(), err
}

func TestRolloutWatch(t *testing.T) {
	clearEnv(t)
	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	admin.ok("tenant", "create", "t1")
	pushRelease(t, admin, srv, "1.0.0")
	start := func() string {
		out := admin.ok("rollout", "start", "--release", "1.0.0", "--tenants", "t1", "--waves", "100%")
		return strings.TrimSuffix(strings.Fields(out)[1], ":")
	}
	step := func(id string, st store.RolloutState, reason, msg string) {
		time.Sleep(40 * time.Millisecond)
		drive(t, srv, id, func(r *store.Rollout, ts []store.RolloutTarget) []store.RolloutTarget {
			r.State, r.Reason, r.Message = st, reason, msg
			if st == store.RolloutComplete {
				ts[0].State = store.TargetSucceeded
				return ts
			}
			return nil
		})
	}

	// Not a terminal: one line per condition change, exit 0 on Complete.
	id := start()
	out, err := watch(t, srv, id, false, func() {
		step(id, store.RolloutWaiting, "Bake", "baking wave wave-1 for 10m")
		step(id, store.RolloutComplete, "AllWavesDone", "1 tenant upgraded")
	})
	if err != nil {
		t.Fatalf("watch: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[0], "Progressing: Started — 1 tenants in 1 waves (wave-1:100%)") ||
		!strings.HasSuffix(lines[1], "Waiting: Bake — baking wave wave-1 for 10m") || !strings.HasSuffix(lines[2], "Complete: AllWavesDone — 1 tenant upgraded") ||
		strings.Contains(out, "\x1b") {
		t.Fatalf("watch lines:\n%s", out)
	}

	// A terminal: the view is redrawn; exit 1 on Failed, with the cause.
	id = start()
	out, err = watch(t, srv, id, true, func() {
		step(id, store.RolloutFailed, "GateFailed", "tenant t1: component app is unhealthy: 502s")
	})
	if err == nil || !strings.Contains(err.Error(), "rollout "+id+" failed: Failed: GateFailed — tenant t1: component app is unhealthy: 502s") {
		t.Fatalf("watch failed rollout: %v", err)
	}
	if n := strings.Count(out, "\x1b[H\x1b[2J"); n < 2 || !strings.Contains(out, "Ctrl-C stops watching") || !strings.Contains(out, "WAVE") {
		t.Fatalf("terminal view (%d redraws):\n%q", n, out)
	}

	// JSON: one object per change.
	id = start()
	out, err = watch(t, srv, id, false, func() {
		step(id, store.RolloutComplete, "AllWavesDone", "done")
	}, "--format", "json")
	if err != nil || strings.Count(strings.TrimSpace(out), "\n") != 1 || !strings.HasPrefix(out, `{"id":"`+id) {
		t.Fatalf("json watch: %v\n%s", err, out)
	}

	// Ctrl-C stops watching, not the rollout.
	id = start()
	defer opscli.SetRolloutPollInterval(5 * time.Millisecond)()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr bytes.Buffer
	root := opscli.NewRootCommand(&stdout, &stderr)
	root.SetArgs([]string{"--server", srv.URL, "--token", srv.AdminToken, "rollout", "status", id, "--watch"})
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := root.ExecuteContext(ctx); err == nil || !strings.Contains(err.Error(), "stopped watching rollout "+id+"; the rollout goes on") {
		t.Fatalf("interrupted watch: %v", err)
	}
	if ro, err := srv.Store.GetRollout(context.Background(), id); err != nil || ro.State != store.RolloutProgressing || ro.Control != "" {
		t.Fatalf("rollout after an interrupted watch: %+v, %v", ro, err)
	}
}

func TestFreezeCommands(t *testing.T) {
	clearEnv(t)
	if _, _, err := run(t, "--server", "http://127.0.0.1:1", "--token", "x", "freeze"); err == nil || !strings.Contains(err.Error(), "--reason is required") {
		t.Fatalf("freeze without reason: %v", err)
	}
	if _, _, err := run(t, "--server", "http://127.0.0.1:1", "--token", "x", "freeze", "stauts"); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("freeze typo: %v", err)
	}
	srv := httpapitest.New(t)
	admin := cli{t, srv.URL, srv.AdminToken}
	if out := admin.ok("freeze", "status"); out != "Fleet not frozen.\n" {
		t.Fatalf("status: %q", out)
	}
	if out := admin.ok("freeze", "--reason", "INC-42: checkout errors"); !strings.Contains(out, "Fleet FROZEN since") ||
		!strings.Contains(out, "INC-42: checkout errors") || !strings.Contains(out, "attache unfreeze") {
		t.Fatalf("freeze:\n%s", out)
	}
	var f struct {
		Frozen bool
		Reason string
	}
	mustJSON(t, admin.ok("freeze", "status", "-o", "json"), &f)
	if !f.Frozen || f.Reason != "INC-42: checkout errors" {
		t.Fatalf("status json: %+v", f)
	}
	if out := admin.ok("unfreeze"); !strings.Contains(out, "Fleet unfrozen") {
		t.Fatalf("unfreeze: %q", out)
	}
	if out := admin.ok("freeze", "status"); out != "Fleet not frozen.\n" {
		t.Fatalf("status after unfreeze: %q", out)
	}
}
