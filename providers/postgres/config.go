package postgres

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Config is the provider's configuration (ConfigureRequest.config), decoded
// strictly: an unknown key is refused. The connection string itself is never
// part of it, only where to read it from (a secret reference).
type Config struct {
	// DSNEnv names the environment variable holding the connection string.
	// Exactly one of DSNEnv and DSNFile is set.
	DSNEnv string `json:"dsn_env,omitempty"`
	// DSNFile is the absolute path of a file holding the connection string
	// (surrounding white space is ignored).
	DSNFile string `json:"dsn_file,omitempty"`
	// TLS, when set, overrides sslmode and the TLS settings of the DSN.
	TLS *TLSConfig `json:"tls,omitempty"`
	// StatementTimeout bounds the provider's own queries (Go duration,
	// default "60s").
	StatementTimeout string `json:"statement_timeout,omitempty"`
	// MigrationTimeout bounds each migration (default "15m").
	MigrationTimeout string `json:"migration_timeout,omitempty"`
	// LockTimeout bounds waiting for a lock, e.g. before DDL (default "30s").
	LockTimeout string `json:"lock_timeout,omitempty"`
	// ConnectTimeout bounds each connection attempt (default "10s").
	ConnectTimeout string `json:"connect_timeout,omitempty"`
	// MaxConnections is the pool size for the main database and the cap on
	// concurrent migration targets (default 16, 1..256).
	MaxConnections int `json:"max_connections,omitempty"`
	// PoolSchema is the schema holding the pool model's tables (default
	// "public").
	PoolSchema string `json:"pool_schema,omitempty"`
	// RegistrySchema is where the provider keeps its registry of tenants
	// (default "attache").
	RegistrySchema string `json:"registry_schema,omitempty"`
	// NamePrefix starts every tenant schema, role and database name
	// (default "tenant_").
	NamePrefix string `json:"name_prefix,omitempty"`
	// SecretsDir is the absolute directory tenant.provision's
	// password_secret names a file in.
	SecretsDir string `json:"secrets_dir,omitempty"`
	// ExportDir is the absolute directory tenant.export writes to.
	ExportDir string `json:"export_dir,omitempty"`
	// AppRole is the role the vendor's app connects as; bridge and silo
	// tenant roles are granted to it so it can SET ROLE to one of them.
	AppRole string `json:"app_role,omitempty"`
}

// TLSConfig overrides the DSN's TLS settings.
type TLSConfig struct {
	// Mode is disable, require (encrypt, no verification), verify-ca
	// (the chain must lead to CAFile) or verify-full (verify-ca and the
	// host name, or ServerName, must match).
	Mode string `json:"mode"`
	// CAFile is the absolute path of the PEM CA bundle (required for
	// verify-ca; verify-full uses the system roots without it).
	CAFile string `json:"ca_file,omitempty"`
	// CertFile and KeyFile are the absolute paths of a PEM client
	// certificate and key (both or neither).
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// ServerName is the name verify-full checks instead of the host.
	ServerName string `json:"server_name,omitempty"`
}

// Defaults.
const (
	DefaultStatementTimeout = 60 * time.Second
	DefaultMigrationTimeout = 15 * time.Minute
	DefaultLockTimeout      = 30 * time.Second
	DefaultConnectTimeout   = 10 * time.Second
	DefaultMaxConnections   = 16
	DefaultPoolSchema       = "public"
	DefaultRegistrySchema   = "attache"
	DefaultNamePrefix       = "tenant_"
)

