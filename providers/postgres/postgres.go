// Package postgres is attache-provider-postgres: it provisions, migrates,
// exports and erases tenants on a PostgreSQL server in three tenancy models,
//
//   - pool: shared tables in one schema (pool_schema) with a tenant_id
//     column, row level security enabled and forced, and one policy that
//     matches current_setting('app.tenant_id') (no setting, no rows);
//   - bridge: a schema and a LOGIN NOINHERIT role per tenant, named
//     <name_prefix><id>, the role holding rights on its schema only;
//   - silo: a database and a role per tenant, the role alone allowed to
//     connect,
//
// with the actions tenant.provision, migrate (versioned, checksummed SQL
// migrations run by providers/postgres/migrate under a concurrency cap),
// tenant.export (one consistent snapshot as CSV files and a manifest) and
// tenant.erase (followed by a query proving nothing of the tenant remains),
// plus Usage (storage bytes and row counts of metered tables per tenant) and
// Health. A registry (registry_schema.tenants) records which tenant uses
// which model.
//
// The connection string comes from a secret reference (an environment
// variable or a file) and never appears in a plan, an error, a log line or
// an output. Every identifier is quoted; tenant ids are DNS labels.
//
// Imported by its command (cmd/attache-provider-postgres) and its tests; the
// agent runs the binary through agent/catalog.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Name is the provider's name; its binary is attache-provider-postgres.
const Name = "postgres"

// Provider is the PostgreSQL provider. Create it with New, then Configure it.
type Provider struct {
	version string
	log     *slog.Logger

	applyMu sync.Mutex // one Apply at a time

	mu  sync.Mutex // guards the fields below
	env *env       // nil until configured
}

var _ sdk.Provider = (*Provider)(nil)

// New returns an unconfigured provider reporting version in Describe.
func New(log *slog.Logger, version string) *Provider {
	return &Provider{version: version, log: log}
}

// env is one configuration's connection and what an action works with.
type env struct {
	log     *slog.Logger
	s       settings
	pool    *pgxpool.Pool
	base    *pgx.ConnConfig // for connections to silo databases
	secrets []string        // never shown: the DSN and its passwords

	readyMu sync.Mutex // guards the fields below
	ready   bool       // registry created, facts below read
	db      string     // current_database() of the main connection
	version int        // server_version_num
	bypass  bool       // the provider's user bypasses row level security
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

// Configure validates the configuration, reads the connection string from
// its secret reference and builds the connection pool. It then connects
// (bounded by connect_timeout) and creates the registry if it is missing;
// a server that cannot be reached does not fail Configure (Health reports
// it, and every action tries again), a configuration that is wrong does.
func (p *Provider) Configure(ctx context.Context, req *providerv1.ConfigureRequest) error {
	var cfg Config
	if err := sdk.DecodeConfig(req, &cfg); err != nil {
		return err
	}
	s, err := cfg.settings()
	if err != nil {
		return invalidConfig(err)
	}
	dsn, source, warning, err := s.readDSN()
	if err != nil {
		return invalidConfig(err)
	}
	if warning != "" {
		p.log.Warn("config.dsn_file: "+warning, "tenant", req.GetTenant().GetTenant())
	}
	pc, secrets, err := s.poolConfig(dsn, source)
	if err != nil {
		return invalidConfig(err)
	}
	base := pc.ConnConfig.Copy()
	pool, err := pgxpool.NewWithConfig(context.WithoutCancel(ctx), pc)
	if err != nil {
		return invalidConfig(fieldError{field: "config", msg: scrub(err.Error(), secrets)})
	}
	e := &env{log: p.log, s: s, pool: pool, base: base, secrets: secrets}
	p.mu.Lock()
	old := p.env
	p.env = e
	p.mu.Unlock()
	if old != nil {
		old.pool.Close()
	}
	// The host bounds Configure (30s by default): try for connect_timeout
	// and a little more, then leave it to the actions and Health.
	cctx, cancel := context.WithTimeout(ctx, s.connectTimeout+5*time.Second)
	defer cancel()
	if err := e.ensureReady(cctx); err != nil {
		p.log.Warn("configured, but the server is not usable yet; actions will try again", "tenant", req.GetTenant().GetTenant(), "err", err)
	} else {
		p.log.Info("configured", "tenant", req.GetTenant().GetTenant(), "database", e.db, "server_version", e.version, "pool_schema", s.PoolSchema, "registry_schema", s.RegistrySchema, "name_prefix", s.NamePrefix)
	}
	return nil
}

// Close closes the connection pool.
func (p *Provider) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.env != nil {
		p.env.pool.Close()
		p.env = nil
	}
}

