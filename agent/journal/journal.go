package journal

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"attache.dev/attache/internal/auditlog"
	"attache.dev/attache/internal/securefile"
)

// Errors the journal returns wrapped; match them with errors.Is.
var (
	// ErrNotFound: no plan with that ID is journaled.
	ErrNotFound = errors.New("plan not in the journal")
	// ErrExists: a plan with that ID is already journaled (Accept and
	// Refuse return the existing record with it).
	ErrExists = errors.New("plan already in the journal")
	// ErrReplay: Accept of a plan whose sequence is not greater than the
	// last accepted one.
	ErrReplay = errors.New("plan sequence is not greater than the last accepted")
	// ErrLocked: another process holds the journal file open.
	ErrLocked = errors.New("journal is locked by another process")
)

// Defaults for Options.
const (
	DefaultTimeout     = time.Second
	DefaultMaxRefusals = 1000
)

// MaxIDLen bounds a journaled plan ID (plan IDs are UUIDs; a refused offer
// may name anything).
const MaxIDLen = 256

// formatVersion is the journal's on-disk layout version (meta "format").
const formatVersion = 1

// Options configure Open.
type Options struct {
	// Timeout is how long Open waits for the file lock; zero or less means
	// DefaultTimeout. It fails with ErrLocked when another process (another
	// attache-agent on the same state directory) holds it that long.
	Timeout time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// MaxRefusals is how many refused plans the journal keeps; the oldest
	// beyond it are deleted. Zero or less means DefaultMaxRefusals.
	MaxRefusals int
	// ReadOnly opens an existing journal for reading only (the agent's
	// `plans` and `audit` commands): the file is neither created nor
	// written, and every method that changes the journal fails. It takes a
	// shared file lock, which still conflicts with a running agent's
	// exclusive one, so it fails with ErrLocked while the agent runs, and
	// an agent starting meanwhile waits for it (up to its own Timeout).
	ReadOnly bool
}

// Buckets and meta keys. Every index is maintained by putRecord in the
// transaction that writes the record.
var (
	bucketPlans      = []byte("plans")      // id → JSON PlanRecord
	bucketUnfinished = []byte("unfinished") // sequence (8 bytes big-endian) → id: accepted or running plans
	bucketUnreported = []byte("unreported") // id → "": plans with Reported < Version
	bucketReceived   = []byte("received")   // receivedKey → id: every plan, for List
	bucketRefusals   = []byte("refusals")   // receivedKey → id: refused plans, oldest pruned first
	bucketMeta       = []byte("meta")
	bucketAudit      = []byte("audit") // sequence (8 bytes big-endian) → JSON auditlog.Record

	allBuckets = [][]byte{bucketPlans, bucketUnfinished, bucketUnreported, bucketReceived, bucketRefusals, bucketMeta, bucketAudit}

	keyFormat       = []byte("format")        // formatVersion, 8 bytes big-endian
	keyLastSequence = []byte("last_sequence") // 8 bytes big-endian
	keyAuditHead    = []byte("audit_head")    // sequence (8 bytes big-endian) followed by the hash
)

// Journal is the agent's plan journal. It is safe for concurrent use.
type Journal struct {
	db          *bolt.DB
	now         func() time.Time
	maxRefusals int

	mu   sync.Mutex
	subs []chan struct{}
}

