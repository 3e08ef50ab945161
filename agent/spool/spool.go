package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/securefile"
)

// Errors the spool returns wrapped; match them with errors.Is.
var (
	// ErrFull: AddUsage would take usage beyond Options.MaxBytes even with
	// every health snapshot dropped; nothing was stored. The caller keeps
	// the records and reports back-pressure until acknowledgements free
	// space. AddHealth returns it when a snapshot cannot fit at all.
	ErrFull = errors.New("spool is full")
	// ErrLocked: another process holds the spool file open.
	ErrLocked = errors.New("spool is locked by another process")
	// ErrInvalid: a usage record or health snapshot failed validation;
	// nothing was stored. The message names the record index and field.
	ErrInvalid = errors.New("invalid")
)

// Defaults and limits.
const (
	// FileName is the spool's file in the agent's state directory.
	FileName               = "spool.db"
	DefaultMaxBytes        = 64 << 20
	DefaultMaxBatchRecords = 500
	DefaultTimeout         = time.Second
	// MaxBatchRecordsLimit is the most Options.MaxBatchRecords may be: the
	// control plane refuses larger batches.
	MaxBatchRecordsLimit = 10000
	// MaxHealthSnapshots is how many health snapshots the spool keeps; the
	// oldest beyond it are dropped.
	MaxHealthSnapshots = 1000
	// Bounds of a health snapshot.
	MaxComponents       = 1000
	MaxComponentNameLen = 256
	MaxStatusLen        = 64
	MaxMessageLen       = 4096
	MaxDriftDetailLen   = 1024
	// MaxMeterLen is the longest meter name (the pattern ^[a-z][a-z0-9_.]{0,99}$).
	MaxMeterLen = 100
)

// formatVersion is the spool's on-disk layout version (meta "format").
const formatVersion = 1

// Options configure Open. Zero values mean the defaults; negative ones are
// refused.
type Options struct {
	// StartAfter is the sequence a NEW spool file starts after (its first
	// batch is StartAfter+1); an existing file keeps its own. The control
	// plane ingests each (agent, sequence) once, so an agent whose spool
	// was lost must not start again at 1: the agent passes the time in
	// microseconds, which grows faster than it hands out batches.
	StartAfter uint64
	// MaxBytes bounds the spooled data (Stats.Bytes); default
	// DefaultMaxBytes (64 MiB).
	MaxBytes int64
	// MaxBatchRecords is the most records in one batch; default
	// DefaultMaxBatchRecords (500), at most MaxBatchRecordsLimit.
	MaxBatchRecords int
	// Timeout is how long Open waits for the file lock; default 1s. Open
	// fails with ErrLocked when another process (another attache-agent on
	// the same state directory) holds it that long.
	Timeout time.Duration
	// Now returns the current time (a batch's CreatedAt); nil means
	// time.Now.
	Now func() time.Time
}

// Record is one usage sample.
type Record struct {
	Tenant string
	Meter  string
	Value  float64
	At     time.Time
}

// Batch is a spooled batch of usage records under its sequence number. Its
// Records and CreatedAt never change once written; times are UTC without a
// monotonic reading, exactly as Pending returns them.
type Batch struct {
	Sequence  uint64
	Records   []Record
	CreatedAt time.Time
	// Attempts counts the times Pending handed the batch out, this time
	// included (zero in what AddUsage returns). It is the only thing about
	// a batch that changes, and it is kept apart from the batch's content.
	Attempts int
}

// Health is a snapshot of component health.
type Health struct {
	At         time.Time
	Components []Component
}

// Component is the health of one component; Tenant is set when the
// component serves one tenant. Drift is set when what the last applied plan
// put in place differs from what is live; DriftDetail says what, for humans.
type Component struct {
	Name, Status, Message, Tenant string
	Drift                         bool
	DriftDetail                   string
}

