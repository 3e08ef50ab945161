package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Target is one place a list of migrations applies to.
type Target struct {
	Name string // for progress and errors: a tenant id, or "pool"
	// Schema holds the data and attache_schema_migrations; each migration
	// runs with search_path set to it (only it).
	Schema string
	// Connect returns a connection and its release; Run calls release once
	// per successful Connect, with the connection outside any transaction or
	// closed (pgx closes it when the context ends during a query, after
	// sending the server a cancel request).
	Connect func(ctx context.Context) (*pgx.Conn, func(), error)
	LockKey int64 // advisory lock key; KeyFor(database, schema) gives the standard one
}

// Options tunes Run.
type Options struct {
	Concurrency int // targets at once, ≥ 1 (0: 1)
	// StatementTimeout is each migration's statement_timeout (SET LOCAL;
	// PostgreSQL applies it to each statement of a migration); 0 = none.
	StatementTimeout time.Duration
	LockTimeout      time.Duration // each migration's lock_timeout (SET LOCAL); 0 = none
	Progress         func(Event)   // called from one goroutine at a time; may be nil
	Logger           *slog.Logger  // may be nil
	DryRun           bool          // compute what would run, change nothing (Plan)
}

// Event kinds.
const (
	EventApplied = "applied" // one migration applied to Target (Version, Name, Duration)
	EventCurrent = "current" // Target had nothing pending: it is at Version
	EventFailed  = "failed"  // Target failed (Err; Version and Name of the migration, if one failed)
	EventDone    = "done"    // Target finished at Version (Duration: the whole target); in a dry run, its pending work was computed
)

// Event is one step of a run, for progress. Done counts the targets finished
// (any outcome), this one included for kinds current, failed and done; Total
// is the number of targets.
type Event struct {
	Target   string
	Version  int64
	Name     string
	Kind     string
	Done     int
	Total    int
	Duration time.Duration
	Err      error
}

// TargetState is the outcome of one target.
type TargetState string

// Target states.
const (
	StateMigrated   TargetState = "migrated"    // this run applied at least one migration
	StateCurrent    TargetState = "current"     // nothing was pending
	StateFailed     TargetState = "failed"      // see Err; the target is at version To
	StateNotStarted TargetState = "not_started" // not reached: the run halted or was cancelled first
	StatePending    TargetState = "pending"     // dry run: Pending would be applied
)

// TargetResult is what happened to one target. From is its version (the
// highest applied) before the run, To after; Applied lists the versions this
// run applied, Pending those still to apply (dry run, or after a failure).
type TargetResult struct {
	Target  string
	State   TargetState
	From    int64
	To      int64
	Applied []int64
	Pending []int64
	Err     error
}

// Result is the outcome of Run: Targets in input order and counts per state
// (Pending: dry run only).
type Result struct {
	Targets                               []TargetResult
	Migrated, Current, Failed, NotStarted int
	Pending                               int
}

// maxStateRetries bounds how often one target's state is re-read after
// another runner moved it between reading it and applying a migration.
const maxStateRetries = 10