var (
	identRE   = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
	prefixRE  = regexp.MustCompile(`^[a-z][a-z0-9_]{0,15}$`)
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// settings is a validated Config with its defaults applied and its
// durations parsed.
type settings struct {
	Config
	statementTimeout time.Duration
	migrationTimeout time.Duration
	lockTimeout      time.Duration
	connectTimeout   time.Duration
}

// fieldError is one problem with one configuration field.
type fieldError struct {
	field, msg string
}

func (e fieldError) Error() string { return e.field + ": " + e.msg }

// Validate reports every problem with c at once (errors.Join of one error
// per field, each naming it, e.g. "config.tls.mode: ...").
func (c Config) Validate() error {
	_, err := c.settings()
	return err
}

// settings validates c and returns it with defaults applied.
func (c Config) settings() (settings, error) {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fieldError{field: "config." + field, msg: fmt.Sprintf(format, args...)})
	}
	switch {
	case c.DSNEnv == "" && c.DSNFile == "":
		fail("dsn_env", "set dsn_env or dsn_file (where to read the connection string from)")
	case c.DSNEnv != "" && c.DSNFile != "":
		fail("dsn_env", "set dsn_env or dsn_file, not both")
	case c.DSNEnv != "" && !envNameRE.MatchString(c.DSNEnv):
		fail("dsn_env", "must be an environment variable name, got %q", c.DSNEnv)
	case c.DSNFile != "" && !filepath.IsAbs(c.DSNFile):
		fail("dsn_file", "must be an absolute path, got %q", c.DSNFile)
	}
	s := settings{Config: c}
	dur := func(field, v string, def time.Duration) time.Duration {
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			fail(field, "must be a positive duration such as \"30s\", got %q", v)
			return def
		}
		if d%time.Millisecond != 0 || d > 24*time.Hour {
			fail(field, "must be whole milliseconds and at most 24h, got %q", v)
			return def
		}
		return d
	}
	s.statementTimeout = dur("statement_timeout", c.StatementTimeout, DefaultStatementTimeout)
	s.migrationTimeout = dur("migration_timeout", c.MigrationTimeout, DefaultMigrationTimeout)
	s.lockTimeout = dur("lock_timeout", c.LockTimeout, DefaultLockTimeout)
	s.connectTimeout = dur("connect_timeout", c.ConnectTimeout, DefaultConnectTimeout)
	switch {
	case c.MaxConnections == 0:
		s.MaxConnections = DefaultMaxConnections
	case c.MaxConnections < 1 || c.MaxConnections > 256:
		fail("max_connections", "must be between 1 and 256, got %d", c.MaxConnections)
		s.MaxConnections = DefaultMaxConnections
	}
	if s.NamePrefix == "" {
		s.NamePrefix = DefaultNamePrefix
	}
	prefixOK := true
	if !prefixRE.MatchString(s.NamePrefix) || strings.HasPrefix(s.NamePrefix, "pg") {
		fail("name_prefix", "must match ^[a-z][a-z0-9_]{0,15}$ and not start with \"pg\", got %q", s.NamePrefix)
		prefixOK = false
	}
	schema := func(field string, v *string, def string) {
		if *v == "" {
			*v = def
		}
		switch {
		case !identRE.MatchString(*v) || strings.HasPrefix(*v, "pg_") || *v == "information_schema":
			fail(field, "must be a lower-case identifier (^[a-z_][a-z0-9_]{0,62}$, not pg_* or information_schema), got %q", *v)
		case prefixOK && strings.HasPrefix(*v, s.NamePrefix):
			fail(field, "%q starts with name_prefix %q, so it could be taken for a tenant's", *v, s.NamePrefix)
		}
	}
	schema("pool_schema", &s.PoolSchema, DefaultPoolSchema)
	schema("registry_schema", &s.RegistrySchema, DefaultRegistrySchema)
	if s.PoolSchema == s.RegistrySchema {
		fail("registry_schema", "must differ from pool_schema (%q)", s.PoolSchema)
	}
	if c.AppRole != "" {
		switch {
		case !identRE.MatchString(c.AppRole) || strings.HasPrefix(c.AppRole, "pg_") || c.AppRole == "public":
			fail("app_role", "must be a lower-case role name (^[a-z_][a-z0-9_]{0,62}$, not pg_* or public), got %q", c.AppRole)
		case prefixOK && strings.HasPrefix(c.AppRole, s.NamePrefix):
			fail("app_role", "%q starts with name_prefix %q, so it could be taken for a tenant's role", c.AppRole, s.NamePrefix)
		}
	}
	for field, dir := range map[string]string{"secrets_dir": c.SecretsDir, "export_dir": c.ExportDir} {
		if dir != "" && !filepath.IsAbs(dir) {
			fail(field, "must be an absolute directory, got %q", dir)
		}
	}
	if t := c.TLS; t != nil {
		switch t.Mode {
		case "disable", "require", "verify-ca", "verify-full":
		case "":
			fail("tls.mode", "required when tls is set (disable, require, verify-ca or verify-full)")
		default:
			fail("tls.mode", "must be disable, require, verify-ca or verify-full, got %q", t.Mode)
		}
		for field, path := range map[string]string{"tls.ca_file": t.CAFile, "tls.cert_file": t.CertFile, "tls.key_file": t.KeyFile} {
			if path != "" && !filepath.IsAbs(path) {
				fail(field, "must be an absolute path, got %q", path)
			}
		}
		if (t.CertFile == "") != (t.KeyFile == "") {
			fail("tls.cert_file", "set both cert_file and key_file, or neither")
		}
		if t.Mode == "verify-ca" && t.CAFile == "" {
			fail("tls.ca_file", "required for mode verify-ca")
		}
		if t.Mode == "disable" && (t.CAFile != "" || t.CertFile != "" || t.ServerName != "") {
			fail("tls.mode", "disable takes no ca_file, cert_file, key_file or server_name")
		}
	}
	// Stable output: the map loops above visit fields in random order.
	sort.SliceStable(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return s, errors.Join(errs...)
}

