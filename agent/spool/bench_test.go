package spool

import (
	"fmt"
	"testing"
	"time"
)

// benchRecords is a realistic call: one tenant, a few meters, counts
// (integers) and latencies (fractions), times a few milliseconds apart.
func benchRecords(n int) []Record {
	now := time.Now()
	meters := []string{"http.requests", "http.errors", "http.latency_p95_ms", "storage.bytes"}
	out := make([]Record, n)
	for i := range out {
		v := float64(i % 1000)
		if i%4 == 2 {
			v = 12.5 + float64(i%97)/7
		}
		out[i] = Record{Tenant: "acme", Meter: meters[i%len(meters)], Value: v, At: now.Add(time.Duration(i) * 3 * time.Millisecond)}
	}
	return out
}

// drainSpool acknowledges every pending batch.
func drainSpool(b *testing.B, s *Spool) {
	b.Helper()
	p, err := s.Pending(0, 0)
	if err != nil {
		b.Fatal(err)
	}
	for _, batch := range p {
		if err := s.Ack(batch.Sequence); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAddUsage measures the spool's write rate: AddUsage calls of n
// records (batches of 500), each one durable transaction. The spool is
// drained, off the clock, whenever it holds 32 MiB.
func BenchmarkAddUsage(b *testing.B) {
	for _, n := range []int{1, 100, 500, 5000} {
		b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
			s, _ := newSpool(b, Options{MaxBytes: 1 << 30, Now: time.Now})
			in := benchRecords(n)
			var bytes int64
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				before := s.Stats().Bytes
				if _, err := s.AddUsage(in); err != nil {
					b.Fatal(err)
				}
				after := s.Stats().Bytes
				bytes += after - before
				if after > 32<<20 {
					b.StopTimer()
					drainSpool(b, s)
					b.StartTimer()
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(float64(bytes)/float64(n*b.N), "B/record")
		})
	}
}

// BenchmarkSpoolCycle measures the steady state of a sending agent: add
// 500 records (one batch), hand it out with Pending, acknowledge it —
// three durable transactions per batch.
func BenchmarkSpoolCycle(b *testing.B) {
	s, _ := newSpool(b, Options{Now: time.Now})
	in := benchRecords(500)
	var last uint64
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := s.AddUsage(in); err != nil {
			b.Fatal(err)
		}
		p, err := s.Pending(last, 0)
		if err != nil {
			b.Fatal(err)
		}
		for _, batch := range p {
			if err := s.Ack(batch.Sequence); err != nil {
				b.Fatal(err)
			}
			last = batch.Sequence
		}
	}
	b.ReportMetric(500*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