// Run applies ms to every target, at most opts.Concurrency targets at once.
// Targets are started in order; after the first failure no new target
// starts, the ones in flight finish, and Run returns that failure's error
// (naming the target, the migration and the PostgreSQL error) with the
// Result telling each target's version. When ctx is done, Run stops promptly
// (statements in flight are cancelled on the server) and returns ctx's
// error. Invalid ms or targets are refused before anything runs.
func Run(ctx context.Context, targets []Target, ms []Migration, opts Options) (Result, error) {
	if err := Validate(ms); err != nil {
		return Result{}, err
	}
	if err := validateRun(targets, &opts); err != nil {
		return Result{}, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r := &runner{ms: ms, opts: &opts, targets: targets, results: make([]TargetResult, len(targets))}
	for i := range targets {
		r.results[i] = TargetResult{Target: targets[i].Name, State: StateNotStarted}
	}
	if err := ctx.Err(); err != nil {
		return r.result(), err
	}
	var wg sync.WaitGroup
	for range min(opts.Concurrency, len(targets)) {
		wg.Go(func() {
			for {
				i, ok := r.claim(ctx)
				if !ok {
					return
				}
				r.results[i] = r.runTarget(ctx, &targets[i])
			}
		})
	}
	wg.Wait()
	res := r.result()
	if err := ctx.Err(); err != nil && (res.NotStarted > 0 || r.cancelled) {
		return res, err
	}
	if r.firstErr != nil {
		if res.Failed > 1 {
			return res, fmt.Errorf("%w (and %d more targets failed)", r.firstErr, res.Failed-1)
		}
		return res, r.firstErr
	}
	return res, nil
}

func validateRun(targets []Target, o *Options) error {
	var errs []error
	switch {
	case o.Concurrency < 0:
		errs = append(errs, fmt.Errorf("options.concurrency: must be at least 1, got %d", o.Concurrency))
	case o.Concurrency == 0:
		o.Concurrency = 1
	}
	if o.StatementTimeout < 0 {
		errs = append(errs, fmt.Errorf("options.statement_timeout: must not be negative, got %s", o.StatementTimeout))
	}
	if o.LockTimeout < 0 {
		errs = append(errs, fmt.Errorf("options.lock_timeout: must not be negative, got %s", o.LockTimeout))
	}
	for i, t := range targets {
		f := fmt.Sprintf("targets[%d]", i)
		if t.Name == "" {
			errs = append(errs, fmt.Errorf("%s.name: empty", f))
		}
		switch {
		case t.Schema == "":
			errs = append(errs, fmt.Errorf("%s.schema: empty", f))
		case len(t.Schema) > 63:
			errs = append(errs, fmt.Errorf("%s.schema: longer than 63 bytes (PostgreSQL would truncate it)", f))
		case !validText(t.Schema):
			errs = append(errs, fmt.Errorf("%s.schema: not valid UTF-8 or contains a NUL byte", f))
		}
		if t.Connect == nil {
			errs = append(errs, fmt.Errorf("%s.connect: nil", f))
		}
	}
	return errors.Join(errs...)
}

// runner is the state of one Run.
type runner struct {
	ms      []Migration
	opts    *Options
	targets []Target
	results []TargetResult // each written by the worker that claimed it

	mu        sync.Mutex // guards next, halted, firstErr, cancelled
	next      int
	halted    bool
	firstErr  error
	cancelled bool // a started target was interrupted by ctx

	pmu  sync.Mutex // serializes Progress; guards done
	done int
}

// claim hands out the next target, unless the run is halted, cancelled or
// finished.
func (r *runner) claim(ctx context.Context) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.halted || ctx.Err() != nil || r.next >= len(r.targets) {
		return 0, false
	}
	r.next++
	return r.next - 1, true
}

// emit reports ev; finished marks the end of a target.
func (r *runner) emit(ev Event, finished bool) {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	if finished {
		r.done++
	}
	if r.opts.Progress == nil {
		return
	}
	ev.Done, ev.Total = r.done, len(r.targets)
	r.opts.Progress(ev)
}

func (r *runner) result() Result {
	res := Result{Targets: r.results}
	for _, t := range r.results {
		switch t.State {
		case StateMigrated:
			res.Migrated++
		case StateCurrent:
			res.Current++
		case StateFailed:
			res.Failed++
		case StateNotStarted:
			res.NotStarted++
		case StatePending:
			res.Pending++
		}
	}
	return res
}

// label names a target in messages.
func label(name string) string {
	if name == "pool" {
		return "pool"
	}
	return "tenant " + name
}

// applied is one row of a target's state table.
type applied struct {
	name, checksum string
}

// state is a target's state table.
type state struct {
	rows   map[int64]applied
	newest int64 // 0 when nothing is applied
}

// refusal is a target refused before anything ran on it.
type refusal struct {
	msg  string
	kind error
}

func (e *refusal) Error() string { return e.msg }
func (e *refusal) Unwrap() error { return e.kind }

