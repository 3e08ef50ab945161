package auditlog

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func chain(n int) []Record {
	var out []Record
	seq, prev := uint64(0), GenesisHash
	for i := range n {
		r := Seal(seq, prev, Entry{
			Time: time.Unix(int64(1700000000+i), 0).UTC(), Actor: "admin", Role: "admin",
			Action: "tenant.create", Tenant: "acme", Outcome: OutcomeSuccess,
			Detail: json.RawMessage(`{ "n" : ` + string(rune('0'+i%10)) + ` }`),
		})
		out = append(out, r)
		seq, prev = r.Seq, r.Hash
	}
	return out
}

func TestVerify(t *testing.T) {
	good := chain(5)
	head := good[len(good)-1]
	clone := func() []Record { return append([]Record(nil), good...) }
	for _, tc := range []struct {
		name    string
		records func() []Record
		seq     uint64
		reason  string
	}{
		{"intact", clone, 0, ""},
		{"altered", func() []Record { r := clone(); r[2].Actor = "mallory"; return r }, 3, "altered"},
		{"altered and rehashed", func() []Record {
			r := clone()
			r[1].Actor = "mallory"
			r[1].Hash = Hash(r[1].Seq, r[1].Entry, r[1].PrevHash)
			return r
		}, 3, "link broken"},
		{"deleted", func() []Record { r := clone(); return append(r[:2], r[3:]...) }, 3, "missing"},
		{"reordered", func() []Record { r := clone(); r[1], r[2] = r[2], r[1]; return r }, 2, "missing"},
		{"truncated", func() []Record { return clone()[:4] }, 5, "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Verify(tc.records(), 0, GenesisHash, head.Seq, head.Hash)
			if tc.reason == "" {
				if p != nil {
					t.Fatalf("intact chain: %v", p)
				}
				return
			}
			if p == nil || p.Seq != tc.seq || !strings.Contains(p.Reason, tc.reason) {
				t.Fatalf("Verify = %v, want record %d: …%s…", p, tc.seq, tc.reason)
			}
		})
	}
}

func TestRecordSurvivesJSONRoundTrip(t *testing.T) {
	recs := chain(3)
	b, err := json.Marshal(recs)
	if err != nil {
		t.Fatal(err)
	}
	var back []Record
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if p := Verify(back, 0, GenesisHash, 3, recs[2].Hash); p != nil {
		t.Fatalf("records no longer verify after JSON: %v", p)
	}
}