// Open opens or creates the journal at path with mode 0600. An existing
// file that group or others may access is refused (matching
// securefile.ErrTooOpen). Writes are synced to disk when each transaction
// commits.
func Open(path string, opts Options) (*Journal, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxRefusals <= 0 {
		opts.MaxRefusals = DefaultMaxRefusals
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("open journal: %w", err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("open journal: %s is not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("open journal: %s is accessible by group or others (mode %04o): %w; run chmod 600 %s",
			path, fi.Mode().Perm(), securefile.ErrTooOpen, path)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.Timeout, ReadOnly: opts.ReadOnly})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open journal %s: %w: still locked after %s; another attache-agent seems to use this state directory", path, ErrLocked, opts.Timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	if opts.ReadOnly {
		if err := db.View(checkLayout); err != nil {
			db.Close()
			return nil, fmt.Errorf("open journal %s: %w", path, err)
		}
		return &Journal{db: db, now: opts.Now, maxRefusals: opts.MaxRefusals}, nil
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
			return meta.Put(keyFormat, u64(formatVersion))
		case len(v) != 8:
			return errors.New("format marker is corrupt")
		case binary.BigEndian.Uint64(v) != formatVersion:
			return fmt.Errorf("format %d, this agent reads format %d (was it written by a newer agent?)", binary.BigEndian.Uint64(v), formatVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	return &Journal{db: db, now: opts.Now, maxRefusals: opts.MaxRefusals}, nil
}

// checkLayout checks, for a read-only Open, that the file holds every
// bucket in this agent's format.
func checkLayout(tx *bolt.Tx) error {
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("not a plan journal: no %s bucket", name)
		}
	}
	switch v := tx.Bucket(bucketMeta).Get(keyFormat); {
	case len(v) != 8:
		return errors.New("format marker is missing or corrupt")
	case binary.BigEndian.Uint64(v) != formatVersion:
		return fmt.Errorf("format %d, this agent reads format %d (was it written by a newer agent?)", binary.BigEndian.Uint64(v), formatVersion)
	}
	return nil
}

// Close closes the journal file, releasing its lock.
func (j *Journal) Close() error { return j.db.Close() }

// Subscribe returns a channel (capacity 1) that is signalled, without
// blocking, after every committed change that bumps a record's Version
// (Accept, Refuse, Update). Signals coalesce: a receiver learns that
// something changed, not what.
func (j *Journal) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	j.mu.Lock()
	j.subs = append(j.subs, ch)
	j.mu.Unlock()
	return ch
}

func (j *Journal) notify() {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, ch := range j.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// LastSequence is the sequence of the last accepted plan; 0 before the first.
func (j *Journal) LastSequence() (uint64, error) {
	var seq uint64
	err := j.db.View(func(tx *bolt.Tx) error {
		var err error
		seq, err = lastSequence(tx)
		return err
	})
	return seq, err
}

// Accept journals a verified plan: State accepted, Version 1, Reported 0,
// every step pending, ReceivedAt now if zero; and advances LastSequence to
// its sequence, in the same transaction. It fails with ErrExists (returning
// the existing record) if the ID is journaled, and with ErrReplay if the
// sequence is not greater than LastSequence.
func (j *Journal) Accept(rec PlanRecord) (PlanRecord, error) {
	if err := checkID(rec.ID); err != nil {
		return PlanRecord{}, fmt.Errorf("accept plan: %w", err)
	}
	rec.State = PlanAccepted
	rec.Version, rec.Reported = 1, 0
	if rec.ReceivedAt.IsZero() {
		rec.ReceivedAt = j.now()
	}
	rec.Steps = slices.Clone(rec.Steps)
	for i := range rec.Steps {
		rec.Steps[i].State = StepPending
	}
	var out PlanRecord
	err := j.db.Update(func(tx *bolt.Tx) error {
		old, ok, err := getRecord(tx, rec.ID)
		if err != nil {
			return err
		}
		if ok {
			out = old
			return fmt.Errorf("accept plan %s: %w", rec.ID, ErrExists)
		}
		last, err := lastSequence(tx)
		if err != nil {
			return err
		}
		if rec.Sequence <= last {
			return fmt.Errorf("accept plan %s: %w: sequence %d, last accepted %d", rec.ID, ErrReplay, rec.Sequence, last)
		}
		if out, err = putRecord(tx, nil, rec); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyLastSequence, u64(rec.Sequence))
	})
	if err != nil {
		return out, err
	}
	j.notify()
	return out, nil
}

