package postgres_test

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"regexp"
	"strconv"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// scramMatches reports whether verifier (as pg_authid stores it) was made
// from password.
func scramMatches(t testing.TB, verifier, password string) bool {
	t.Helper()
	m := regexp.MustCompile(`^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$`).FindStringSubmatch(verifier)
	if m == nil {
		t.Fatalf("not a SCRAM-SHA-256 verifier: %q", verifier)
	}
	iter, _ := strconv.Atoi(m[1])
	salt, _ := base64.StdEncoding.DecodeString(m[2])
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		t.Fatal(err)
	}
	h := hmac.New(sha256.New, salted)
	h.Write([]byte("Client Key"))
	stored := sha256.Sum256(h.Sum(nil))
	return base64.StdEncoding.EncodeToString(stored[:]) == m[3]
}

// TestProvisionPassword: the tenant role gets the password of its secret
// file (as a SCRAM verifier computed by the provider), which shows in no
// result or progress; a missing secret is refused naming the file.
func TestProvisionPassword(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.writeSecrets(t, "acme", "beta")
	p := e.provider(t)
	var seen []string
	res, err := p.Apply(t.Context(), step("prov", "tenant.provision", "acme", map[string]any{"model": "bridge", "tenants": []any{"acme", "beta"}, "password_secret": "{tenant}.pw"}),
		func(pr *providerv1.Progress) { seen = append(seen, pr.GetMessage()) })
	if err != nil || res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED {
		t.Fatalf("%v %s", err, res.GetMessage())
	}
	seen = append(seen, res.String())
	for _, s := range seen {
		if strings.Contains(s, "s3cret") || strings.Contains(s, "SCRAM") {
			t.Errorf("password or verifier shown: %s", s)
		}
	}
	admin := e.conn(t, "", "")
	for _, id := range []string{"acme", "beta"} {
		var v string
		if err := admin.QueryRow(t.Context(), "SELECT rolpassword FROM pg_authid WHERE rolname = $1", e.name(id)).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if !scramMatches(t, v, "pw-"+id+"-s3cret") || scramMatches(t, v, "pw-other") {
			t.Errorf("%s: the stored verifier does not match its secret", id)
		}
	}
	_, err = p.Plan(t.Context(), step("prov", "tenant.provision", "gamma", map[string]any{"model": "silo", "password_secret": "{tenant}.pw"}))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "params.password_secret") || !strings.Contains(err.Error(), "gamma.pw") {
		t.Errorf("missing secret: %v", err)
	}
}

// TestAppRole: a missing app_role is refused; one that inherits is refused
// before PostgreSQL 16 (it would hold every tenant's rights at once).
func TestAppRole(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.AppRole = strings.TrimSuffix(e.cfg.NamePrefix, "_") + "x_web"
	p := e.provider(t)
	s := step("prov", "tenant.provision", "acme", map[string]any{"model": "bridge"})
	if _, err := p.Plan(t.Context(), s); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing app role: %v", err)
	}
	admin := e.conn(t, "", "")
	mustExec(t, admin, "CREATE ROLE "+e.cfg.AppRole+" INHERIT")
	if count(t, admin, "SELECT current_setting('server_version_num')::int") < 160000 {
		if _, err := p.Plan(t.Context(), s); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "NOINHERIT") {
			t.Errorf("inheriting app role: %v", err)
		}
		mustExec(t, admin, "ALTER ROLE "+e.cfg.AppRole+" NOINHERIT")
	}
	mustApply(t, p, s)
	if n := count(t, admin, "SELECT count(*) FROM pg_auth_members WHERE roleid = $1::regrole AND member = $2::regrole", e.name("acme"), e.cfg.AppRole); n != 1 {
		t.Errorf("tenant role not granted to the app role")
	}
}

// TestProvisionResumes: a tenant whose provisioning stopped halfway (role
// and schema there, no rights, no registry row) is completed by a rerun,
// which lists only what was missing.
func TestProvisionResumes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t)
	admin := e.conn(t, "", "")
	n := e.name("acme")
	mustExec(t, admin, "CREATE ROLE "+n+" LOGIN INHERIT; CREATE SCHEMA "+n)
	res := mustApply(t, p, step("prov", "tenant.provision", "acme", map[string]any{"model": "bridge", "migrations": schemaMigrations("bridge")}))
	var ops []string
	for _, c := range res.GetChanges() {
		ops = append(ops, c.GetOperation().String()[len("OPERATION_"):]+" "+c.GetResource()[strings.LastIndex(c.GetResource(), "/")+1:])
	}
	want := "UPDATE " + n + ",NOOP " + n + ",UPDATE grants,CREATE 1,CREATE 2,CREATE acme"
	if strings.Join(ops, ",") != want {
		t.Errorf("changes %v, want %s", ops, want)
	}
	c := e.conn(t, "", n)
	if got := count(t, c, "SELECT count(*) FROM "+n+".orders"); got != 3 {
		t.Errorf("tenant reads %d orders", got)
	}
}