// invalidConfig turns Validate's error into one InvalidArgument status
// naming every field.
func invalidConfig(err error) error {
	var fes []fieldError
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		var fe fieldError
		if errors.As(e, &fe) {
			fes = append(fes, fe)
		} else {
			fes = append(fes, fieldError{field: "config", msg: e.Error()})
		}
	}
	walk(err)
	msgs := make([]string, len(fes))
	br := &errdetails.BadRequest{}
	for i, fe := range fes {
		msgs[i] = fe.Error()
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: fe.field, Description: fe.msg})
	}
	st := status.New(codes.InvalidArgument, strings.Join(msgs, "; "))
	if d, err := st.WithDetails(br); err == nil {
		st = d
	}
	return st.Err()
}

// readDSN reads the connection string from its secret reference. Errors
// name the reference, never the value. A dsn_file that other users may
// read or write (mode & 0o007) is refused; warning is set when its group
// may (Kubernetes secrets are often mounted 0640 or 0440).
func (s *settings) readDSN() (dsn, source, warning string, err error) {
	if s.DSNEnv != "" {
		source = "dsn from env " + s.DSNEnv
		dsn = strings.TrimSpace(os.Getenv(s.DSNEnv))
		if dsn == "" {
			return "", source, "", fieldError{field: "config.dsn_env", msg: fmt.Sprintf("environment variable %s is not set or empty", s.DSNEnv)}
		}
		return dsn, source, "", nil
	}
	source = "dsn from file " + s.DSNFile
	fileErr := func(err error) error {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is in the field; the error alone
		}
		return fieldError{field: "config.dsn_file", msg: fmt.Sprintf("read %s: %v", s.DSNFile, err)}
	}
	f, err := os.Open(s.DSNFile)
	if err != nil {
		return "", source, "", fileErr(err)
	}
	defer f.Close()
	// The mode of the file opened (symbolic links followed), not of a path
	// that could be swapped between a check and the read.
	fi, err := f.Stat()
	if err != nil {
		return "", source, "", fileErr(err)
	}
	switch mode := fi.Mode().Perm(); {
	case !fi.Mode().IsRegular():
		return "", source, "", fieldError{field: "config.dsn_file", msg: fmt.Sprintf("%s is not a regular file", s.DSNFile)}
	case mode&0o007 != 0:
		return "", source, "", fieldError{field: "config.dsn_file", msg: fmt.Sprintf(
			"%s has mode %04o: other users may read (or change) the connection string; make it readable by the provider's user (and at most its group) only: chmod 0600 (or 0640; a Kubernetes secret volume: defaultMode 0400 or 0440)", s.DSNFile, mode)}
	case mode&0o070 != 0:
		warning = fmt.Sprintf("%s has mode %04o: the members of its group may read the connection string; 0600 (or 0400) keeps it to the provider's user", s.DSNFile, mode)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", source, "", fileErr(err)
	}
	dsn = strings.TrimSpace(string(b))
	if dsn == "" {
		return "", source, "", fieldError{field: "config.dsn_file", msg: fmt.Sprintf("%s is empty", s.DSNFile)}
	}
	return dsn, source, warning, nil
}