// Refuse journals a refused plan: State refused, Version 1, Reported 0,
// ReceivedAt now if zero. It does not touch LastSequence. It fails with
// ErrExists (returning the existing record) if the ID is journaled. The
// oldest refused records beyond Options.MaxRefusals are deleted.
func (j *Journal) Refuse(rec PlanRecord) (PlanRecord, error) {
	if err := checkID(rec.ID); err != nil {
		return PlanRecord{}, fmt.Errorf("refuse plan: %w", err)
	}
	rec.State = PlanRefused
	rec.Version, rec.Reported = 1, 0
	if rec.ReceivedAt.IsZero() {
		rec.ReceivedAt = j.now()
	}
	var out PlanRecord
	err := j.db.Update(func(tx *bolt.Tx) error {
		old, ok, err := getRecord(tx, rec.ID)
		if err != nil {
			return err
		}
		if ok {
			out = old
			return fmt.Errorf("refuse plan %s: %w", rec.ID, ErrExists)
		}
		if out, err = putRecord(tx, nil, rec); err != nil {
			return err
		}
		return j.pruneRefusals(tx)
	})
	if err != nil {
		return out, err
	}
	j.notify()
	return out, nil
}

// pruneRefusals deletes the oldest refused records beyond maxRefusals.
func (j *Journal) pruneRefusals(tx *bolt.Tx) error {
	// Walk from the newest; everything past the first maxRefusals goes.
	// (Bucket.Stats does not see this transaction's writes.)
	var victims []string
	c := tx.Bucket(bucketRefusals).Cursor()
	n := 0
	for k, v := c.Last(); k != nil; k, v = c.Prev() {
		if n++; n > j.maxRefusals {
			victims = append(victims, string(v))
		}
	}
	for _, id := range victims {
		if err := deleteRecord(tx, id); err != nil {
			return err
		}
	}
	return nil
}

// Get returns the record of the plan, or ErrNotFound.
func (j *Journal) Get(id string) (PlanRecord, error) {
	var rec PlanRecord
	err := j.db.View(func(tx *bolt.Tx) error {
		r, ok, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("plan %.256s: %w", id, ErrNotFound)
		}
		rec = r
		return nil
	})
	return rec, err
}

// Update changes the record of a plan: fn edits a copy; if it returns an
// error, nothing is written and that error is returned as is. Otherwise
// Version is incremented and the record is written durably in one
// transaction. fn cannot change ID, Version or Reported. fn runs inside the
// write transaction, so it must be quick and must not call the Journal
// (that would deadlock). ErrNotFound if the plan is not journaled.
func (j *Journal) Update(id string, fn func(*PlanRecord) error) (PlanRecord, error) {
	var out PlanRecord
	err := j.db.Update(func(tx *bolt.Tx) error {
		old, ok, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("update plan %.256s: %w", id, ErrNotFound)
		}
		rec := old
		rec.Steps = slices.Clone(old.Steps)
		rec.Envelope = slices.Clone(old.Envelope)
		if err := fn(&rec); err != nil {
			return err
		}
		rec.ID, rec.Version, rec.Reported = old.ID, old.Version+1, old.Reported
		out, err = putRecord(tx, &old, rec)
		return err
	})
	if err != nil {
		return PlanRecord{}, err
	}
	j.notify()
	return out, nil
}

