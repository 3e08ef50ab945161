package cpcli_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"attache.dev/attache/controlplane/cpcli"
	"attache.dev/attache/controlplane/keys"
	"attache.dev/attache/controlplane/store"
	"attache.dev/attache/internal/sign"
)

// run runs the command line; runs of spaces in stdout (tabwriter columns)
// are squashed to one.
func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := cpcli.NewRootCommand(&stdout, &stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return spaces.ReplaceAllString(stdout.String(), " "), stderr.String(), err
}

var spaces = regexp.MustCompile(` {2,}`)

func dataDir(t *testing.T) (string, *keys.Material) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	m, err := keys.LoadOrCreate(context.Background(), dir, "example.org", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return dir, m
}

func load(t *testing.T, dir string) *keys.Material {
	t.Helper()
	m, err := keys.LoadOrCreate(context.Background(), dir, "example.org", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestKeysRotateRefuses(t *testing.T) {
	dir, _ := dataDir(t)
	cfgOther := filepath.Join(t.TempDir(), "cp.yaml")
	os.WriteFile(cfgOther, []byte("version: 1\ndata_dir: "+dir+"\ntrust_domain: other.org\n"), 0o600)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"neither", []string{"--data-dir", dir}, "give exactly one of --plans (rotate the plans key) or --root"},
		{"both", []string{"--data-dir", dir, "--plans", "--root"}, "give exactly one of --plans"},
		{"argument", []string{"--data-dir", dir, "--plans", "extra"}, `unknown command "extra"`},
		{"no data dir", []string{"--data-dir", filepath.Join(dir, "nope"), "--plans"}, "no such file or directory"},
		{"empty data dir", []string{"--data-dir", t.TempDir(), "--plans"}, "holds no signing keys"},
		{"trust domain flag", []string{"--data-dir", dir, "--plans", "--trust-domain", "other.org"}, `is for trust domain "example.org", but the control plane is configured for "other.org"`},
		{"trust domain from config", []string{"--config", cfgOther, "--plans"}, `configured for "other.org"`},
		{"missing config", []string{"--config", filepath.Join(dir, "nope.yaml"), "--plans"}, "config:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := run(t, append([]string{"keys", "rotate"}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if m := load(t, dir); m.Root.Version != 1 {
		t.Errorf("a refused command rotated: version %d", m.Root.Version)
	}
}

func TestKeysRotatePlansOffline(t *testing.T) {
	dir, before := dataDir(t)
	stdout, stderr, err := run(t, "keys", "rotate", "--plans", "--data-dir", dir)
	if err != nil {
		t.Fatalf("rotate: %v\n%s", err, stderr)
	}
	after := load(t, dir)
	sum := after.RootHash()
	retired := keys.RetiredPath(dir, sign.RolePlans, before.PlanSigner.KeyID())
	for _, want := range []string{
		"Rotated the plans key of trust domain example.org.",
		"old plans key: " + before.PlanSigner.KeyID(),
		"new plans key: " + after.PlanSigner.KeyID(),
		"root version: 2 (was 1)",
		"root sha256: " + hex.EncodeToString(sum[:]),
		"retired key: " + retired,
		"shred -u " + retired,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	if _, err := os.Stat(retired); err != nil {
		t.Error(err)
	}
	if !strings.Contains(stderr, "note: no store at "+filepath.Join(dir, "attache.db")) {
		t.Errorf("stderr = %q, want a note that nothing was audited", stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "attache.db")); !os.IsNotExist(err) {
		t.Errorf("the command created a store: %v", err)
	}
	if _, err := sign.VerifyRootUpdate(context.Background(), before.Root, after.RootEnvelope, time.Now()); err != nil {
		t.Error(err)
	}
}

func TestKeysRotateRootAudited(t *testing.T) {
	ctx := context.Background()
	dir, before := dataDir(t)
	st, err := store.Open(ctx, filepath.Join(dir, "attache.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Settings from a config file, as serve reads them.
	cfgFile := filepath.Join(t.TempDir(), "cp.yaml")
	os.WriteFile(cfgFile, []byte("version: 1\ndata_dir: "+dir+"\ntrust_domain: example.org\n"), 0o600)

	stdout, stderr, err := run(t, "keys", "rotate", "--root", "--config", cfgFile)
	if err != nil {
		t.Fatalf("rotate: %v\n%s", err, stderr)
	}
	if stderr != "" {
		t.Errorf("stderr = %q", stderr)
	}
	after := load(t, dir)
	if after.RootSigner.KeyID() == before.RootSigner.KeyID() || after.PlanSigner.KeyID() != before.PlanSigner.KeyID() {
		t.Error("rotate --root did not replace just the root key")
	}
	if !strings.Contains(stdout, "Recorded in the audit trail as keys.rotate") {
		t.Errorf("stdout:\n%s", stdout)
	}
	recs, err := st.ListAudit(ctx, store.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, r := range recs {
		if r.Action != "keys.rotate" {
			continue
		}
		found = true
		d := string(r.Detail)
		if r.Target != after.RootSigner.KeyID() || r.Outcome != "success" || !strings.HasPrefix(r.Actor, "local:") ||
			!strings.Contains(d, `"role":"root"`) || !strings.Contains(d, `"old_key_id":"`+before.RootSigner.KeyID()+`"`) ||
			!strings.Contains(d, `"root_version":2`) {
			t.Errorf("audit record = %+v, detail %s", r, d)
		}
	}
	if !found {
		t.Errorf("no keys.rotate audit record in %d records", len(recs))
	}
}

func TestKeysRotateAuditUnreachable(t *testing.T) {
	dir, _ := dataDir(t)
	stdout, stderr, err := run(t, "keys", "rotate", "--plans", "--data-dir", dir, "--store", "postgres://attache@127.0.0.1:1/attache?connect_timeout=2")
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if !strings.Contains(stderr, "warning: the rotation is done, but it was not recorded in the audit trail") {
		t.Errorf("stderr = %q", stderr)
	}
	if !strings.Contains(stdout, "root version: 2") || load(t, dir).Root.Version != 2 {
		t.Errorf("not rotated:\n%s", stdout)
	}
	// --no-audit does not try.
	_, stderr, err = run(t, "keys", "rotate", "--plans", "--data-dir", dir, "--no-audit", "--store", "postgres://attache@127.0.0.1:1/attache")
	if err != nil || stderr != "" {
		t.Errorf("--no-audit: %v, stderr %q", err, stderr)
	}
}

func TestKeysShow(t *testing.T) {
	dir, before := dataDir(t)
	stdout, _, err := run(t, "keys", "show", "--data-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	sum := before.RootHash()
	for _, want := range []string{
		"trust domain: example.org",
		"root version: 1",
		"root sha256: " + hex.EncodeToString(sum[:]),
		"expires: " + before.Root.Expires.UTC().Format(time.RFC3339) + " (in 36",
		"history: versions 1-1 in " + filepath.Join(dir, "roots"),
		"root keys: " + before.RootSigner.KeyID() + " (threshold 1)",
		"plans keys: " + before.PlanSigner.KeyID() + " (threshold 1)",
		"releases keys: " + sign.KeyID(before.ReleaseKey) + " (threshold 1)",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "Retired") {
		t.Errorf("retired keys listed before any rotation:\n%s", stdout)
	}

	if _, _, err := run(t, "keys", "rotate", "--plans", "--data-dir", dir); err != nil {
		t.Fatal(err)
	}
	stdout, _, err = run(t, "keys", "show", "--data-dir", dir, "--trust-domain", "example.org")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"root version: 2",
		"history: versions 1-2",
		keys.RetiredPath(dir, sign.RolePlans, before.PlanSigner.KeyID()),
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("show after rotation lacks %q:\n%s", want, stdout)
		}
	}
	if _, _, err := run(t, "keys", "show", "--data-dir", dir, "--trust-domain", "other.org"); err == nil {
		t.Error("show accepted another trust domain")
	}
}

func TestKeysShowExpired(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := keys.LoadOrCreate(context.Background(), dir, "example.org", time.Now().Add(-keys.RootLifetime-72*time.Hour)); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := run(t, "keys", "show", "--data-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "(EXPIRED 3 days ago: rotate a key to renew it)") {
		t.Errorf("show:\n%s", stdout)
	}
	if _, _, err := run(t, "keys", "rotate", "--data-dir", dir, "--plans"); err != nil {
		t.Fatalf("rotating away from an expired root: %v", err)
	}
	if m := load(t, dir); m.Root.Version != 2 {
		t.Errorf("version %d", m.Root.Version)
	}
}

func TestKeysHelp(t *testing.T) {
	stdout, _, err := run(t, "keys", "rotate", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--plans", "--root", "--config", "--data-dir", "--no-audit",
		"without a restart", "Agents follow automatically", "destroy the file", "keys.rotate"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	stdout, _, err = run(t, "keys")
	if err != nil || !strings.Contains(stdout, "rotate") || !strings.Contains(stdout, "show") {
		t.Errorf("keys: %v\n%s", err, stdout)
	}
}
