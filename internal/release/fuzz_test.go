package release

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/plan"
	"attache.dev/attache/internal/sign"
)

// smallYAML is a short release using each kind of placeholder, so that
// seeds (and the inputs the fuzzer minimizes) stay short.
const smallYAML = `name: a
version: "1"
images: {w: "r/a@` + digest + `"}
migrations: [{version: 1, name: m, sql: x}]
flags: {f: "0"}
tiers: {pool: {k: v}}
steps:
- {id: m, provider: p, action: x, resource: "{{tenant}}", params: {m: "{{migrations}}"}, on_rollback: skip}
- {id: s, provider: p, action: x, resource: "{{images.w}}", params: {f: "{{flags}}", v: "{{values.k}}"}, depends_on: [m]}
`

func smallRelease(t testing.TB) *Release {
	t.Helper()
	r, err := ParseYAML([]byte(smallYAML))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	return r
}

// checkValid fails unless a release that Validate accepted re-encodes
// canonically and renders, for every probe tier and both directions, into
// steps that validate and that CheckPlan accepts.
func checkValid(t *testing.T, r *Release) {
	t.Helper()
	b1, err := Marshal(r)
	if err != nil {
		t.Fatalf("valid release does not encode: %v", err)
	}
	q, err := Unmarshal(b1)
	if err != nil {
		t.Fatalf("own encoding does not decode: %v", err)
	}
	b2, err := Marshal(q)
	if err != nil || !bytes.Equal(b1, b2) {
		t.Fatalf("re-encoding differs (%v)", err)
	}
	if err := q.Validate(); err != nil {
		t.Fatalf("decoded release does not validate: %v", err)
	}
	for _, tier := range r.probeTiers() {
		for _, rollback := range []bool{false, true} {
			c := &planv1.ReleaseContext{Tenant: "acme", Tier: tier, Rollback: rollback}
			steps, err := Render(r, c)
			if err != nil {
				t.Fatalf("valid release does not render for %v: %v", c, err)
			}
			if err := plan.ValidateSteps(steps); err != nil {
				t.Fatalf("rendered steps do not validate: %v", err)
			}
			again, err := Render(q, c)
			if err != nil || len(again) != len(steps) {
				t.Fatalf("decoded copy renders differently: %v", err)
			}
			for i := range steps {
				if !proto.Equal(steps[i], again[i]) {
					t.Fatalf("step %d renders differently from the decoded copy", i)
				}
			}
			if err := CheckPlan(r, &planv1.Plan{ReleaseRef: Ref(r), Steps: steps, ReleaseContext: c}); err != nil {
				t.Fatalf("CheckPlan refuses the release's own rendering: %v", err)
			}
		}
	}
}

func FuzzParseYAML(f *testing.F) {
	f.Add([]byte(smallYAML))
	f.Add([]byte("name: a\nversion: \"1\"\nsteps: [{id: s, provider: p, action: x, resource: r}]\n"))
	f.Add([]byte("name: a\nversion: \"1\"\nsteps: [{id: s, provider: p, action: x, resource: \"{{tenant}}\", params: {f: \"{{flags}}\", m: \"{{migrations}}\"}, on_rollback: skip}, {id: t, provider: p, action: x, resource: r, depends_on: [s]}]\n"))
	f.Add([]byte("name: a\nversion: \"1\"\ntiers: {silo: {k: v}}\nsteps: [{id: s, provider: p, action: x, resource: \"{{values.k}}\"}]\n"))
	f.Add([]byte("name: a\nversion: \"1\"\nsteps: [{id: s, provider: p, action: x, resource: \"{{\", params: {a: &x [1, 2], b: *x}}]\n"))
	f.Add([]byte("{name: a, steps: []}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseYAML(data)
		if err != nil {
			return
		}
		if r.Validate() != nil {
			return
		}
		checkValid(t, r)
		if _, err := Sign(context.Background(), r, releaseKey); err != nil && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("valid release not signed: %v", err)
		}
	})
}

func FuzzUnmarshal(f *testing.F) {
	good, _ := Marshal(smallRelease(f))
	f.Add(good)
	f.Add([]byte(`{"name":"a","version":"1","steps":[{"id":"s","provider":"p","action":"x","resource":"r"}]}`))
	f.Add([]byte(`{"name":"a","version":"1","steps":[]}`))
	f.Add([]byte(`{"name":"a","name":"b"}`))
	f.Add([]byte(`{"tiers":{"pool":null},"steps":[{"params":{"a":[1e308,-0,null,{"b":"{{tenant}}"}]}}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Unmarshal(data)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to a fixed point.
		b1, err := Marshal(r)
		if err != nil {
			t.Fatalf("decoded release does not encode: %v", err)
		}
		q, err := Unmarshal(b1)
		if err != nil {
			t.Fatalf("re-encoded release does not decode: %v", err)
		}
		b2, _ := Marshal(q)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not a fixed point:\n%s\n%s", b1, b2)
		}
		if r.Validate() != nil {
			return
		}
		checkValid(t, r)
	})
}

// FuzzVerify feeds Verify arbitrary bytes, as the envelope or, with
// asPayload, as a payload signed with the release key first, so that
// mutations reach decoding and validation. Verify must not panic, every
// refusal must match exactly one reason, and an accepted release must be
// valid.
func FuzzVerify(f *testing.F) {
	r := smallRelease(f)
	payload, _ := Marshal(r)
	f.Add(signEnv(f, r, releaseKey), false)
	f.Add(signEnv(f, r, plansKey), false)
	f.Add(tamper(f, signEnv(f, r, releaseKey), 9), false)
	f.Add([]byte(`{"payloadType":"`+PayloadType+`","payload":"","signatures":[]}`), false)
	f.Add([]byte("{}"), false)
	f.Add(payload, true)
	f.Add([]byte(`{"name":"a","version":"1","steps":[{"id":"s","provider":"p","action":"x","resource":"r"}]}`), true)
	root := testRoot()
	f.Fuzz(func(t *testing.T, data []byte, asPayload bool) {
		envelope := data
		if asPayload {
			env, err := sign.SignPayload(context.Background(), PayloadType, data, releaseKey)
			if err != nil {
				return
			}
			envelope = env
		}
		got, err := Verify(context.Background(), root, envelope)
		if err != nil {
			if got != nil {
				t.Fatal("refusal returned a release")
			}
			n := 0
			for _, e := range allErrs {
				if errors.Is(err, e) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("refusal matches %d reasons: %v", n, err)
			}
			return
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("accepted release does not validate: %v", err)
		}
		checkValid(t, got)
	})
}
