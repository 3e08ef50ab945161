package spool

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash test re-executes this test binary as a child that appends to a
// spool in a loop until the parent kills it with SIGKILL.
const (
	envCrashPath  = "ATTACHE_SPOOL_CRASH_CHILD"
	envCrashFirst = "ATTACHE_SPOOL_CRASH_FIRST"
	crashBatch    = 7 // MaxBatchRecords in the crash test: most calls make several batches
)

func TestMain(m *testing.M) {
	if path := os.Getenv(envCrashPath); path != "" {
		crashChild(path)
		return
	}
	os.Exit(m.Run())
}

// crashCall is the content of the child's AddUsage call c: 1 to 40
// records, each naming its call and index in its value.
func crashCall(c int) []Record {
	n := 1 + (c*37)%40
	out := make([]Record, n)
	for i := range out {
		out[i] = Record{
			Tenant: "acme",
			Meter:  "requests.m" + strconv.Itoa(c%5),
			Value:  float64(c)*1000 + float64(i),
			At:     time.Unix(1_800_000_000+int64(c), int64(i)).UTC(),
		}
	}
	return out
}

// crashAcked says which calls the child acknowledges (every batch, in
// sequence order) right after adding them.
func crashAcked(c int) bool { return c%3 == 0 }

// crashChild appends calls first, first+1, ... forever. After each
// AddUsage returns it prints "add <call> <first seq> <last seq>", and after
// acknowledging an acked call's batches "ack <call>". Each line is one
// write to the pipe, so the parent reads whole lines of everything the child
// did before it died.
func crashChild(path string) {
	first, err := strconv.Atoi(os.Getenv(envCrashFirst))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad", envCrashFirst, err)
		os.Exit(2)
	}
	s, err := Open(path, Options{MaxBatchRecords: crashBatch, MaxBytes: 1 << 30, Timeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for c := first; ; c++ {
		bs, err := s.AddUsage(crashCall(c))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stdout, "add %d %d %d\n", c, bs[0].Sequence, bs[len(bs)-1].Sequence)
		if crashAcked(c) {
			for _, b := range bs {
				if err := s.Ack(b.Sequence); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
			}
			fmt.Fprintf(os.Stdout, "ack %d\n", c)
		}
	}
}

// childLog is what the parent learned from a child's output.
type childLog struct {
	added map[int][2]uint64 // call → first and last sequence
	acked map[int]bool
	order []int // calls in the order added
}

// runCrashChild starts a child on path, waits for its kill'th line and then
// for delay (so that the kill lands anywhere in what the child does next),
// kills it with SIGKILL and returns everything it reported.
func runCrashChild(t *testing.T, path string, first, kill int, delay time.Duration) childLog {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envCrashPath+"="+path, envCrashFirst+"="+strconv.Itoa(first))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()

	log := childLog{added: map[int][2]uint64{}, acked: map[int]bool{}}
	sc := bufio.NewScanner(out)
	lines := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 4 && f[0] == "add":
			c, _ := strconv.Atoi(f[1])
			lo, _ := strconv.ParseUint(f[2], 10, 64)
			hi, _ := strconv.ParseUint(f[3], 10, 64)
			log.added[c] = [2]uint64{lo, hi}
			log.order = append(log.order, c)
		case len(f) == 2 && f[0] == "ack":
			c, _ := strconv.Atoi(f[1])
			log.acked[c] = true
		default:
			t.Errorf("child printed %q", sc.Text())
		}
		if lines++; lines == kill {
			// SIGKILL: no deferred code, no Close; the kernel drops the
			// file lock. Lines already in the pipe are still read below.
			time.Sleep(delay)
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, not by SIGKILL; stderr:\n%s", err, stderr.String())
	}
	if lines < kill {
		t.Fatalf("child printed %d lines before it died, want at least %d; stderr:\n%s", lines, kill, stderr.String())
	}
	return log
}

