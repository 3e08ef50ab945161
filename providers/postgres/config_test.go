package postgres_test

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/postgres"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestConfigValidate: every problem is reported at once, each naming its
// field.
func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		cfg    postgres.Config
		fields []string // wanted, sorted
	}{
		{"minimal", postgres.Config{DSNEnv: "PG_DSN"}, nil},
		{"full", postgres.Config{DSNFile: "/run/secrets/dsn", TLS: &postgres.TLSConfig{Mode: "verify-full", CAFile: "/etc/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem", ServerName: "db"},
			StatementTimeout: "5s", MigrationTimeout: "1h", LockTimeout: "2s", ConnectTimeout: "3s", MaxConnections: 256,
			PoolSchema: "app", RegistrySchema: "reg", NamePrefix: "cust_", SecretsDir: "/s", ExportDir: "/e", AppRole: "web"}, nil},
		{"neither dsn", postgres.Config{}, []string{"config.dsn_env"}},
		{"both dsn", postgres.Config{DSNEnv: "A", DSNFile: "/f"}, []string{"config.dsn_env"}},
		{"bad env name", postgres.Config{DSNEnv: "A-B"}, []string{"config.dsn_env"}},
		{"relative paths", postgres.Config{DSNFile: "dsn", SecretsDir: "s", ExportDir: "./e"}, []string{"config.dsn_file", "config.export_dir", "config.secrets_dir"}},
		{"durations", postgres.Config{DSNEnv: "A", StatementTimeout: "soon", MigrationTimeout: "-1s", LockTimeout: "0s", ConnectTimeout: "1500us"},
			[]string{"config.connect_timeout", "config.lock_timeout", "config.migration_timeout", "config.statement_timeout"}},
		{"max connections", postgres.Config{DSNEnv: "A", MaxConnections: 257}, []string{"config.max_connections"}},
		{"prefix", postgres.Config{DSNEnv: "A", NamePrefix: "Tenant-"}, []string{"config.name_prefix"}},
		{"prefix too long", postgres.Config{DSNEnv: "A", NamePrefix: "abcdefghijklmnopq"}, []string{"config.name_prefix"}},
		{"prefix pg", postgres.Config{DSNEnv: "A", NamePrefix: "pg_t_"}, []string{"config.name_prefix"}},
		{"schemas", postgres.Config{DSNEnv: "A", PoolSchema: "pg_x", RegistrySchema: "tenant_reg"}, []string{"config.pool_schema", "config.registry_schema"}},
		{"same schemas", postgres.Config{DSNEnv: "A", PoolSchema: "x", RegistrySchema: "x"}, []string{"config.registry_schema"}},
		{"app role", postgres.Config{DSNEnv: "A", AppRole: "tenant_app"}, []string{"config.app_role"}},
		{"tls", postgres.Config{DSNEnv: "A", TLS: &postgres.TLSConfig{Mode: "prefer", CAFile: "ca.pem", CertFile: "/c.pem"}},
			[]string{"config.tls.ca_file", "config.tls.cert_file", "config.tls.mode"}},
		{"tls verify-ca needs a CA", postgres.Config{DSNEnv: "A", TLS: &postgres.TLSConfig{Mode: "verify-ca"}}, []string{"config.tls.ca_file"}},
		{"tls disable takes nothing", postgres.Config{DSNEnv: "A", TLS: &postgres.TLSConfig{Mode: "disable", CAFile: "/ca.pem"}}, []string{"config.tls.mode"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			var got []string
			if err != nil {
				for _, line := range strings.Split(err.Error(), "\n") {
					got = append(got, line[:strings.Index(line, ":")])
				}
			}
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(tt.fields, ",") {
				t.Errorf("Validate() = %v; fields %v, want %v", err, got, tt.fields)
			}
			// Configure refuses the same, as one InvalidArgument naming
			// every field.
			if len(tt.fields) > 0 {
				b, _ := sdk.ConfigJSON(tt.cfg)
				cerr := postgres.New(quiet(), "test").Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: b})
				var vs []string
				for _, v := range sdk.Violations(cerr) {
					vs = append(vs, v.Field)
				}
				sort.Strings(vs)
				if status.Code(cerr) != codes.InvalidArgument || strings.Join(vs, ",") != strings.Join(tt.fields, ",") {
					t.Errorf("Configure: %v (fields %v)", cerr, vs)
				}
			}
		})
	}
}

// TestConfigureStrict: an unknown key is refused, naming it.
func TestConfigureStrict(t *testing.T) {
	err := postgres.New(quiet(), "test").Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: []byte(`{"dsn_env":"A","dsn":"postgres://x"}`)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"dsn"`) {
		t.Fatalf("got %v", err)
	}
	err = postgres.New(quiet(), "test").Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: []byte(`{"dsn_env":"A","tls":{"mode":"require","sslmode":"x"}}`)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"sslmode"`) {
		t.Fatalf("nested unknown key: %v", err)
	}
}