// getEnv returns the configured environment or FailedPrecondition.
func (p *Provider) getEnv() (*env, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.env == nil {
		return nil, sdk.FailedPrecondition("provider %q is not configured (call Configure first)", Name)
	}
	return p.env, nil
}

// readyEnv returns the configured environment once its server is reachable
// and the registry exists.
func (p *Provider) readyEnv(ctx context.Context) (*env, error) {
	e, err := p.getEnv()
	if err != nil {
		return nil, err
	}
	if err := e.ensureReady(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// ensureReady connects, creates the registry if it is missing and reads the
// server's facts, once; errors are Unavailable (scrubbed).
func (e *env) ensureReady(ctx context.Context) error {
	e.readyMu.Lock()
	defer e.readyMu.Unlock()
	if e.ready {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, e.s.connectTimeout+e.s.statementTimeout)
	defer cancel()
	var publicCreate publicCreateChange
	err := pgx.BeginFunc(cctx, e.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(cctx, `SELECT current_database(), current_setting('server_version_num')::int,
			(SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)`).Scan(&e.db, &e.version, &e.bypass); err != nil {
			return err
		}
		// Serialize concurrent creators (CREATE ... IF NOT EXISTS races).
		if _, err := tx.Exec(cctx, `SELECT pg_advisory_xact_lock(hashtextextended('attache registry ' || $1, 0))`, e.s.RegistrySchema); err != nil {
			return err
		}
		reg := ident(e.s.RegistrySchema)
		_, err := tx.Exec(cctx, fmt.Sprintf(`CREATE SCHEMA IF NOT EXISTS %[1]s;
CREATE TABLE IF NOT EXISTS %[1]s.tenants (
	id text PRIMARY KEY,
	model text NOT NULL CHECK (model IN ('pool', 'bridge', 'silo')),
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS %[1]s.metered_tables (
	model text NOT NULL CHECK (model IN ('pool', 'bridge', 'silo')),
	table_name text NOT NULL,
	PRIMARY KEY (model, table_name)
);`, reg))
		if err != nil {
			return err
		}
		if e.s.PoolSchema == "public" {
			publicCreate, err = revokePublicCreate(cctx, tx)
		}
		return err
	})
	if err != nil {
		return e.unavailable("connect to PostgreSQL and prepare the registry", err)
	}
	switch publicCreate {
	case publicCreateRevoked:
		e.log.Info("revoked CREATE ON SCHEMA public FROM PUBLIC: pool_schema is public, and every role could create objects in it (the default before PostgreSQL 15)", "database", e.db)
	case publicCreateKept:
		e.log.Warn("every role may create objects in schema public, which is pool_schema, and the provider's user could not revoke it (it does not own the schema): run REVOKE CREATE ON SCHEMA public FROM PUBLIC as its owner", "database", e.db)
	}
	e.ready = true
	return nil
}

// publicCreateChange is what revokePublicCreate did.
type publicCreateChange int

const (
	publicCreateNone    publicCreateChange = iota // PUBLIC had no CREATE on schema public
	publicCreateRevoked                           // it had; revoked
	publicCreateKept                              // it had, and the revoke did not take (not the owner)
)

// publicCreateSQL tells whether PUBLIC may create objects in schema public.
const publicCreateSQL = `SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
WHERE n.nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE')`

// revokePublicCreate takes CREATE on schema public away from PUBLIC, where
// PostgreSQL 14 and older grant it by default: in the pool schema any role
// (a tenant role included) could otherwise create tables, views or
// functions next to the tenants' data.
func revokePublicCreate(ctx context.Context, tx pgx.Tx) (publicCreateChange, error) {
	var has bool
	if err := tx.QueryRow(ctx, publicCreateSQL).Scan(&has); err != nil || !has {
		return publicCreateNone, err
	}
	// A user that does not own the schema gets a warning, not an error.
	if _, err := tx.Exec(ctx, "REVOKE CREATE ON SCHEMA public FROM PUBLIC"); err != nil {
		return publicCreateNone, fmt.Errorf("revoke CREATE on schema public from PUBLIC: %w", err)
	}
	if err := tx.QueryRow(ctx, publicCreateSQL).Scan(&has); err != nil {
		return publicCreateNone, err
	}
	if has {
		return publicCreateKept, nil
	}
	return publicCreateRevoked, nil
}

// unavailable wraps a connection or server error as Unavailable (or the
// context's error), scrubbed of secrets.
func (e *env) unavailable(what string, err error) error {
	if ctxErr := contextError(err); ctxErr != nil {
		return ctxErr
	}
	return status.Error(codes.Unavailable, scrub(what+": "+err.Error(), e.secrets))
}

// contextError returns the context error err stands for, if any.
func contextError(err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return context.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return context.DeadlineExceeded
	}
	return nil
}