// TestKill9 kills a process that appends and acknowledges in a loop with
// SIGKILL, several times over, and checks after each kill that the
// reopened spool holds:
//   - only whole batches: each exactly one chunk of its call's records,
//     every chunk of a call present unless the child was acknowledging it;
//   - every batch whose AddUsage returned (the child said so) and that was
//     not acknowledged, unchanged from earlier rounds;
//   - sequences strictly increasing with the calls, never reused: every
//     batch of a round is above the last sequence the previous round left,
//     though most of what it handed out was acknowledged and deleted.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)
	path := filepath.Join(t.TempDir(), "spool.db")

	var (
		prevLast    uint64
		kept        = map[uint64]Batch{} // unacked batches seen at the previous reopen
		inflight    int                  // calls committed but not reported before the kill
		partialAcks int                  // calls killed while being acknowledged
		killed      int
	)
	const rounds = 12
	for round := range rounds {
		first := (round + 1) * 1_000_000
		log := runCrashChild(t, path, first, 1+rng.IntN(100), time.Duration(rng.IntN(3000))*time.Microsecond)
		killed++

		s, err := Open(path, Options{MaxBatchRecords: crashBatch, MaxBytes: 1 << 30})
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		st := s.Stats()
		all, err := s.Pending(0, 0)
		if err != nil {
			t.Fatal(err)
		}

		// Batches of earlier rounds are still there, unchanged.
		now := map[uint64]Batch{}
		for _, b := range all {
			b.Attempts = 0
			now[b.Sequence] = b
		}
		for seq, b := range kept {
			if !reflect.DeepEqual(now[seq], b) {
				t.Fatalf("round %d: batch %d of an earlier round changed or vanished", round, seq)
			}
		}

		// Group this round's batches by call, checking each is whole.
		type chunk struct {
			seq uint64
			k   int
		}
		byCall := map[int][]chunk{}
		var prevSeq uint64
		prevCall := -1
		for _, b := range all {
			if b.Sequence <= prevSeq {
				t.Fatalf("round %d: sequence %d after %d", round, b.Sequence, prevSeq)
			}
			prevSeq = b.Sequence
			if _, old := kept[b.Sequence]; old {
				continue
			}
			if b.Sequence <= prevLast {
				t.Fatalf("round %d: batch %d reuses a sequence at or below %d, the last one before this round", round, b.Sequence, prevLast)
			}
			if len(b.Records) == 0 || len(b.Records) > crashBatch {
				t.Fatalf("round %d: batch %d has %d records", round, b.Sequence, len(b.Records))
			}
			v := int64(b.Records[0].Value)
			c, i0 := int(v/1000), int(v%1000)
			if c < first || i0%crashBatch != 0 {
				t.Fatalf("round %d: batch %d starts with record %d of call %d", round, b.Sequence, i0, c)
			}
			k := i0 / crashBatch
			want := crashCall(c)[i0:min(i0+crashBatch, len(crashCall(c)))]
			if !reflect.DeepEqual(b.Records, want) {
				t.Fatalf("round %d: batch %d is not chunk %d of call %d:\n got %+v\nwant %+v", round, b.Sequence, k, c, b.Records, want)
			}
			if c < prevCall {
				t.Fatalf("round %d: batch %d of call %d after a batch of call %d", round, b.Sequence, c, prevCall)
			}
			prevCall = c
			byCall[c] = append(byCall[c], chunk{b.Sequence, k})
		}

		// Per call: chunk k has sequence first+k; all chunks are there,
		// except that a call being acknowledged lost a prefix.
		lastReported := first - 1
		if len(log.order) > 0 {
			lastReported = log.order[len(log.order)-1]
		}
		for c, chunks := range byCall {
			n := (len(crashCall(c)) + crashBatch - 1) / crashBatch
			base := chunks[0].seq - uint64(chunks[0].k)
			for _, ch := range chunks {
				if ch.seq != base+uint64(ch.k) {
					t.Fatalf("round %d: call %d chunk %d has sequence %d, chunk %d has %d", round, c, ch.k, ch.seq, chunks[0].k, chunks[0].seq)
				}
			}
			if last := chunks[len(chunks)-1].k; last != n-1 {
				t.Fatalf("round %d: call %d lost its last chunk(s): has up to %d of %d", round, c, last, n)
			}
			rep, reported := log.added[c]
			switch {
			case log.acked[c]:
				t.Fatalf("round %d: call %d was acknowledged but %d of its batches remain", round, c, len(chunks))
			case reported && (rep[0] != base || rep[1] != base+uint64(n-1)):
				t.Fatalf("round %d: call %d reported sequences %d-%d, spool has %d-%d", round, c, rep[0], rep[1], base, base+uint64(n-1))
			case !reported && c != lastReported+1:
				t.Fatalf("round %d: call %d in the spool, but the child reported only up to call %d", round, c, lastReported)
			case !reported:
				inflight++ // committed, killed before it could say so
			}
			if len(chunks) != n {
				if !reported || !crashAcked(c) {
					t.Fatalf("round %d: call %d has %d of its %d batches", round, c, len(chunks), n)
				}
				partialAcks++
			}
		}
		// Everything the child reported is there, unless acknowledged.
		for _, c := range log.order {
			if _, ok := byCall[c]; !ok && !crashAcked(c) {
				t.Fatalf("round %d: call %d (sequences %v) returned from AddUsage but is not in the spool", round, c, log.added[c])
			}
		}

		// The live child handed out sequences without gap or repeat,
		// starting right after the last one the previous round left.
		next := prevLast + 1
		for _, c := range log.order {
			r := log.added[c]
			if r[0] != next || r[1] < r[0] {
				t.Fatalf("round %d: call %d got sequences %d-%d, want them to start at %d", round, c, r[0], r[1], next)
			}
			next = r[1] + 1
		}

		// The high-water mark: not below anything handed out.
		maxSeen := prevLast
		for _, c := range log.order {
			maxSeen = max(maxSeen, log.added[c][1])
		}
		if len(all) > 0 {
			maxSeen = max(maxSeen, all[len(all)-1].Sequence)
		}
		if st.LastSequence < maxSeen {
			t.Fatalf("round %d: LastSequence %d, but sequence %d was handed out", round, st.LastSequence, maxSeen)
		}
		if st.UsageBatches != len(all) {
			t.Fatalf("round %d: Stats counts %d batches, Pending returns %d", round, st.UsageBatches, len(all))
		}
		t.Logf("round %d: child reported %d calls, spool holds %d batches, LastSequence %d", round, len(log.order), len(all), st.LastSequence)
		prevLast = st.LastSequence
		kept = now
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d kills: %d calls committed but unreported at the kill, %d killed while being acknowledged", killed, inflight, partialAcks)

	// Acknowledge everything: the next batch still gets a new sequence.
	s := open(t, path, Options{})
	for seq := range kept {
		if err := s.Ack(seq); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s = open(t, path, Options{})
	bs, err := s.AddUsage(crashCall(1))
	if err != nil {
		t.Fatal(err)
	}
	if bs[0].Sequence != prevLast+1 {
		t.Fatalf("after acknowledging everything, a new batch got sequence %d, want %d", bs[0].Sequence, prevLast+1)
	}
}
