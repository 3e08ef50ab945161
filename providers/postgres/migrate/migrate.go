// Package migrate is the migration engine of attache-provider-postgres. It
// applies one list of versioned, checksummed SQL migrations to many targets
// — the pool schema, a bridge tenant's schema, a silo tenant's database —
// under a concurrency cap, and keeps each target's state next to its data in
// the table attache_schema_migrations(version, name, checksum, applied_at,
// duration_ms) of the target's schema.
//
// Per target, every transaction first takes pg_advisory_xact_lock(LockKey),
// so two runners on one target serialize and the second finds the work done
// (a migration is never applied twice). A migration that was applied with
// another checksum is refused (ErrChecksumMismatch), as is a pending
// migration older than the newest applied one (ErrOutOfOrder); nothing is
// applied to such a target. Each pending migration runs in its own
// transaction with search_path set to the target's schema (only it), the
// configured statement and lock timeouts, and its state row inserted in the
// same transaction. On the first failure no new target starts; targets in
// flight finish; every target stays at a whole version, and running again
// resumes, skipping what is done.
//
// Round trips are kept to a minimum: reading a target's state (and creating
// the state table when it is missing) is one simple-protocol query, and each
// migration — lock, re-check, the migration's SQL, the state row, COMMIT —
// is another. A target with nothing pending costs one round trip.
//
// Migrations run inside a transaction: their SQL must not hold transaction
// control (BEGIN/COMMIT/ROLLBACK; a migration that ends the engine's
// transaction is detected and fails its target), statements that cannot run
// in a transaction block (CREATE INDEX CONCURRENTLY, VACUUM), or COPY … FROM
// STDIN (Validate refuses it). Session settings a migration changes with SET
// (not SET LOCAL) outlive it on the caller's connection. The engine uses
// PL/pgSQL DO blocks (PL/pgSQL is installed in every database by default).
//
// Errors name the target, the migration's version and name, and hold the
// PostgreSQL error's message and SQLSTATE (the *pgconn.PgError is wrapped;
// its Detail, which may quote tenant rows, is not in the message), never a
// connection string.
//
// Imported only by providers/postgres (the provider), and its tests.
package migrate

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// StateTable is the table, in each target's schema, that records the
// migrations applied to it.
const StateTable = "attache_schema_migrations"

// Migration is one versioned SQL migration.
type Migration struct {
	Version  int64  // > 0, strictly increasing within a list
	Name     string // ^[a-z0-9][a-z0-9_.-]{0,99}$
	SQL      string // non-empty; may hold several statements
	Checksum string // "sha256:<hex>" of SQL; set by New
}

// New returns the migration with its checksum set.
func New(version int64, name, sql string) Migration {
	return Migration{Version: version, Name: name, SQL: sql, Checksum: checksum(sql)}
}

// checksum is "sha256:" and the hex SHA-256 of sql.
func checksum(sql string) string {
	sum := sha256.Sum256([]byte(sql))
	return "sha256:" + hex.EncodeToString(sum[:])
}

var (
	// ErrChecksumMismatch: a migration that has been applied to a target
	// has another checksum in the plan.
	ErrChecksumMismatch = errors.New("migration checksum mismatch")
	// ErrOutOfOrder: a pending migration is older than the newest one
	// applied to the target.
	ErrOutOfOrder = errors.New("migration out of order")
)

var (
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,99}$`)
	// copyInRE finds COPY … FROM STDIN, which would wait for data the
	// engine never sends (pg_dump output holds it).
	copyInRE = regexp.MustCompile(`(?i)\bfrom\s+stdin\b`)
)

// Validate checks a list of migrations: versions > 0 and strictly
// increasing, names matching ^[a-z0-9][a-z0-9_.-]{0,99}$, SQL non-empty,
// valid UTF-8 without NUL bytes or COPY … FROM STDIN, and checksums matching
// the SQL. The error
// lists every problem, each naming its field ("migrations[2].version: …").
func Validate(ms []Migration) error {
	var errs []error
	var last int64
	for i, m := range ms {
		f := fmt.Sprintf("migrations[%d]", i)
		switch {
		case m.Version <= 0:
			errs = append(errs, fmt.Errorf("%s.version: must be greater than 0, got %d", f, m.Version))
		case m.Version <= last:
			errs = append(errs, fmt.Errorf("%s.version: must be greater than the previous migration's (%d), got %d", f, last, m.Version))
		}
		last = max(last, m.Version)
		if !nameRE.MatchString(m.Name) {
			errs = append(errs, fmt.Errorf("%s.name: %s does not match %s", f, shortQuote(m.Name), nameRE))
		}
		switch {
		case strings.TrimSpace(m.SQL) == "":
			errs = append(errs, fmt.Errorf("%s.sql: empty", f))
		case !utf8.ValidString(m.SQL):
			errs = append(errs, fmt.Errorf("%s.sql: not valid UTF-8", f))
		case strings.IndexByte(m.SQL, 0) >= 0:
			errs = append(errs, fmt.Errorf("%s.sql: contains a NUL byte, which PostgreSQL refuses", f))
		case copyInRE.MatchString(m.SQL):
			errs = append(errs, fmt.Errorf("%s.sql: COPY … FROM STDIN would wait for data the engine does not send; use INSERT, or COPY from a file on the server", f))
		}
		switch want := checksum(m.SQL); {
		case m.Checksum == "":
			errs = append(errs, fmt.Errorf("%s.checksum: empty (build migrations with migrate.New)", f))
		case m.Checksum != want:
			errs = append(errs, fmt.Errorf("%s.checksum: %s does not match the SQL, whose checksum is %s", f, shortQuote(m.Checksum), want))
		}
	}
	return errors.Join(errs...)
}

// shortQuote quotes s for an error message, cut to 80 bytes.
func shortQuote(s string) string {
	if len(s) > 80 {
		cut := 80
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return fmt.Sprintf("%q…", s[:cut])
	}
	return fmt.Sprintf("%q", s)
}

// KeyFor is the standard advisory lock key of the target at schema in
// database: the first 8 bytes of a SHA-256 over both names. Every runner of
// this engine (and of any tool that shares its lock) on that target must use
// the same key.
func KeyFor(database, schema string) int64 {
	h := sha256.New()
	h.Write([]byte("attache.dev/migrate\x00"))
	h.Write([]byte(database))
	h.Write([]byte{0})
	h.Write([]byte(schema))
	return int64(binary.BigEndian.Uint64(h.Sum(nil)[:8]))
}