// pending returns the migrations of the plan not applied to a target in
// state st, or the migration refused (checksum mismatch, out of order) and
// why.
func (r *runner) pending(t *Target, st state) ([]*Migration, *Migration, error) {
	var out []*Migration
	for i := range r.ms {
		m := &r.ms[i]
		a, ok := st.rows[m.Version]
		switch {
		case ok && a.checksum != m.Checksum:
			return nil, m, &refusal{kind: ErrChecksumMismatch, msg: fmt.Sprintf(
				"%s: migration %d %s was applied with %s, the plan has %s; a migration that has run is never edited: add a new one",
				label(t.Name), m.Version, m.Name, a.checksum, m.Checksum)}
		case ok:
		case m.Version < st.newest:
			return nil, m, &refusal{kind: ErrOutOfOrder, msg: fmt.Sprintf(
				"%s: migration %d %s is not applied but %d %s is; a migration older than the newest applied one is refused: give it a version above %d",
				label(t.Name), m.Version, m.Name, st.newest, st.rows[st.newest].name, st.newest)}
		default:
			out = append(out, m)
		}
	}
	return out, nil, nil
}

// errStateChanged: another runner applied a migration between reading the
// state and applying; read it again.
var errStateChanged = errors.New("migration state changed")

// runTarget migrates one target.
func (r *runner) runTarget(ctx context.Context, t *Target) (res TargetResult) {
	start := time.Now()
	res = TargetResult{Target: t.Name}
	var failing *Migration
	defer func() {
		if res.State != StateFailed {
			return
		}
		ev := Event{Target: t.Name, Kind: EventFailed, Duration: time.Since(start)}
		if failing != nil {
			ev.Version, ev.Name = failing.Version, failing.Name
		}
		r.mu.Lock()
		if ctx.Err() != nil && errors.Is(res.Err, ctx.Err()) {
			r.cancelled = true
		} else if !r.halted {
			r.halted, r.firstErr = true, res.Err
		}
		r.mu.Unlock()
		ev.Err = res.Err
		r.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "migration failed", slog.String("target", t.Name), slog.Any("err", res.Err))
		r.emit(ev, true)
	}()
	fail := func(err error) TargetResult {
		if ctx.Err() != nil {
			err = fmt.Errorf("%s: interrupted: %w", label(t.Name), ctx.Err())
		}
		res.State, res.Err = StateFailed, err
		return res
	}

	conn, release, err := t.Connect(ctx)
	if err != nil {
		return fail(fmt.Errorf("%s: connect: %w", label(t.Name), err))
	}
	s := &session{conn: conn}
	defer s.close(release)

	for attempt := 0; ; attempt++ {
		st, err := s.readState(ctx, t, r.opts)
		if err != nil {
			return fail(fmt.Errorf("%s: read migration state (schema %s): %w", label(t.Name), t.Schema, err))
		}
		if attempt == 0 {
			res.From = st.newest
		}
		res.To = max(res.To, st.newest)
		todo, refused, err := r.pending(t, st)
		if err != nil {
			failing = refused
			return fail(err)
		}
		if r.opts.DryRun {
			for _, m := range todo {
				res.Pending = append(res.Pending, m.Version)
			}
			if len(todo) == 0 {
				res.State = StateCurrent
				r.emit(Event{Target: t.Name, Kind: EventCurrent, Version: res.To, Duration: time.Since(start)}, true)
			} else {
				res.State = StatePending
				r.emit(Event{Target: t.Name, Kind: EventDone, Version: res.To, Duration: time.Since(start)}, true)
			}
			return res
		}
		retry := false
		for i, m := range todo {
			took, err := s.apply(ctx, t, m, r.opts)
			if errors.Is(err, errStateChanged) && attempt < maxStateRetries {
				retry = true
				break
			}
			if err != nil {
				failing = m
				for _, p := range todo[i:] {
					res.Pending = append(res.Pending, p.Version)
				}
				return fail(fmt.Errorf("%s: migration %d %s: %w", label(t.Name), m.Version, m.Name, err))
			}
			res.Applied = append(res.Applied, m.Version)
			res.To = max(res.To, m.Version)
			r.opts.Logger.LogAttrs(ctx, slog.LevelDebug, "migration applied", slog.String("target", t.Name),
				slog.Int64("version", m.Version), slog.String("name", m.Name), slog.Duration("took", took))
			r.emit(Event{Target: t.Name, Kind: EventApplied, Version: m.Version, Name: m.Name, Duration: took}, false)
		}
		if retry {
			continue
		}
		if len(res.Applied) == 0 {
			res.State = StateCurrent
			r.emit(Event{Target: t.Name, Kind: EventCurrent, Version: res.To, Duration: time.Since(start)}, true)
		} else {
			res.State = StateMigrated
			r.emit(Event{Target: t.Name, Kind: EventDone, Version: res.To, Duration: time.Since(start)}, true)
		}
		return res
	}
}

