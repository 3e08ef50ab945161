package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// Engine names reported by Store.Engine.
const (
	EngineSQLite   = "sqlite"
	EnginePostgres = "postgres"
)

// Open opens the store named by dsn and brings its schema up to date.
//
// A dsn starting with postgres:// or postgresql:// selects PostgreSQL (any
// pgx connection string). Anything else is the path of a SQLite database
// file, optionally written as sqlite:///abs/path; the file (and its directory)
// is created if missing, readable by its owner only.
//
// Open refuses a database whose schema is newer than this binary knows.
// logger may be nil.
//
// Times are stored in UTC truncated to microseconds (PostgreSQL's precision)
// on both engines; what is read back is what was stored.
//
// The returned store also has a method DB() *sql.DB, for tests and offline
// tooling only: writing through it bypasses the audit trail.
func Open(ctx context.Context, dsn string, logger *slog.Logger) (Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var (
		s   *sqlStore
		err error
	)
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		s, err = openPostgres(ctx, dsn)
	} else {
		s, err = openSQLite(ctx, dsn)
	}
	if err != nil {
		return nil, err
	}
	s.log = logger.With("component", "store", "engine", s.d.name)
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func openPostgres(ctx context.Context, dsn string) (*sqlStore, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres: %w", err)
	}
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(10)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connect to postgres: %w", err)
	}
	return &sqlStore{d: postgresDialect, db: db, rdb: db}, nil
}

// sqliteParams are the connection settings every SQLite connection gets.
// synchronous=FULL: a commit the control plane acknowledged (an enrollment, an
// audit record) survives a power cut; heartbeats are batched so the cost is
// one fsync per batch.
const sqliteParams = "_busy_timeout=10000&_foreign_keys=1&_journal_mode=WAL&_synchronous=FULL"

func openSQLite(ctx context.Context, dsn string) (*sqlStore, error) {
	path := strings.TrimPrefix(dsn, "sqlite://")
	if path == "" {
		return nil, errors.New("store: empty SQLite path")
	}
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("store: SQLite path %q: must not contain '?' or '#'", path)
	}
	if path != ":memory:" {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		// SQLite creates the -wal and -shm files with the main file's mode.
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		f.Close()
	}

	// One writer connection, whose transactions take the write lock at
	// BEGIN (_txlock=immediate): writers queue in database/sql instead of
	// failing with SQLITE_BUSY. Readers use their own pool (WAL lets them
	// run beside the writer).
	db, err := sql.Open("sqlite", path+"?"+sqliteParams+"&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open sqlite %s: %w", path, err)
	}
	s := &sqlStore{d: sqliteDialect, db: db, rdb: db}
	if path != ":memory:" {
		rdb, err := sql.Open("sqlite", path+"?"+sqliteParams+"&_query_only=1")
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("store: open sqlite: %w", err)
		}
		rdb.SetMaxOpenConns(4)
		rdb.SetMaxIdleConns(4)
		s.rdb = rdb
	}
	return s, nil
}