// poolConfig parses dsn and applies the settings: timeouts, pool size and
// the TLS override. A DSN that does not parse gives "<source>: invalid
// connection string" and nothing of the string itself. It also returns the
// secrets (the DSN and its passwords) errors must never show.
func (s *settings) poolConfig(dsn, source string) (*pgxpool.Config, []string, error) {
	field := "config.dsn_env"
	if s.DSNFile != "" {
		field = "config.dsn_file"
	}
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, nil, fieldError{field: field, msg: source + ": invalid connection string"}
	}
	secrets := []string{dsn}
	if pc.ConnConfig.Password != "" {
		secrets = append(secrets, pc.ConnConfig.Password)
	}
	cc := pc.ConnConfig
	cc.ConnectTimeout = s.connectTimeout
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	cc.RuntimeParams["statement_timeout"] = fmt.Sprint(s.statementTimeout.Milliseconds())
	cc.RuntimeParams["lock_timeout"] = fmt.Sprint(s.lockTimeout.Milliseconds())
	// Unqualified names in the provider's own statements resolve in
	// pg_catalog only (then in the session's own temporary schema, which
	// only the session itself can fill): nothing a tenant role or anyone
	// else plants in public or another schema can take the place of a
	// catalog function, operator or table. Migrations set their own
	// search_path (the target's schema) for their transaction; a pooled
	// connection gets this one back with DISCARD ALL (see env.acquire).
	cc.RuntimeParams["search_path"] = providerSearchPath
	if cc.RuntimeParams["application_name"] == "" {
		cc.RuntimeParams["application_name"] = "attache-provider-postgres"
	}
	if s.TLS != nil {
		if err := s.applyTLS(&cc.Config); err != nil {
			return nil, nil, err
		}
	}
	pc.MaxConns = int32(s.MaxConnections)
	pc.MinConns = 0
	return pc, secrets, nil
}

// providerSearchPath is the search_path of the provider's connections.
const providerSearchPath = "pg_catalog, pg_temp"

// applyTLS replaces the TLS configuration of the main host and of every
// fallback host with one built from s.TLS. Fallbacks that differ only by TLS
// (sslmode allow or prefer in the DSN) collapse into one, so the override
// never falls back to plain text.
func (s *settings) applyTLS(cc *pgconn.Config) error {
	build := func(host string) (*tls.Config, error) { return s.tlsConfig(host) }
	main, err := build(cc.Host)
	if err != nil {
		return err
	}
	cc.TLSConfig = main
	seen := map[string]bool{}
	var fbs []*pgconn.FallbackConfig
	for _, fb := range cc.Fallbacks {
		key := fmt.Sprintf("%s:%d", fb.Host, fb.Port)
		if seen[key] || (fb.Host == cc.Host && fb.Port == cc.Port) {
			continue
		}
		seen[key] = true
		t, err := build(fb.Host)
		if err != nil {
			return err
		}
		fbs = append(fbs, &pgconn.FallbackConfig{Host: fb.Host, Port: fb.Port, TLSConfig: t})
	}
	cc.Fallbacks = fbs
	return nil
}

// tlsConfig builds the TLS configuration for host from s.TLS: nil for
// disable.
func (s *settings) tlsConfig(host string) (*tls.Config, error) {
	t := s.TLS
	if t.Mode == "disable" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fieldError{field: "config.tls.cert_file", msg: fmt.Sprintf("load client certificate: %v", err)}
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	var roots *x509.CertPool
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fieldError{field: "config.tls.ca_file", msg: err.Error()}
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fieldError{field: "config.tls.ca_file", msg: fmt.Sprintf("%s holds no PEM certificate", t.CAFile)}
		}
	}
	switch t.Mode {
	case "require":
		cfg.InsecureSkipVerify = true // encryption only, as libpq's sslmode=require
	case "verify-ca":
		// Verify the chain but not the name (libpq's verify-ca).
		cfg.InsecureSkipVerify = true
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("server sent no certificate")
			}
			certs := make([]*x509.Certificate, len(raw))
			for i, b := range raw {
				c, err := x509.ParseCertificate(b)
				if err != nil {
					return fmt.Errorf("server certificate: %w", err)
				}
				certs[i] = c
			}
			opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool()}
			for _, c := range certs[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := certs[0].Verify(opts)
			return err
		}
	case "verify-full":
		cfg.RootCAs = roots // nil: the system roots
		cfg.ServerName = host
		if t.ServerName != "" {
			cfg.ServerName = t.ServerName
		}
	}
	return cfg, nil
}