// session is a target's connection while Run uses it. When ctx ends while a
// query is in flight, pgx abandons it: it sends the server a cancel request
// (so a long migration or lock wait stops there too, releasing its locks)
// and closes the connection.
type session struct {
	conn *pgx.Conn
}

// close leaves the connection outside any transaction, or closes it, and
// releases it.
func (s *session) close(release func()) {
	defer release()
	if s.conn.IsClosed() || s.conn.PgConn().TxStatus() == 'I' {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.conn.PgConn().Exec(ctx, "ROLLBACK").ReadAll(); err != nil || s.conn.PgConn().TxStatus() != 'I' {
		_ = s.conn.Close(ctx)
	}
}

// exec runs one simple-protocol query string. After an error inside an
// explicit transaction it rolls back, so the next query starts clean.
func (s *session) exec(ctx context.Context, sql string) ([]*pgconn.Result, error) {
	results, err := s.conn.PgConn().Exec(ctx, sql).ReadAll()
	if err != nil && !s.conn.IsClosed() && s.conn.PgConn().TxStatus() != 'I' && ctx.Err() == nil {
		if _, rerr := s.conn.PgConn().Exec(ctx, "ROLLBACK").ReadAll(); rerr != nil {
			return results, fmt.Errorf("%w (and rolling back: %w)", err, rerr)
		}
	}
	return results, err
}

// readState reads the target's state: under its lock, creating the state
// table if missing (one round trip); in a dry run without either (one or
// two round trips).
func (s *session) readState(ctx context.Context, t *Target, o *Options) (state, error) {
	var q string
	if o.DryRun {
		results, err := s.exec(ctx, existsSQL(t))
		if err != nil {
			return state{}, err
		}
		if len(results) != 1 || len(results[0].Rows) != 1 || string(results[0].Rows[0][0]) != "t" {
			return state{rows: map[int64]applied{}}, nil
		}
		q = readSQL(t)
	} else {
		q = inspectSQL(t, o)
	}
	results, err := s.exec(ctx, q)
	if err != nil {
		return state{}, err
	}
	if len(results) == 0 {
		return state{}, errors.New("no result from the state query")
	}
	last := results[len(results)-1]
	st := state{rows: make(map[int64]applied, len(last.Rows))}
	for _, row := range last.Rows {
		if len(row) != 3 {
			return state{}, fmt.Errorf("state query returned %d columns, want 3", len(row))
		}
		v, err := strconv.ParseInt(string(row[0]), 10, 64)
		if err != nil {
			return state{}, fmt.Errorf("state table version %q: %w", row[0], err)
		}
		st.rows[v] = applied{name: string(row[1]), checksum: string(row[2])}
		st.newest = max(st.newest, v)
	}
	return st, nil
}

// apply runs one migration in its own transaction (one round trip).
func (s *session) apply(ctx context.Context, t *Target, m *Migration, o *Options) (time.Duration, error) {
	start := time.Now()
	results, err := s.exec(ctx, applySQL(t, m, o))
	took := time.Since(start)
	if err != nil {
		if pe, ok := errors.AsType[*pgconn.PgError](err); ok && pe.Code == stateChangedCode {
			return took, errStateChanged
		}
		return took, err
	}
	n := len(results)
	if n < 2 || results[n-2].CommandTag.String() != "INSERT 0 1" || results[n-1].CommandTag.String() != "COMMIT" {
		return took, errors.New("the migration ended the engine's transaction (COMMIT or ROLLBACK in its SQL?); it was not recorded and may be partly applied: migrations must not control transactions")
	}
	return took, nil
}

// validText reports whether s is valid UTF-8 without NUL bytes.
func validText(s string) bool {
	return strings.IndexByte(s, 0) < 0 && utf8.ValidString(s)
}
