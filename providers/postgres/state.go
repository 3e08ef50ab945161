package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// roleState is what the provider needs to know of a tenant role.
type roleState struct {
	exists bool
	ok     bool // LOGIN NOINHERIT, not a superuser
}

// roleStates reads the tenant roles named in names.
func roleStates(ctx context.Context, q querier, names []string) (map[string]roleState, error) {
	rows, err := q.Query(ctx, `SELECT rolname, rolcanlogin AND NOT rolinherit AND NOT rolsuper FROM pg_roles WHERE rolname = ANY($1)`, names)
	if err != nil {
		return nil, fmt.Errorf("read roles: %w", err)
	}
	out := map[string]roleState{}
	var name string
	var ok bool
	_, err = pgx.ForEachRow(rows, []any{&name, &ok}, func() error {
		out[name] = roleState{exists: true, ok: ok}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read roles: %w", err)
	}
	return out, nil
}

// existing returns the names query returns, one per row.
func existing(ctx context.Context, q querier, query string, args ...any) (map[string]bool, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	var name string
	_, err = pgx.ForEachRow(rows, []any{&name}, func() error {
		out[name] = true
		return nil
	})
	return out, err
}

// existingSchemas returns which of names are schemas of the connected
// database.
func existingSchemas(ctx context.Context, q querier, names []string) (map[string]bool, error) {
	out, err := existing(ctx, q, `SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)`, names)
	if err != nil {
		return nil, fmt.Errorf("read schemas: %w", err)
	}
	return out, nil
}

// existingDatabases returns which of names are databases.
func existingDatabases(ctx context.Context, q querier, names []string) (map[string]bool, error) {
	out, err := existing(ctx, q, `SELECT datname FROM pg_database WHERE datname = ANY($1)`, names)
	if err != nil {
		return nil, fmt.Errorf("read databases: %w", err)
	}
	return out, nil
}

// schemaGrantsSQL checks, for pairs ($1 schemas, $2 roles), that each role
// has exactly what a tenant role gets on its schema: no PUBLIC access to
// the schema; USAGE for the role; default privileges of the provider's
// user granting it SELECT, INSERT, UPDATE, DELETE on tables and USAGE,
// SELECT on sequences; those rights on every existing table and sequence;
// and no more than SELECT on the migration state table. It returns
// (schema, ok) for the pairs whose schema and role exist.
const schemaGrantsSQL = `
SELECT s.schema,
  NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a WHERE a.grantee = 0)
  AND has_schema_privilege(r.oid, n.oid, 'USAGE')
  AND (SELECT count(DISTINCT a.privilege_type) FROM pg_default_acl d, aclexplode(d.defaclacl) a
       WHERE d.defaclnamespace = n.oid AND d.defaclrole = me.oid AND d.defaclobjtype = 'r' AND a.grantee = r.oid
         AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')) = 4
  AND (SELECT count(DISTINCT a.privilege_type) FROM pg_default_acl d, aclexplode(d.defaclacl) a
       WHERE d.defaclnamespace = n.oid AND d.defaclrole = me.oid AND d.defaclobjtype = 'S' AND a.grantee = r.oid
         AND a.privilege_type IN ('USAGE', 'SELECT')) = 2
  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
       AND c.relname <> 'attache_schema_migrations'
       AND NOT (has_table_privilege(r.oid, c.oid, 'SELECT') AND has_table_privilege(r.oid, c.oid, 'INSERT')
            AND has_table_privilege(r.oid, c.oid, 'UPDATE') AND has_table_privilege(r.oid, c.oid, 'DELETE')))
  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind = 'S'
       AND NOT (has_sequence_privilege(r.oid, c.oid, 'USAGE') AND has_sequence_privilege(r.oid, c.oid, 'SELECT')))
  AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relname = 'attache_schema_migrations'
       AND (has_table_privilege(r.oid, c.oid, 'INSERT') OR has_table_privilege(r.oid, c.oid, 'UPDATE')
         OR has_table_privilege(r.oid, c.oid, 'DELETE') OR has_table_privilege(r.oid, c.oid, 'TRUNCATE')))
FROM unnest($1::text[], $2::text[]) AS s(schema, role)
JOIN pg_namespace n ON n.nspname = s.schema
JOIN pg_roles r ON r.rolname = s.role
CROSS JOIN (SELECT oid FROM pg_roles WHERE rolname = current_user) me`

// schemaGrantsOK returns, per schema, whether its role's grants are as
// wanted (see schemaGrantsSQL); a schema or role that does not exist is
// not OK.
func schemaGrantsOK(ctx context.Context, q querier, schemas, roles []string) (map[string]bool, error) {
	rows, err := q.Query(ctx, schemaGrantsSQL, schemas, roles)
	if err != nil {
		return nil, fmt.Errorf("read schema privileges: %w", err)
	}
	out := map[string]bool{}
	var schema string
	var ok bool
	_, err = pgx.ForEachRow(rows, []any{&schema, &ok}, func() error {
		out[schema] = ok
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read schema privileges: %w", err)
	}
	return out, nil
}

// grantSchemaSQL gives role a tenant role's rights on schema and takes
// PUBLIC's away (see schemaGrantsSQL).
func grantSchemaSQL(schema, role string) string {
	s, r := ident(schema), ident(role)
	return fmt.Sprintf(`REVOKE ALL ON SCHEMA %[1]s FROM PUBLIC;
GRANT USAGE ON SCHEMA %[1]s TO %[2]s;
ALTER DEFAULT PRIVILEGES IN SCHEMA %[1]s GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %[2]s;
ALTER DEFAULT PRIVILEGES IN SCHEMA %[1]s GRANT USAGE, SELECT ON SEQUENCES TO %[2]s;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %[1]s TO %[2]s;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %[1]s TO %[2]s`, s, r)
}

// databaseGrantsOK returns, per silo database in names, whether PUBLIC has
// no rights on it and its role (same name) may CONNECT and create TEMP
// tables.
func databaseGrantsOK(ctx context.Context, q querier, names []string) (map[string]bool, error) {
	rows, err := q.Query(ctx, `
SELECT d.datname,
  NOT EXISTS (SELECT 1 FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a WHERE a.grantee = 0)
  AND has_database_privilege(r.oid, d.oid, 'CONNECT') AND has_database_privilege(r.oid, d.oid, 'TEMPORARY')
FROM pg_database d JOIN pg_roles r ON r.rolname = d.datname
WHERE d.datname = ANY($1)`, names)
	if err != nil {
		return nil, fmt.Errorf("read database privileges: %w", err)
	}
	out := map[string]bool{}
	var name string
	var ok bool
	_, err = pgx.ForEachRow(rows, []any{&name, &ok}, func() error {
		out[name] = ok
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read database privileges: %w", err)
	}
	return out, nil
}

// grantDatabaseSQL gives role CONNECT and TEMPORARY on database db and
// takes PUBLIC's rights away.
func grantDatabaseSQL(db, role string) string {
	return fmt.Sprintf("REVOKE ALL ON DATABASE %[1]s FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE %[1]s TO %[2]s", ident(db), ident(role))
}

// members returns which of names are granted to role app.
func members(ctx context.Context, q querier, app string, names []string) (map[string]bool, error) {
	out, err := existing(ctx, q, `SELECT r.rolname FROM pg_auth_members m
JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles a ON a.oid = m.member
WHERE a.rolname = $1 AND r.rolname = ANY($2)`, app, names)
	if err != nil {
		return nil, fmt.Errorf("read role memberships: %w", err)
	}
	return out, nil
}
