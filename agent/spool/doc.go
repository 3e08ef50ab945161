// Package spool is the agent's durable outbox for usage and health: usage
// records are written here, under per-agent batch sequence numbers, BEFORE
// they are sent on the session, and a batch is deleted only when the control
// plane acknowledges its sequence (Ack). Health snapshots wait here too
// until the session takes them (TakeHealth).
//
// The spool is one bbolt file (spool.db in the agent's state directory, mode
// 0600). Every change is one transaction synced to disk before it returns,
// so after a crash (kill -9 included) the spool holds exactly the batches
// whose AddUsage returned and that were not acknowledged, each whole.
//
// Guarantees:
//
//   - Sequences never repeat: the last sequence handed out is persisted in
//     the transaction that stores the batches, so it survives the
//     acknowledgement of every batch and any restart.
//   - A batch's content never changes once written; Pending returns it
//     identical every time, so a re-send after a lost ack is a duplicate
//     the control plane recognises by its sequence.
//   - The spool's data is bounded by Options.MaxBytes. When new usage does
//     not fit, the oldest health snapshots are dropped first; if usage alone
//     would exceed the bound, nothing is stored and AddUsage fails with
//     ErrFull, so the caller reports back-pressure: usage is never dropped
//     silently.
//
// Size accounting: Stats.Bytes is the exact sum, over every spooled item, of
// its key and value as stored in bbolt (usage batch: 8-byte key + encoded
// batch + 12 bytes of attempt counter; health snapshot: 8-byte key + its
// encoding). It is what MaxBytes bounds. The file on disk is larger by
// bbolt's page overhead and does not shrink when data is acknowledged
// (bbolt reuses its free pages).
//
// Encoding: usage batches use a small binary format (see encode.go): a
// table of the batch's distinct (tenant, meter) pairs, then per record a
// pair index, the value (a varint when it is an integer below 2^53, else the
// 8 IEEE 754 bytes) and the time as a varint of nanoseconds from the batch's
// creation, all sealed by a CRC-32C. A typical record takes about 10 bytes,
// against about 47 as protobuf agentv1.UsageRecord (which repeats tenant,
// meter and a Timestamp message in every record), so the same MaxBytes holds
// about four times more usage; encoding needs no allocation per record, and
// times round-trip to the nanosecond and values bit for bit. The checksum
// keeps a damaged batch from ever being sent as something else. Health
// snapshots are rare and small, so they are stored as JSON.
//
// Only one process may open a spool at a time (bbolt's file lock); a second
// one fails with ErrLocked after Options.Timeout. A Spool is safe for
// concurrent use.
//
// Only agent packages import spool.
package spool
