package plan

import (
	"bytes"
	"context"
	"testing"

	"google.golang.org/protobuf/proto"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"
)

// checkCanonical fails unless p validates, orders, and re-encodes
// deterministically: Marshal(Unmarshal(Marshal(p))) == Marshal(p).
func checkCanonical(t *testing.T, p *planv1.Plan) {
	t.Helper()
	if err := Validate(p); err != nil {
		t.Fatalf("accepted plan does not validate: %v", err)
	}
	if ordered, err := Order(p); err != nil || len(ordered) != len(p.GetSteps()) {
		t.Fatalf("accepted plan does not order: %v", err)
	}
	b1, err := Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := Marshal(proto.Clone(p).(*planv1.Plan))
	if err != nil || !bytes.Equal(b1, b2) {
		t.Fatalf("encoding not deterministic (%v)", err)
	}
	q, err := Unmarshal(b1)
	if err != nil {
		t.Fatalf("own encoding does not decode: %v", err)
	}
	if !proto.Equal(p, q) {
		t.Fatal("plan changes through encode/decode")
	}
	b3, err := Marshal(q)
	if err != nil || !bytes.Equal(b1, b3) {
		t.Fatalf("re-encoding differs (%v)", err)
	}
	if err := Validate(q); err != nil {
		t.Fatalf("decoded plan does not validate: %v", err)
	}
}

func FuzzParseYAML(f *testing.F) {
	f.Add([]byte(sampleYAML))
	f.Add([]byte("version: 1\nsteps: [{id: a, provider: local, action: noop, resource: x}]\n"))
	f.Add([]byte("version: 1\nexpires_in: 7d\nsteps:\n- {id: a, provider: p, action: x, resource: r, depends_on: [b]}\n- {id: b, provider: p, action: x, resource: r}\n"))
	f.Add([]byte("version: 1\nsteps:\n- {id: a, provider: p, action: x, resource: r, depends_on: [b]}\n- {id: b, provider: p, action: x, resource: r, depends_on: [a]}\n"))
	f.Add([]byte("version: 1\nsteps: [{id: a, provider: p, action: x, resource: r, params: {a: &x [1, 2], b: *x, c: 1e308, d: -0.0, e: .nan}}]\n"))
	f.Add([]byte("version: 1\nsteps: [{id: a, provider: p, action: x, resource: r, compensation: {action: y, params: {to: 1}}}]\n"))
	f.Add([]byte("{version: 1, steps: []}"))
	f.Add([]byte("---\n...\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseYAML(b)
		if err != nil {
			return
		}
		p, err := d.Build("acme", testAgent, 1, testNow)
		if err != nil {
			return
		}
		checkCanonical(t, p)
		if _, err := Sign(context.Background(), p, seededSigner(1)); err != nil {
			t.Fatalf("valid plan from YAML of %d bytes not signed: %v", len(b), err)
		}
	})
}

func FuzzPlanDecode(f *testing.F) {
	p := samplePlan(f)
	b, _ := Marshal(p)
	f.Add(b)
	p.Steps = p.Steps[:1]
	p.Steps[0].Params = nil
	b, _ = Marshal(p)
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x01, 'x'})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Unmarshal(b)
		if err != nil {
			return
		}
		if err := Validate(p); err != nil {
			if _, err := Order(p); err == nil {
				t.Fatal("Order accepted an invalid plan")
			}
			return
		}
		checkCanonical(t, p)
	})
}