// Stats describes what the spool holds.
type Stats struct {
	// Bytes is the spooled data MaxBytes bounds (see the package doc).
	Bytes           int64
	UsageBatches    int
	UsageRecords    int
	HealthSnapshots int
	// OldestUsage is the CreatedAt of the oldest unacknowledged batch;
	// zero when there is none.
	OldestUsage time.Time
	// LastSequence is the last sequence handed out (persisted; it never
	// decreases, not even when every batch is acknowledged).
	LastSequence uint64
	// DroppedHealth counts health snapshots dropped to make room, over the
	// spool's lifetime (persisted).
	DroppedHealth uint64
	// Full: the last AddUsage was refused with ErrFull; cleared by the next
	// AddUsage that stores.
	Full bool
}

// Buckets and meta keys.
var (
	bucketUsage    = []byte("usage")    // sequence (8 bytes big-endian) → encoded batch (encode.go)
	bucketAttempts = []byte("attempts") // sequence → attempts (4 bytes big-endian)
	bucketHealth   = []byte("health")   // counter (8 bytes big-endian) → JSON snapshot
	bucketMeta     = []byte("meta")
	bucketTotals   = []byte("totals") // tenant "\x00" meter → float64 bits (8 bytes big-endian)

	allBuckets = [][]byte{bucketUsage, bucketAttempts, bucketHealth, bucketMeta, bucketTotals}

	keyFormat        = []byte("format")         // formatVersion, 8 bytes big-endian
	keyLastSequence  = []byte("last_sequence")  // 8 bytes big-endian
	keyDroppedHealth = []byte("dropped_health") // 8 bytes big-endian
)

// Size accounting: what one stored item adds to Stats.Bytes.
const (
	keyLen        = 8
	attemptsLen   = 4
	batchOverhead = keyLen + keyLen + attemptsLen // usage key, attempts key and value
)

func batchCharge(v []byte) int64  { return int64(batchOverhead + len(v)) }
func healthCharge(v []byte) int64 { return int64(keyLen + len(v)) }

// fillPercent: keys are appended in order, so pages can be filled.
const fillPercent = 0.95

// acct is the spool's accounting, kept in step with the file: writers
// change it only after their transaction committed.
type acct struct {
	usageBytes, healthBytes int64
	batches, records        int
	health                  int
	oldest                  int64 // CreatedAt (Unix ns) of the first batch, if batches > 0
	last                    uint64
	dropped                 uint64
	full                    bool
}

// Spool is the agent's durable usage and health spool. It is safe for
// concurrent use.
type Spool struct {
	db        *bolt.DB
	now       func() time.Time
	maxBytes  int64
	maxBatch  int
	maxHealth int

	// wmu serializes writers (bbolt does anyway) so that each sees the
	// accounting its transaction starts from; a is changed only while
	// holding both wmu and mu, so a writer may read it under wmu alone.
	wmu sync.Mutex
	mu  sync.Mutex
	a   acct
}