// scrub replaces every secret in msg with "***".
func scrub(msg string, secrets []string) string {
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "***")
		}
	}
	return msg
}

// scrubErr returns err with secrets removed from its message, keeping its
// gRPC code and details (a plain error becomes Internal, a context error
// stays one).
func (e *env) scrubErr(err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		pb := st.Proto()
		pb.Message = scrub(pb.Message, e.secrets)
		return status.FromProto(pb).Err()
	}
	if ctxErr := contextError(err); ctxErr != nil {
		return ctxErr
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return status.Error(codes.Unavailable, scrub(err.Error(), e.secrets))
	}
	return status.Error(codes.Internal, scrub(err.Error(), e.secrets))
}

// scrubResult removes secrets from what a result shows.
func (e *env) scrubResult(r *providerv1.ApplyResult) *providerv1.ApplyResult {
	if r == nil {
		return nil
	}
	r.Message = scrub(r.Message, e.secrets)
	for _, c := range r.Changes {
		c.Summary = scrub(c.Summary, e.secrets)
	}
	for k, v := range r.GetOutputs().GetFields() {
		if sv, ok := v.GetKind().(*structpb.Value_StringValue); ok {
			r.Outputs.Fields[k] = structpb.NewStringValue(scrub(sv.StringValue, e.secrets))
		}
	}
	return r
}

// Plan returns the changes step would make, changing nothing.
func (p *Provider) Plan(ctx context.Context, step *providerv1.Step) ([]*providerv1.Change, error) {
	a, err := lookup(step)
	if err != nil {
		return nil, err
	}
	e, err := p.getEnv()
	if err != nil {
		return nil, err
	}
	spec, err := a.parse(e, step)
	if err != nil {
		return nil, err
	}
	if err := e.ensureReady(ctx); err != nil {
		return nil, err
	}
	cs, err := a.plan(ctx, e, spec)
	if err != nil {
		return nil, e.scrubErr(err)
	}
	return cs.proto(), nil
}

// Apply carries step out.
func (p *Provider) Apply(ctx context.Context, step *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	a, err := lookup(step)
	if err != nil {
		return nil, err
	}
	e, err := p.getEnv()
	if err != nil {
		return nil, err
	}
	spec, err := a.parse(e, step)
	if err != nil {
		return nil, err
	}
	p.applyMu.Lock()
	defer p.applyMu.Unlock()
	if err := e.ensureReady(ctx); err != nil {
		return nil, err
	}
	p.log.Info("apply", "step", step.GetId(), "action", step.GetAction(), "tenant", step.GetTenant(), "plan", step.GetPlanId(), "attempt", step.GetAttempt())
	scrubbed := func(pr *providerv1.Progress) {
		if progress != nil {
			pr.Message = scrub(pr.GetMessage(), e.secrets)
			progress(pr)
		}
	}
	res, err := a.apply(ctx, e, spec, scrubbed)
	if err != nil {
		return nil, e.scrubErr(err)
	}
	return e.scrubResult(res), nil
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
		return action{}, sdk.InvalidArgument("action", "unknown action %q (known: %s)", step.GetAction(), strings.Join(names, ", "))
	}
	if !tenantRE.MatchString(step.GetTenant()) {
		return action{}, sdk.InvalidArgument("tenant", "must be a DNS label (lower-case letters, digits and '-', at most 63), got %q", step.GetTenant())
	}
	return a, nil
}

// action is one action the provider offers: parse validates the step into
// a spec (InvalidArgument naming the field), plan and apply act on it.
type action struct {
	info  *providerv1.ActionInfo
	parse func(e *env, step *providerv1.Step) (any, error)
	plan  func(ctx context.Context, e *env, spec any) (changes, error)
	apply func(ctx context.Context, e *env, spec any, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error)
}

// actions lists every action by name.
var actions = map[string]action{}

// register adds an action whose spec has type T.
func register[T any](info *providerv1.ActionInfo,
	parse func(e *env, step *providerv1.Step) (T, error),
	plan func(ctx context.Context, e *env, spec T) (changes, error),
	apply func(ctx context.Context, e *env, spec T, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error),
) {
	actions[info.GetName()] = action{
		info:  info,
		parse: func(e *env, step *providerv1.Step) (any, error) { return parse(e, step) },
		plan:  func(ctx context.Context, e *env, spec any) (changes, error) { return plan(ctx, e, spec.(T)) },
		apply: func(ctx context.Context, e *env, spec any, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
			return apply(ctx, e, spec.(T), progress)
		},
	}
}
