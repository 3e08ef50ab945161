// Package journal is the agent's durable record of plans: every plan it
// accepted or refused, the state of each step, and which version of each
// record the control plane has acknowledged. It lives in one bbolt file in
// the agent's state directory (mode 0600), and every change is one
// transaction synced to disk before it returns, so after a crash or restart
// the agent resumes unfinished plans where they stood and reports again
// whatever the control plane has not acknowledged.
//
// Every change to a plan record (Accept, Refuse, Update) bumps its Version;
// Reported is the highest Version the control plane acknowledged
// (MarkReported). Subscribe signals after each such change.
//
// The journal also keeps the agent's own audit trail (Audit), hash-chained
// with internal/auditlog, in the same file.
//
// Only one process may open a journal at a time (bbolt's file lock); a
// second one fails with ErrLocked after Options.Timeout.
//
// Only agent packages import journal.
package journal