// Unfinished returns the accepted and running plans, by sequence.
func (j *Journal) Unfinished() ([]PlanRecord, error) {
	var out []PlanRecord
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUnfinished).ForEach(func(_, id []byte) error {
			rec, ok, err := getRecord(tx, string(id))
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("journal index names plan %s, which is missing", id)
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}

// Unreported returns the plans whose Reported < Version: accepted plans (in
// any state) by sequence, then refused ones by ReceivedAt.
func (j *Journal) Unreported() ([]PlanRecord, error) {
	var plans, refused []PlanRecord
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUnreported).ForEach(func(id, _ []byte) error {
			rec, ok, err := getRecord(tx, string(id))
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("journal index names plan %s, which is missing", id)
			}
			if rec.State == PlanRefused {
				refused = append(refused, rec)
			} else {
				plans = append(plans, rec)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(plans, func(a, b int) bool { return plans[a].Sequence < plans[b].Sequence })
	sort.SliceStable(refused, func(a, b int) bool {
		if !refused[a].ReceivedAt.Equal(refused[b].ReceivedAt) {
			return refused[a].ReceivedAt.Before(refused[b].ReceivedAt)
		}
		return refused[a].ID < refused[b].ID
	})
	return append(plans, refused...), nil
}

// MarkReported records that the control plane stored the plan's status as of
// version: Reported = max(Reported, version), never above Version. It does
// not bump Version. ErrNotFound if the plan is not journaled (a pruned
// refusal, say).
func (j *Journal) MarkReported(id string, version uint64) error {
	return j.db.Update(func(tx *bolt.Tx) error {
		old, ok, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("mark plan %.256s reported: %w", id, ErrNotFound)
		}
		rec := old
		rec.Reported = max(old.Reported, min(version, old.Version))
		if rec.Reported == old.Reported {
			return nil
		}
		_, err = putRecord(tx, &old, rec)
		return err
	})
}

// List returns up to limit plans, newest (by ReceivedAt) first; limit zero
// or less means all.
func (j *Journal) List(limit int) ([]PlanRecord, error) {
	var out []PlanRecord
	err := j.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketReceived).Cursor()
		for k, id := c.Last(); k != nil && (limit <= 0 || len(out) < limit); k, id = c.Prev() {
			rec, ok, err := getRecord(tx, string(id))
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("journal index names plan %s, which is missing", id)
			}
			out = append(out, rec)
		}
		return nil
	})
	return out, err
}

// Audit appends e to the agent's audit log, chained to the record before it
// (auditlog.Seal), and returns the sealed record. A zero e.Time means now.
func (j *Journal) Audit(e auditlog.Entry) (auditlog.Record, error) {
	if e.Time.IsZero() {
		e.Time = j.now()
	}
	e.Time = e.Time.UTC()
	var rec auditlog.Record
	err := j.db.Update(func(tx *bolt.Tx) error {
		seq, hash, err := auditHead(tx)
		if err != nil {
			return err
		}
		rec = auditlog.Seal(seq, hash, e)
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketAudit).Put(u64(rec.Seq), b); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyAuditHead, append(u64(rec.Seq), rec.Hash...))
	})
	if err != nil {
		return auditlog.Record{}, fmt.Errorf("journal audit %s: %w", e.Action, err)
	}
	return rec, nil
}

// AuditLog returns the agent's audit records in sequence order.
func (j *Journal) AuditLog() ([]auditlog.Record, error) {
	var out []auditlog.Record
	err := j.db.View(func(tx *bolt.Tx) error {
		var err error
		out, err = auditRecords(tx)
		return err
	})
	return out, err
}

// VerifyAudit recomputes the audit log's hash chain and checks it ends at
// the recorded head; it returns an error naming the first broken record
// (wrapping *auditlog.Problem), or nil.
func (j *Journal) VerifyAudit() error {
	var (
		records  []auditlog.Record
		headSeq  uint64
		headHash []byte
	)
	err := j.db.View(func(tx *bolt.Tx) error {
		var err error
		if records, err = auditRecords(tx); err != nil {
			return err
		}
		headSeq, headHash, err = auditHead(tx)
		return err
	})
	if err != nil {
		return fmt.Errorf("journal audit log: %w", err)
	}
	if headSeq == 0 && len(records) > 0 {
		return errors.New("journal audit log: its head is missing but it holds records")
	}
	if p := auditlog.Verify(records, 0, auditlog.GenesisHash, headSeq, headHash); p != nil {
		return fmt.Errorf("journal audit log: %w", p)
	}
	return nil
}

