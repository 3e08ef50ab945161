package postgres

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Model is a tenancy model.
type Model string

// The tenancy models.
const (
	// Pool: shared tables with a tenant_id column and row level security.
	Pool Model = "pool"
	// Bridge: a schema (and a role) per tenant.
	Bridge Model = "bridge"
	// Silo: a database (and a role) per tenant.
	Silo Model = "silo"
)

// maxIdentLen is PostgreSQL's NAMEDATALEN-1: longer names are silently
// truncated, so they are refused instead.
const maxIdentLen = 63

// maxTenants bounds one step's tenant list.
const maxTenants = 100000

var (
	tenantRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	tableRE  = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
	// reservedNames are schema, database and role names a tenant must never
	// get (and every name starting with "pg_", see reservedName).
	reservedNames = map[string]bool{"postgres": true, "template0": true, "template1": true, "public": true, "information_schema": true}
)

// tenantName is the PostgreSQL name (schema, role, database) of tenant id:
// the prefix and the id with '-' replaced by '_' (injective: ids have no
// '_').
func tenantName(prefix, id string) string {
	return prefix + strings.ReplaceAll(id, "-", "_")
}

// checkTenant validates a tenant id and the length of its name.
func checkTenant(prefix, id string) error {
	if !tenantRE.MatchString(id) {
		return fmt.Errorf("must be a DNS label (lower-case letters, digits and '-', at most 63), got %q", id)
	}
	if n := tenantName(prefix, id); len(n) > maxIdentLen {
		return fmt.Errorf("tenant %q gives the name %q of %d bytes; PostgreSQL names are at most %d (shorten the id or name_prefix)", id, n, len(n), maxIdentLen)
	} else if reservedName(n) {
		return fmt.Errorf("tenant %q gives the reserved name %q (names starting with pg_, and %s, belong to PostgreSQL): choose another id or name_prefix", id, n, reservedList)
	}
	return nil
}

// reservedName reports whether a schema, role or database may not be named
// n: PostgreSQL's own names (pg_*, information_schema, public, the
// template and maintenance databases).
func reservedName(n string) bool {
	return strings.HasPrefix(n, "pg_") || reservedNames[n]
}

// reservedList names reservedNames for messages.
const reservedList = "information_schema, public, postgres, template0, template1"

// ident quotes one identifier.
func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// qual quotes a schema-qualified name.
func qual(schema, name string) string { return pgx.Identifier{schema, name}.Sanitize() }

// literal quotes s as an SQL string literal (standard_conforming_strings is
// on in every supported version).
func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// tenantSetting is the setting the pool policies read.
const tenantSetting = "app.tenant_id"

// policyName is the pool model's row level security policy.
const policyName = "attache_tenant_isolation"

// stateTable is the migration engine's state table (in each target schema).
const stateTable = "attache_schema_migrations"

// tenantPredicate is the pool model's isolation predicate for a tenant_id
// column of SQL type typ (as format_type prints it): no context reads as
// NULL, which matches nothing (fail closed).
func tenantPredicate(typ string) string {
	return fmt.Sprintf("tenant_id = NULLIF(current_setting(%s, true), '')::%s", literal(tenantSetting), typ)
}
