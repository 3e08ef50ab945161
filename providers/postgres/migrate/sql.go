package migrate

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The engine talks to PostgreSQL with the simple query protocol only: each
// function here builds one query string, several statements long, that is
// one round trip. Every value in them is either validated (names, checksums),
// a number, or quoted (identifiers with pgx.Identifier, literals with
// quoteLiteral).

// stateChangedCode is the SQLSTATE the re-check in a migration's transaction
// raises when the target's state moved since it was read (another runner got
// there first). Class "AT" is not used by PostgreSQL.
const stateChangedCode = "AT001"

// startSetting holds, local to a migration's transaction, the epoch at which
// its SQL started; it doubles as the marker that the transaction is still the
// engine's (a COMMIT or ROLLBACK in the migration resets it).
const startSetting = "attache.migration_start"

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings
// is on; E” strings are not used).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// millis is d as whole milliseconds for SET statement_timeout/lock_timeout,
// rounded up so that a positive duration never becomes 0 (no timeout).
func millis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// doBlock wraps body in a DO statement, dollar-quoted with a tag that does
// not occur in it.
func doBlock(body string) string {
	tag := "$attache$"
	for n := 0; strings.Contains(body, tag); n++ {
		tag = "$attache" + strconv.Itoa(n) + "$"
	}
	return "DO " + tag + "BEGIN " + body + " END" + tag
}

// table is the state table of schema, qualified and quoted.
func table(schema string) string { return ident(schema) + "." + StateTable }

// StateTableDDL is the statement that creates the state table in schema if
// it is missing, with the definition the engine uses. A caller that creates
// it ahead of the engine (to set its rights before any migration runs) must
// hold the target's lock, pg_advisory_xact_lock(Target.LockKey), in the same
// transaction, as the engine does, so that the two never race.
func StateTableDDL(schema string) string {
	return "CREATE TABLE IF NOT EXISTS " + table(schema) + " (" +
		"version bigint PRIMARY KEY, " +
		"name text NOT NULL, " +
		"checksum text NOT NULL, " +
		"applied_at timestamptz NOT NULL DEFAULT pg_catalog.now(), " +
		"duration_ms bigint NOT NULL)"
}

// lockPrefix takes the target's advisory lock with no statement or lock
// timeout (waiting for another runner that holds it for a long migration is
// the point; the caller's context bounds the wait), then sets the
// transaction's timeouts.
func lockPrefix(t *Target, o *Options) string {
	return fmt.Sprintf("SET LOCAL statement_timeout = 0;\nSET LOCAL lock_timeout = 0;\n"+
		"SELECT pg_catalog.pg_advisory_xact_lock(%d);\n"+
		"SET LOCAL statement_timeout = %d;\nSET LOCAL lock_timeout = %d;\n",
		t.LockKey, millis(o.StatementTimeout), millis(o.LockTimeout))
}

// inspectSQL reads the target's state under its lock, creating the state
// table first if it is missing; one implicit transaction (no BEGIN: the
// statements of one simple query run as one transaction, which ends with
// the query). The last statement returns version, name, checksum rows.
func inspectSQL(t *Target, o *Options) string {
	tbl := table(t.Schema)
	return lockPrefix(t, o) +
		doBlock("IF pg_catalog.to_regclass("+quoteLiteral(tbl)+") IS NULL THEN "+
			StateTableDDL(t.Schema)+"; END IF;") + ";\n" +
		"SELECT version, name, checksum FROM " + tbl + " ORDER BY version"
}

// existsSQL tells (without a lock, changing nothing) whether the state table
// exists; readSQL reads it.
func existsSQL(t *Target) string {
	return "SELECT pg_catalog.to_regclass(" + quoteLiteral(table(t.Schema)) + ") IS NOT NULL"
}

func readSQL(t *Target) string {
	return "SELECT version, name, checksum FROM " + table(t.Schema) + " ORDER BY version"
}

// applySQL is one migration's transaction: lock, timeouts, search_path set
// to the target's schema only, a re-check that no version ≥ m's was applied
// since the state was read (else SQLSTATE AT001 and nothing runs), the
// migration's SQL, its state row and COMMIT. The state row is inserted only
// if the transaction is still the engine's: a migration that ends it with
// COMMIT or ROLLBACK leaves the INSERT with 0 rows, which the caller
// reports. The second-to-last result is the INSERT, the last the COMMIT.
func applySQL(t *Target, m *Migration, o *Options) string {
	tbl := table(t.Schema)
	var b strings.Builder
	b.Grow(len(m.SQL) + 1024)
	b.WriteString("BEGIN;\n")
	b.WriteString(lockPrefix(t, o))
	b.WriteString("SET LOCAL search_path = " + ident(t.Schema) + ";\n")
	b.WriteString(doBlock(fmt.Sprintf("IF EXISTS (SELECT 1 FROM %s WHERE version >= %d) THEN "+
		"RAISE EXCEPTION 'migration state changed since it was read' USING ERRCODE = '%s'; END IF;",
		tbl, m.Version, stateChangedCode)) + ";\n")
	b.WriteString("SELECT pg_catalog.set_config('" + startSetting + "', extract(epoch FROM pg_catalog.clock_timestamp())::text, true);\n")
	b.WriteString(m.SQL)
	// A newline ends a trailing -- comment; the semicolon a last statement
	// without one.
	b.WriteString("\n;\n")
	fmt.Fprintf(&b, "INSERT INTO %s (version, name, checksum, duration_ms) "+
		"SELECT %d, %s, %s, coalesce(((extract(epoch FROM pg_catalog.clock_timestamp()) - "+
		"nullif(pg_catalog.current_setting('%s', true), '')::numeric) * 1000)::bigint, 0) "+
		"WHERE coalesce(pg_catalog.current_setting('%s', true), '') <> '';\n",
		tbl, m.Version, quoteLiteral(m.Name), quoteLiteral(m.Checksum), startSetting, startSetting)
	b.WriteString("COMMIT")
	return b.String()
}