// Open opens or creates the spool at path with mode 0600. An existing file
// that group or others may access is refused (matching
// securefile.ErrTooOpen). Writes are synced to disk when each transaction
// commits. Open reads every batch once to check it and rebuild the
// accounting.
func Open(path string, opts Options) (*Spool, error) {
	switch {
	case opts.MaxBytes < 0:
		return nil, fmt.Errorf("spool options: MaxBytes is %d; want a positive size or 0 for %d", opts.MaxBytes, DefaultMaxBytes)
	case opts.MaxBatchRecords < 0 || opts.MaxBatchRecords > MaxBatchRecordsLimit:
		return nil, fmt.Errorf("spool options: MaxBatchRecords is %d; want 1 to %d or 0 for %d", opts.MaxBatchRecords, MaxBatchRecordsLimit, DefaultMaxBatchRecords)
	case opts.Timeout < 0:
		return nil, fmt.Errorf("spool options: Timeout is %s; want a positive duration or 0 for %s", opts.Timeout, DefaultTimeout)
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxBatchRecords == 0 {
		opts.MaxBatchRecords = DefaultMaxBatchRecords
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("open spool: %w", err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("open spool: %s is not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("open spool: %s is accessible by group or others (mode %04o): %w; run chmod 600 %s",
			path, fi.Mode().Perm(), securefile.ErrTooOpen, path)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.Timeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open spool %s: %w: still locked after %s; another attache-agent seems to use this state directory", path, ErrLocked, opts.Timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	s := &Spool{
		db:        db,
		now:       opts.Now,
		maxBytes:  opts.MaxBytes,
		maxBatch:  opts.MaxBatchRecords,
		maxHealth: MaxHealthSnapshots,
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keyFormat); {
		case v == nil:
			if err := meta.Put(keyFormat, u64(formatVersion)); err != nil {
				return err
			}
			if opts.StartAfter > 0 {
				if err := meta.Put(keyLastSequence, u64(opts.StartAfter)); err != nil {
					return err
				}
			}
		case len(v) != 8:
			return errors.New("format marker is corrupt")
		case binary.BigEndian.Uint64(v) != formatVersion:
			return fmt.Errorf("format %d, this agent reads format %d (was it written by a newer agent?)", binary.BigEndian.Uint64(v), formatVersion)
		}
		var err error
		s.a, err = scan(tx)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	return s, nil
}

// scan rebuilds the accounting from the file, checking every batch, and
// repairs what a past version might have left inconsistent: a missing
// attempts entry, an orphaned one, a high-water mark below a stored batch.
func scan(tx *bolt.Tx) (acct, error) {
	var a acct
	meta, usage, att, health := tx.Bucket(bucketMeta), tx.Bucket(bucketUsage), tx.Bucket(bucketAttempts), tx.Bucket(bucketHealth)
	var err error
	if a.last, err = getU64(meta, keyLastSequence); err != nil {
		return a, err
	}
	if a.dropped, err = getU64(meta, keyDroppedHealth); err != nil {
		return a, err
	}
	var missing [][]byte
	high := a.last
	err = usage.ForEach(func(k, v []byte) error {
		if len(k) != keyLen {
			return fmt.Errorf("usage batch key %x is corrupt", k)
		}
		seq := binary.BigEndian.Uint64(k)
		h, _, err := parseHeader(v)
		if err != nil {
			return fmt.Errorf("usage batch %d: %w", seq, err)
		}
		if a.batches == 0 {
			a.oldest = h.created
		}
		a.batches++
		a.records += h.records
		a.usageBytes += batchCharge(v)
		high = max(high, seq)
		if len(att.Get(k)) != attemptsLen {
			missing = append(missing, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return a, err
	}
	for _, k := range missing {
		if err := att.Put(k, make([]byte, attemptsLen)); err != nil {
			return a, err
		}
	}
	var orphans [][]byte
	if err := att.ForEach(func(k, _ []byte) error {
		if usage.Get(k) == nil {
			orphans = append(orphans, bytes.Clone(k))
		}
		return nil
	}); err != nil {
		return a, err
	}
	for _, k := range orphans {
		if err := att.Delete(k); err != nil {
			return a, err
		}
	}
	if high > a.last {
		a.last = high
		if err := meta.Put(keyLastSequence, u64(high)); err != nil {
			return a, err
		}
	}
	err = health.ForEach(func(_, v []byte) error {
		a.health++
		a.healthBytes += healthCharge(v)
		return nil
	})
	return a, err
}

// Close closes the spool file, releasing its lock.
func (s *Spool) Close() error { return s.db.Close() }

// errNoop makes update roll back a transaction that changed nothing.
var errNoop = errors.New("nothing to change")

// update runs fn in a write transaction on a copy of the accounting, which
// replaces the spool's when the transaction commits.
func (s *Spool) update(fn func(tx *bolt.Tx, a *acct) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	a := s.a
	err := s.db.Update(func(tx *bolt.Tx) error { return fn(tx, &a) })
	if errors.Is(err, errNoop) {
		return nil
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.a = a
	s.mu.Unlock()
	return nil
}

// AddUsage validates recs and stores them, in order, as one or more
// batches of at most Options.MaxBatchRecords records under the next
// sequence numbers, in one durable transaction, and returns the batches
// (exactly as Pending will return them, Attempts aside). An empty recs
// stores nothing and consumes no sequence.
//
// Validation (ErrInvalid, naming the record's index and field): tenant a
// lowercase DNS label, meter ^[a-z][a-z0-9_.]{0,99}$, a finite value, a
// non-zero time between the years 1678 and 2262.
//
// When the batches do not fit in MaxBytes, the oldest health snapshots are
// dropped first; if usage alone would still exceed it, nothing is stored
// (no health dropped, no sequence used) and ErrFull is returned, with the
// sizes in the message.
func (s *Spool) AddUsage(recs []Record) ([]Batch, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	var v validator
	for i := range recs {
		if err := v.check(&recs[i]); err != nil {
			return nil, fmt.Errorf("add usage: record %d: %w", i, err)
		}
	}
	created := time.Unix(0, s.now().UnixNano()).UTC()
	n := (len(recs) + s.maxBatch - 1) / s.maxBatch
	out := make([]Batch, 0, n)
	vals := make([][]byte, 0, n)
	norm := make([]Record, len(recs))
	var need int64
	for i, r := range recs {
		norm[i] = Record{Tenant: r.Tenant, Meter: r.Meter, Value: r.Value, At: time.Unix(0, r.At.UnixNano()).UTC()}
	}
	for start := 0; start < len(recs); start += s.maxBatch {
		chunk := norm[start:min(start+s.maxBatch, len(recs)):min(start+s.maxBatch, len(recs))]
		val := encodeBatch(created.UnixNano(), chunk)
		vals = append(vals, val)
		need += batchCharge(val)
		out = append(out, Batch{Records: chunk, CreatedAt: created})
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	a := s.a
	err := s.db.Update(func(tx *bolt.Tx) error {
		if a.usageBytes+need > s.maxBytes {
			return fmt.Errorf("%w: %d records in %d batches need %d bytes; %d bytes of usage are spooled and MaxBytes is %d (acknowledgements free space)",
				ErrFull, len(recs), len(vals), need, a.usageBytes, s.maxBytes)
		}
		if a.last > math.MaxUint64-uint64(len(vals)) {
			return errors.New("batch sequence numbers are exhausted")
		}
		if err := s.dropHealth(tx, &a, need, s.maxHealth); err != nil {
			return err
		}
		usage, att := tx.Bucket(bucketUsage), tx.Bucket(bucketAttempts)
		usage.FillPercent, att.FillPercent = fillPercent, fillPercent
		for i, val := range vals {
			a.last++
			k := u64(a.last)
			if err := usage.Put(k, val); err != nil {
				return err
			}
			if err := att.Put(k, make([]byte, attemptsLen)); err != nil {
				return err
			}
			out[i].Sequence = a.last
		}
		if err := tx.Bucket(bucketMeta).Put(keyLastSequence, u64(a.last)); err != nil {
			return err
		}
		if err := addTotals(tx.Bucket(bucketTotals), norm); err != nil {
			return err
		}
		if a.batches == 0 {
			a.oldest = created.UnixNano()
		}
		a.batches += len(vals)
		a.records += len(recs)
		a.usageBytes += need
		return nil
	})
	s.mu.Lock()
	if err == nil {
		a.full = false
		s.a = a
	} else if errors.Is(err, ErrFull) {
		s.a.full = true
	}
	s.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("add usage: %w", err)
	}
	return out, nil
}

// dropHealth drops the oldest health snapshots while the spool plus extra
// bytes exceeds MaxBytes or more than keep snapshots are stored, and counts
// them in DroppedHealth.
func (s *Spool) dropHealth(tx *bolt.Tx, a *acct, extra int64, keep int) error {
	over := func() bool {
		return a.health > 0 && (a.usageBytes+a.healthBytes+extra > s.maxBytes || a.health > keep)
	}
	if !over() {
		return nil
	}
	health := tx.Bucket(bucketHealth)
	var victims [][]byte
	c := health.Cursor()
	for k, v := c.First(); k != nil && over(); k, v = c.Next() {
		victims = append(victims, bytes.Clone(k))
		a.health--
		a.healthBytes -= healthCharge(v)
		a.dropped++
	}
	for _, k := range victims {
		if err := health.Delete(k); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketMeta).Put(keyDroppedHealth, u64(a.dropped))
}

// Pending returns up to limit (zero or less: all) unacknowledged batches
// with Sequence > after, in sequence order. It is meant for the sender: each
// batch it returns has its Attempts counted up, durably, in the same
// transaction.
func (s *Spool) Pending(after uint64, limit int) ([]Batch, error) {
	if after == math.MaxUint64 {
		return nil, nil
	}
	var out []Batch
	err := s.update(func(tx *bolt.Tx, _ *acct) error {
		out = out[:0]
		att := tx.Bucket(bucketAttempts)
		c := tx.Bucket(bucketUsage).Cursor()
		for k, v := c.Seek(u64(after + 1)); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			seq := binary.BigEndian.Uint64(k)
			b, err := decodeBatch(seq, v)
			if err != nil {
				return fmt.Errorf("usage batch %d: %w", seq, err)
			}
			var n uint32
			if av := att.Get(k); len(av) == attemptsLen {
				n = binary.BigEndian.Uint32(av)
			}
			if n < math.MaxUint32 {
				n++
			}
			if err := att.Put(u64(seq), binary.BigEndian.AppendUint32(nil, n)); err != nil {
				return err
			}
			b.Attempts = int(n)
			out = append(out, b)
		}
		if len(out) == 0 {
			return errNoop
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("spool pending: %w", err)
	}
	return out, nil
}

// Ack deletes batch seq, durably. It is idempotent: an unknown or already
// acknowledged seq is not an error.
func (s *Spool) Ack(seq uint64) error {
	err := s.update(func(tx *bolt.Tx, a *acct) error {
		usage := tx.Bucket(bucketUsage)
		k := u64(seq)
		v := usage.Get(k)
		if v == nil {
			return errNoop
		}
		h, _, err := parseHeader(v)
		if err != nil {
			return fmt.Errorf("usage batch %d: %w", seq, err)
		}
		size := batchCharge(v)
		if err := usage.Delete(k); err != nil {
			return err
		}
		if err := tx.Bucket(bucketAttempts).Delete(k); err != nil {
			return err
		}
		a.batches--
		a.records -= h.records
		a.usageBytes -= size
		if a.batches > 0 {
			_, fv := usage.Cursor().First()
			first, _, err := parseHeader(fv)
			if err != nil {
				return fmt.Errorf("oldest usage batch: %w", err)
			}
			a.oldest = first.created
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ack usage batch %d: %w", seq, err)
	}
	return nil
}

// AddHealth stores a health snapshot, durably. To make room it drops the
// oldest snapshots (counted in Stats.DroppedHealth): when the spool would
// exceed MaxBytes and beyond MaxHealthSnapshots. A snapshot that cannot fit
// even with every other one dropped is refused with ErrFull. Validation
// (ErrInvalid): a non-zero At; at most MaxComponents components, each with
// a name and a status, the message at most MaxMessageLen bytes and the
// drift detail at most MaxDriftDetailLen, all valid UTF-8, and the tenant
// empty or a DNS label.
func (s *Spool) AddHealth(h Health) error {
	if err := checkHealth(h); err != nil {
		return fmt.Errorf("add health: %w", err)
	}
	val, err := encodeHealth(h)
	if err != nil {
		return fmt.Errorf("add health: %w: %w", ErrInvalid, err)
	}
	size := healthCharge(val)
	err = s.update(func(tx *bolt.Tx, a *acct) error {
		if a.usageBytes+size > s.maxBytes {
			return fmt.Errorf("%w: the snapshot needs %d bytes; %d bytes of usage are spooled and MaxBytes is %d", ErrFull, size, a.usageBytes, s.maxBytes)
		}
		if err := s.dropHealth(tx, a, size, s.maxHealth-1); err != nil {
			return err
		}
		health := tx.Bucket(bucketHealth)
		health.FillPercent = fillPercent
		next := uint64(1)
		if k, _ := health.Cursor().Last(); k != nil {
			next = binary.BigEndian.Uint64(k) + 1
		}
		if err := health.Put(u64(next), val); err != nil {
			return err
		}
		a.health++
		a.healthBytes += size
		return nil
	})
	if err != nil {
		return fmt.Errorf("add health: %w", err)
	}
	return nil
}

// TakeHealth removes and returns up to limit (zero or less: all) health
// snapshots, oldest first, in one durable transaction. A snapshot that
// cannot be decoded is dropped (counted in DroppedHealth) rather than
// blocking the ones after it.
func (s *Spool) TakeHealth(limit int) ([]Health, error) {
	var out []Health
	err := s.update(func(tx *bolt.Tx, a *acct) error {
		out = out[:0]
		health := tx.Bucket(bucketHealth)
		var taken [][]byte
		c := health.Cursor()
		for k, v := c.First(); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			taken = append(taken, bytes.Clone(k))
			a.health--
			a.healthBytes -= healthCharge(v)
			h, err := decodeHealth(v)
			if err != nil {
				a.dropped++
				continue
			}
			out = append(out, h)
		}
		if len(taken) == 0 {
			return errNoop
		}
		for _, k := range taken {
			if err := health.Delete(k); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keyDroppedHealth, u64(a.dropped))
	})
	if err != nil {
		return nil, fmt.Errorf("take health: %w", err)
	}
	return out, nil
}

// Total is the sum of every usage value ever spooled for one tenant and
// meter (acknowledged or not): what this agent generated.
type Total struct {
	Tenant, Meter string
	Sum           float64
	Records       uint64
}

// addTotals folds recs into the totals bucket.
func addTotals(b *bolt.Bucket, recs []Record) error {
	type agg struct {
		sum float64
		n   uint64
	}
	sums := map[string]*agg{}
	for _, r := range recs {
		k := r.Tenant + "\x00" + r.Meter
		a := sums[k]
		if a == nil {
			a = &agg{}
			sums[k] = a
		}
		a.sum += r.Value
		a.n++
	}
	for k, a := range sums {
		sum, n := a.sum, a.n
		if v := b.Get([]byte(k)); len(v) == 16 {
			sum += math.Float64frombits(binary.BigEndian.Uint64(v[:8]))
			n += binary.BigEndian.Uint64(v[8:])
		}
		val := make([]byte, 16)
		binary.BigEndian.PutUint64(val[:8], math.Float64bits(sum))
		binary.BigEndian.PutUint64(val[8:], n)
		if err := b.Put([]byte(k), val); err != nil {
			return err
		}
	}
	return nil
}

// Totals returns, per tenant and meter, the sum of every usage value ever
// spooled (sorted by tenant, then meter). The control plane's totals for
// this agent must equal them once every batch is acknowledged.
func (s *Spool) Totals() ([]Total, error) {
	var out []Total
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTotals).ForEach(func(k, v []byte) error {
			tenant, meter, ok := strings.Cut(string(k), "\x00")
			if !ok || len(v) != 16 {
				return fmt.Errorf("usage total %q is corrupt", k)
			}
			out = append(out, Total{Tenant: tenant, Meter: meter,
				Sum: math.Float64frombits(binary.BigEndian.Uint64(v[:8])), Records: binary.BigEndian.Uint64(v[8:])})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("usage totals: %w", err)
	}
	return out, nil
}

// Stats returns what the spool holds. It does not touch the file.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	a := s.a
	s.mu.Unlock()
	st := Stats{
		Bytes:           a.usageBytes + a.healthBytes,
		UsageBatches:    a.batches,
		UsageRecords:    a.records,
		HealthSnapshots: a.health,
		LastSequence:    a.last,
		DroppedHealth:   a.dropped,
		Full:            a.full,
	}
	if a.batches > 0 {
		st.OldestUsage = time.Unix(0, a.oldest).UTC()
	}
	return st
}

// validator checks usage records, remembering the last valid tenant and
// meter: a call's records mostly share them, and this keeps validation
// cheap next to the transaction.
type validator struct{ tenant, meter string }

func (v *validator) check(r *Record) error {
	if r.Tenant != v.tenant || v.tenant == "" {
		if !identity.ValidName(r.Tenant) {
			return fmt.Errorf("%w: tenant %.80q is not a lowercase DNS label", ErrInvalid, r.Tenant)
		}
		v.tenant = r.Tenant
	}
	if r.Meter != v.meter || v.meter == "" {
		if !ValidMeter(r.Meter) {
			return fmt.Errorf("%w: meter %.120q does not match ^[a-z][a-z0-9_.]{0,99}$", ErrInvalid, r.Meter)
		}
		v.meter = r.Meter
	}
	switch {
	case math.IsNaN(r.Value) || math.IsInf(r.Value, 0):
		return fmt.Errorf("%w: value %v is not finite", ErrInvalid, r.Value)
	case r.At.IsZero():
		return fmt.Errorf("%w: at is the zero time", ErrInvalid)
	case !time.Unix(0, r.At.UnixNano()).Equal(r.At):
		return fmt.Errorf("%w: at %s is outside the years 1678 to 2262", ErrInvalid, r.At.UTC().Format(time.RFC3339))
	}
	return nil
}

// ValidMeter reports whether m matches ^[a-z][a-z0-9_.]{0,99}$.
func ValidMeter(m string) bool {
	if len(m) == 0 || len(m) > MaxMeterLen || m[0] < 'a' || m[0] > 'z' {
		return false
	}
	for i := 1; i < len(m); i++ {
		c := m[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func checkHealth(h Health) error {
	if h.At.IsZero() {
		return fmt.Errorf("%w: at is the zero time", ErrInvalid)
	}
	if y := h.At.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("%w: at %s is outside the years 1 to 9999", ErrInvalid, h.At.UTC().Format(time.RFC3339))
	}
	if len(h.Components) > MaxComponents {
		return fmt.Errorf("%w: %d components, limit %d", ErrInvalid, len(h.Components), MaxComponents)
	}
	for i, c := range h.Components {
		for _, f := range []struct {
			field, value string
			required     bool
			limit        int
		}{
			{"name", c.Name, true, MaxComponentNameLen},
			{"status", c.Status, true, MaxStatusLen},
			{"message", c.Message, false, MaxMessageLen},
			{"drift detail", c.DriftDetail, false, MaxDriftDetailLen},
		} {
			switch {
			case f.required && f.value == "":
				return fmt.Errorf("component %d: %w: %s is empty", i, ErrInvalid, f.field)
			case len(f.value) > f.limit:
				return fmt.Errorf("component %d: %w: %s is %d bytes, limit %d", i, ErrInvalid, f.field, len(f.value), f.limit)
			case !utf8.ValidString(f.value):
				return fmt.Errorf("component %d: %w: %s is not valid UTF-8", i, ErrInvalid, f.field)
			}
		}
		if c.Tenant != "" && !identity.ValidName(c.Tenant) {
			return fmt.Errorf("component %d: %w: tenant %.80q is not a lowercase DNS label", i, ErrInvalid, c.Tenant)
		}
	}
	return nil
}

func getU64(b *bolt.Bucket, key []byte) (uint64, error) {
	switch v := b.Get(key); len(v) {
	case 0:
		return 0, nil
	case 8:
		return binary.BigEndian.Uint64(v), nil
	default:
		return 0, fmt.Errorf("spool meta %s is corrupt", key)
	}
}

func u64(n uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), n)
}
