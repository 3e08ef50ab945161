package postgres

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// roleState is what the provider needs to know of a tenant role.
type roleState struct {
	exists bool
	ok     bool // LOGIN NOINHERIT, not a superuser
	// Refused in an existing role: attributes a tenant role must not have
	// (CREATEROLE, CREATEDB, BYPASSRLS, REPLICATION), roles it is a member
	// of (the provider makes it a member of none), and roles that are
	// members of it other than app_role and the provider's user (who may
	// act as it).
	attrs    []string
	memberOf []string
	members  []string
}

// roleStatesSQL reads the roles named in $1; $2 is app_role (empty without one).
const roleStatesSQL = `
SELECT r.rolname::text, r.rolcanlogin AND NOT r.rolinherit AND NOT r.rolsuper,
  array_remove(ARRAY[
    CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END, CASE WHEN r.rolcreatedb THEN 'CREATEDB' END,
    CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END, CASE WHEN r.rolreplication THEN 'REPLICATION' END], NULL),
  ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
        WHERE m.member = r.oid ORDER BY 1),
  ARRAY(SELECT DISTINCT u.rolname::text FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
        WHERE m.roleid = r.oid AND u.rolname <> $2 AND u.rolname <> current_user ORDER BY 1)
FROM pg_roles r WHERE r.rolname = ANY($1)`

// roleStates reads the tenant roles named in names; app is app_role (or
// "").
func roleStates(ctx context.Context, q querier, names []string, app string) (map[string]roleState, error) {
	rows, err := q.Query(ctx, roleStatesSQL, names, app)
	if err != nil {
		return nil, fmt.Errorf("read roles: %w", err)
	}
	out := map[string]roleState{}
	var name string
	var st roleState
	_, err = pgx.ForEachRow(rows, []any{&name, &st.ok, &st.attrs, &st.memberOf, &st.members}, func() error {
		st.exists = true
		out[name] = st
		st = roleState{}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read roles: %w", err)
	}
	return out, nil
}

// refusal says why an existing role may not serve as tenant t's role, or
// is "": the provider adopts a role it finds (a rerun after a crash, a
// role created ahead), but not one with rights a tenant role must not hold,
// which the provider would otherwise hand to the tenant's users.
func (st roleState) refusal(t tenantRef, app string) string {
	var why []string
	if len(st.attrs) > 0 {
		why = append(why, fmt.Sprintf("has %s (ALTER ROLE %s NO%s, or drop it)", strings.Join(st.attrs, ", "), t.name, strings.Join(st.attrs, " NO")))
	}
	if len(st.memberOf) > 0 {
		why = append(why, fmt.Sprintf("is a member of %s, which the provider never grants (REVOKE %s FROM %s)", strings.Join(st.memberOf, ", "), strings.Join(st.memberOf, ", "), t.name))
	}
	if len(st.members) > 0 {
		only := "no role"
		if app != "" {
			only = "only app_role " + app
		}
		why = append(why, fmt.Sprintf("is granted to %s, so they may act as the tenant (%s may be; REVOKE %s FROM %s)", strings.Join(st.members, ", "), only, t.name, strings.Join(st.members, ", ")))
	}
	if len(why) == 0 {
		return ""
	}
	return fmt.Sprintf("%s: role %s exists and %s", t.field, t.name, strings.Join(why, "; "))
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
// and the migration state table, on which it has SELECT and nothing more
// (created at provisioning, see stateLockdownSQL). It returns
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
  AND EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relname = 'attache_schema_migrations'
       AND c.relkind = 'r' AND has_table_privilege(r.oid, c.oid, 'SELECT')
       AND NOT has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'))
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

// members returns which of names are granted to role app. From PostgreSQL
// 16 a membership counts only if none of its grants lets app inherit the
// role's rights (inherit_option): an inheriting one is granted again WITH
// INHERIT FALSE (see grantToApp).
func members(ctx context.Context, q querier, app string, names []string, version int) (map[string]bool, error) {
	query := `SELECT r.rolname FROM pg_auth_members m
JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles a ON a.oid = m.member
WHERE a.rolname = $1 AND r.rolname = ANY($2)`
	if version >= 160000 {
		query += ` GROUP BY r.rolname HAVING NOT bool_or(m.inherit_option)`
	}
	out, err := existing(ctx, q, query, app, names)
	if err != nil {
		return nil, fmt.Errorf("read role memberships: %w", err)
	}
	return out, nil
}

// inheritingGrants lists, from PostgreSQL 16, the grants of roles in names
// to app that let app inherit their rights, as "role (granted by grantor)".
func inheritingGrants(ctx context.Context, q querier, app string, names []string) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT r.rolname::text || ' (granted by ' || g.rolname::text || ')' FROM pg_auth_members m
JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles a ON a.oid = m.member JOIN pg_roles g ON g.oid = m.grantor
WHERE a.rolname = $1 AND r.rolname = ANY($2) AND m.inherit_option ORDER BY 1`, app, names)
	if err != nil {
		return nil, fmt.Errorf("read role memberships: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read role memberships: %w", err)
	}
	return out, nil
}