func auditRecords(tx *bolt.Tx) ([]auditlog.Record, error) {
	var out []auditlog.Record
	err := tx.Bucket(bucketAudit).ForEach(func(k, v []byte) error {
		var r auditlog.Record
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("audit record %x: %w", k, err)
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

// auditHead returns the sequence and hash of the last audit record, or
// (0, GenesisHash) when there is none.
func auditHead(tx *bolt.Tx) (uint64, []byte, error) {
	v := tx.Bucket(bucketMeta).Get(keyAuditHead)
	if v == nil {
		return 0, auditlog.GenesisHash, nil
	}
	if len(v) < 8 {
		return 0, nil, errors.New("audit head is corrupt")
	}
	return binary.BigEndian.Uint64(v[:8]), bytes.Clone(v[8:]), nil
}

func lastSequence(tx *bolt.Tx) (uint64, error) {
	v := tx.Bucket(bucketMeta).Get(keyLastSequence)
	switch len(v) {
	case 0:
		return 0, nil
	case 8:
		return binary.BigEndian.Uint64(v), nil
	default:
		return 0, errors.New("journal last_sequence is corrupt")
	}
}

func checkID(id string) error {
	switch {
	case id == "":
		return errors.New("plan has no id")
	case len(id) > MaxIDLen:
		return fmt.Errorf("plan id is %d bytes, limit %d", len(id), MaxIDLen)
	}
	return nil
}

func getRecord(tx *bolt.Tx, id string) (PlanRecord, bool, error) {
	v := tx.Bucket(bucketPlans).Get([]byte(id))
	if v == nil {
		return PlanRecord{}, false, nil
	}
	var rec PlanRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return PlanRecord{}, false, fmt.Errorf("journal record of plan %s: %w", id, err)
	}
	return rec, true, nil
}

// putRecord writes rec and keeps every index in step with it; old is the
// record it replaces (nil for a new one). It returns rec as stored.
func putRecord(tx *bolt.Tx, old *PlanRecord, rec PlanRecord) (PlanRecord, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return PlanRecord{}, fmt.Errorf("encode plan %s: %w", rec.ID, err)
	}
	if old != nil {
		if err := unindex(tx, *old); err != nil {
			return PlanRecord{}, err
		}
	}
	id := []byte(rec.ID)
	if err := tx.Bucket(bucketPlans).Put(id, b); err != nil {
		return PlanRecord{}, err
	}
	if unfinished(rec) {
		if err := tx.Bucket(bucketUnfinished).Put(u64(rec.Sequence), id); err != nil {
			return PlanRecord{}, err
		}
	}
	if rec.Reported < rec.Version {
		if err := tx.Bucket(bucketUnreported).Put(id, []byte{}); err != nil {
			return PlanRecord{}, err
		}
	}
	if err := tx.Bucket(bucketReceived).Put(receivedKey(rec), id); err != nil {
		return PlanRecord{}, err
	}
	if rec.State == PlanRefused {
		if err := tx.Bucket(bucketRefusals).Put(receivedKey(rec), id); err != nil {
			return PlanRecord{}, err
		}
	}
	// Return what a later Get returns (times as decoded from JSON).
	var stored PlanRecord
	if err := json.Unmarshal(b, &stored); err != nil {
		return PlanRecord{}, fmt.Errorf("decode plan %s: %w", rec.ID, err)
	}
	return stored, nil
}

// unindex removes rec from every index.
func unindex(tx *bolt.Tx, rec PlanRecord) error {
	id := []byte(rec.ID)
	if b := tx.Bucket(bucketUnfinished); bytes.Equal(b.Get(u64(rec.Sequence)), id) {
		if err := b.Delete(u64(rec.Sequence)); err != nil {
			return err
		}
	}
	if err := tx.Bucket(bucketUnreported).Delete(id); err != nil {
		return err
	}
	if err := tx.Bucket(bucketReceived).Delete(receivedKey(rec)); err != nil {
		return err
	}
	return tx.Bucket(bucketRefusals).Delete(receivedKey(rec))
}

// deleteRecord removes a plan and its index entries.
func deleteRecord(tx *bolt.Tx, id string) error {
	rec, ok, err := getRecord(tx, id)
	if err != nil || !ok {
		return err
	}
	if err := unindex(tx, rec); err != nil {
		return err
	}
	return tx.Bucket(bucketPlans).Delete([]byte(id))
}

func unfinished(rec PlanRecord) bool {
	return rec.State == PlanAccepted || rec.State == PlanRunning
}

// receivedKey orders records by ReceivedAt, then ID: 8 bytes big-endian of
// the Unix nanoseconds (clamped at 0), then the ID.
func receivedKey(rec PlanRecord) []byte {
	return append(u64(uint64(max(rec.ReceivedAt.UnixNano(), 0))), rec.ID...)
}

func u64(n uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), n)
}
