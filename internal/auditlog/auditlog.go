// Package auditlog defines the audit trail's records and its hash chain:
// every record commits to the one before it, so altering, deleting or
// reordering any record changes every hash after it. The store appends
// records; `attache audit verify` recomputes the chain with Verify.
//
// Imported by the control plane, the agent (for its local log) and the CLI.
package auditlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
)

// Outcome of an audited action.
const (
	OutcomeSuccess = "success"
	OutcomeDenied  = "denied"
	OutcomeFailure = "failure"
)

// Entry is what a caller records; the store adds sequence and hashes.
type Entry struct {
	Time      time.Time       `json:"time"`
	Actor     string          `json:"actor"`  // API token name/id, SPIFFE ID, or "system"
	Role      string          `json:"role"`   // admin, operator, auditor, agent, system, anonymous
	Action    string          `json:"action"` // e.g. "tenant.create", "agent.enroll"
	Tenant    string          `json:"tenant,omitempty"`
	Target    string          `json:"target,omitempty"`
	RequestID string          `json:"request_id,omitempty"`
	Outcome   string          `json:"outcome"`
	Source    string          `json:"source,omitempty"` // remote address
	Detail    json.RawMessage `json:"detail,omitempty"` // never secrets
}

// Record is an Entry at its place in the chain.
type Record struct {
	Seq      uint64 `json:"seq"`
	Entry           // embedded fields
	PrevHash []byte `json:"prev_hash"`
	Hash     []byte `json:"hash"`
}

// GenesisHash is the PrevHash of the first record.
var GenesisHash = make([]byte, sha256.Size)

// Hash computes a record's hash from its sequence, its entry and the previous
// hash. The encoding is length-prefixed so no two distinct records collide.
func Hash(seq uint64, e Entry, prev []byte) []byte {
	h := sha256.New()
	h.Write([]byte("attache-audit-v1\x00"))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], seq)
	h.Write(n[:])
	field := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field(prev)
	field([]byte(e.Time.UTC().Format(time.RFC3339Nano)))
	for _, s := range []string{e.Actor, e.Role, e.Action, e.Tenant, e.Target, e.RequestID, e.Outcome, e.Source} {
		field([]byte(s))
	}
	field(e.Detail)
	return h.Sum(nil)
}

// Seal computes PrevHash and Hash for the entry that follows (prevSeq, prev).
// Detail is stored compacted — the form any JSON encoder re-emits a raw
// message in — so a record still verifies after it has travelled as JSON.
func Seal(prevSeq uint64, prev []byte, e Entry) Record {
	if len(e.Detail) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, e.Detail); err == nil {
			e.Detail = buf.Bytes()
		}
	}
	seq := prevSeq + 1
	return Record{Seq: seq, Entry: e, PrevHash: prev, Hash: Hash(seq, e, prev)}
}

// Problem names the first record where the chain breaks.
type Problem struct {
	Seq    uint64 // the record (or the expected sequence) at fault
	Reason string
}

func (p *Problem) Error() string { return fmt.Sprintf("audit record %d: %s", p.Seq, p.Reason) }

// Verify recomputes the chain over records in sequence order, starting after
// (startSeq, startHash) — (0, GenesisHash) for the whole log — and, when
// headSeq > 0, checks the chain ends at (headSeq, headHash). It returns the
// first Problem found, or nil.
func Verify(records []Record, startSeq uint64, startHash []byte, headSeq uint64, headHash []byte) *Problem {
	seq, prev := startSeq, startHash
	for _, r := range records {
		switch {
		case r.Seq <= seq:
			return &Problem{Seq: r.Seq, Reason: fmt.Sprintf("out of order: follows record %d", seq)}
		case r.Seq != seq+1:
			return &Problem{Seq: seq + 1, Reason: fmt.Sprintf("missing: record %d follows record %d (deleted?)", r.Seq, seq)}
		case string(r.PrevHash) != string(prev):
			return &Problem{Seq: r.Seq, Reason: "previous-hash link broken (record deleted, reordered or altered before it)"}
		}
		if want := Hash(r.Seq, r.Entry, prev); string(want) != string(r.Hash) {
			return &Problem{Seq: r.Seq, Reason: "content does not match its hash (altered)"}
		}
		seq, prev = r.Seq, r.Hash
	}
	if headSeq > 0 {
		if seq < headSeq {
			return &Problem{Seq: seq + 1, Reason: fmt.Sprintf("missing: log ends at %d but its head is %d (truncated)", seq, headSeq)}
		}
		if seq == headSeq && string(prev) != string(headHash) {
			return &Problem{Seq: seq, Reason: "last record does not match the recorded head"}
		}
	}
	return nil
}