// TestConfigureDSN: the DSN is read from the environment or a file; a
// missing or malformed one is refused without showing it.
func TestConfigureDSN(t *testing.T) {
	e := newEnv(t)
	cfgEnv, _ := sdk.ConfigJSON(postgres.Config{DSNEnv: "ATTACHE_PG_DSN", NamePrefix: e.cfg.NamePrefix})
	req := &providerv1.ConfigureRequest{ConfigJson: cfgEnv}

	t.Setenv("ATTACHE_PG_DSN", e.dsn)
	p := postgres.New(quiet(), "test")
	defer p.Close()
	if err := p.Configure(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if h := health(t, p)["postgres"]; h.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY {
		t.Errorf("DSN from the environment: %v", h)
	}

	const bad = "postgres://user:hunter2-pw@db.example:5432/app?sslmode=bogus"
	t.Setenv("ATTACHE_PG_DSN", bad)
	err := postgres.New(quiet(), "test").Configure(t.Context(), req)
	if status.Convert(err).Message() != "config.dsn_env: dsn from env ATTACHE_PG_DSN: invalid connection string" {
		t.Errorf("malformed DSN: %v", err)
	}
	if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "db.example") {
		t.Errorf("error shows the DSN: %v", err)
	}

	t.Setenv("ATTACHE_PG_DSN", "")
	err = postgres.New(quiet(), "test").Configure(t.Context(), req)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "config.dsn_env: environment variable ATTACHE_PG_DSN is not set") {
		t.Errorf("unset env: %v", err)
	}

	missing, _ := sdk.ConfigJSON(postgres.Config{DSNFile: filepath.Join(t.TempDir(), "nope")})
	err = postgres.New(quiet(), "test").Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: missing})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "config.dsn_file") {
		t.Errorf("missing file: %v", err)
	}
}

// TestConfigureTLS: the tls block overrides the DSN's sslmode: require
// against a server without TLS fails (no plain-text fallback), disable
// connects although the DSN says require; unreadable files are refused.
func TestConfigureTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	withTLS := func(dsn string, tls *postgres.TLSConfig) *postgres.Provider {
		f := filepath.Join(t.TempDir(), "dsn")
		if err := os.WriteFile(f, []byte(dsn), 0o600); err != nil {
			t.Fatal(err)
		}
		p := postgres.New(quiet(), "test")
		t.Cleanup(p.Close)
		b, _ := sdk.ConfigJSON(postgres.Config{DSNFile: f, TLS: tls, ConnectTimeout: "3s", NamePrefix: e.cfg.NamePrefix})
		configure(t, p, b)
		return p
	}
	h := health(t, withTLS(e.dsn, &postgres.TLSConfig{Mode: "require"}))["postgres"]
	if h.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY || !strings.Contains(strings.ToLower(h.GetMessage()), "tls") {
		t.Errorf("require against a server without TLS: %v", h)
	}
	requireDSN := strings.Replace(e.dsn, "sslmode=disable", "sslmode=require", 1)
	if h := health(t, withTLS(requireDSN, nil))["postgres"]; h.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_UNHEALTHY {
		t.Errorf("the DSN's sslmode=require must fail without an override: %v", h)
	}
	if h := health(t, withTLS(requireDSN, &postgres.TLSConfig{Mode: "disable"}))["postgres"]; h.GetStatus() != providerv1.ComponentStatus_COMPONENT_STATUS_HEALTHY {
		t.Errorf("disable overriding sslmode=require: %v", h)
	}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	_ = os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	dsnFile := filepath.Join(t.TempDir(), "dsn")
	_ = os.WriteFile(dsnFile, []byte(e.dsn), 0o600)
	for field, tls := range map[string]*postgres.TLSConfig{
		"config.tls.ca_file":   {Mode: "verify-full", CAFile: notPEM},
		"config.tls.cert_file": {Mode: "require", CertFile: notPEM, KeyFile: notPEM},
	} {
		b, _ := sdk.ConfigJSON(postgres.Config{DSNFile: dsnFile, TLS: tls})
		err := postgres.New(quiet(), "test").Configure(t.Context(), &providerv1.ConfigureRequest{ConfigJson: b})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
	}
}

// TestMigrationTimeout: migration_timeout bounds each migration.
func TestMigrationTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cfg.MigrationTimeout = "500ms"
	p := e.provider(t)
	res := apply(t, p, step("p", "tenant.provision", "acme", map[string]any{"model": "bridge", "migrations": migrations("slow", "SELECT pg_sleep(5)")}))
	if res.GetState() != providerv1.StepState_STEP_STATE_FAILED || !strings.Contains(res.GetMessage(), "57014") {
		t.Fatalf("%s: %s", res.GetState(), res.GetMessage())
	}
}
