package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// fixedKeyset derives keys from fixed seeds so that fuzz corpora stay valid.
func fixedKeyset(nRoot, nPlans, nReleases int) keyset {
	seed := byte(1)
	gen := func(n int) []*Signer {
		var out []*Signer
		for range n {
			out = append(out, NewSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))))
			seed++
		}
		return out
	}
	return keyset{gen(nRoot), gen(nPlans), gen(nReleases)}
}

// independentCount counts the distinct keys of role in r with a valid
// signature in envelope, without dsse.
func independentCount(t *testing.T, r *Root, role string, envelope []byte) int {
	var e struct {
		PayloadType string
		Payload     string
		Signatures  []struct{ Sig string }
	}
	if err := json.Unmarshal(envelope, &e); err != nil {
		t.Fatalf("accepted envelope does not decode: %v", err)
	}
	payload, err := decodeB64(e.Payload)
	if err != nil {
		t.Fatalf("accepted payload does not decode: %v", err)
	}
	pae := dsse.PAE(e.PayloadType, payload)
	n := 0
	for _, id := range r.Roles[role].KeyIDs {
		for _, s := range e.Signatures {
			sig, err := decodeB64(s.Sig)
			if err == nil && ed25519.Verify(r.Keys[id].Public, pae, sig) {
				n++
				break
			}
		}
	}
	return n
}

func addEnvelopeSeeds(f *testing.F, good []byte) {
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("null"))
	f.Add([]byte("{}"))
	f.Add([]byte(`{"payloadType":"","payload":"","signatures":[]}`))
	f.Add([]byte(`{"payloadType":"x","payload":"e30=","signatures":[{"keyid":"","sig":""}]}`))
	f.Add([]byte(`{"signatures":[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]}`))
	for _, n := range []int{1, len(good) / 3, len(good) / 2, len(good) - 1} {
		f.Add(good[:n])
	}
	f.Add(append(bytes.Clone(good), good...))
	f.Add([]byte(strings.Replace(string(good), `"payload"`, `"Payload"`, 1)))
	f.Add([]byte(strings.Replace(string(good), `{"payloadType"`, `{"payload":"","payloadType"`, 1)))
	var e dsse.Envelope
	if err := json.Unmarshal(good, &e); err == nil && len(e.Signatures) > 0 {
		e.Signatures = append(e.Signatures, e.Signatures[0], dsse.Signature{Sig: e.Signatures[0].Sig})
		b, _ := json.Marshal(e)
		f.Add(b)
		p, _ := base64.StdEncoding.DecodeString(e.Payload)
		e.Payload = base64.URLEncoding.EncodeToString(p)
		b, _ = json.Marshal(e)
		f.Add(b)
	}
}

func FuzzVerifyRoot(f *testing.F) {
	ks := fixedKeyset(3, 1, 1)
	r := ks.build(1, 2, 1)
	good := mustSignRoot(f, r, ks.root[0], ks.root[1])
	addEnvelopeSeeds(f, good)
	f.Add(mustSignRoot(f, r, ks.root[0]))
	f.Add(mustSignRoot(f, r, ks.root...))
	f.Add(signedPayload(f, RootPayloadType, []byte(`{"_type":"attache/root","version":1}`), ks.root...))
	f.Add(signedPayload(f, planType, []byte(`{}`), ks.root...))

	ctx := context.Background()
	f.Fuzz(func(t *testing.T, env []byte) {
		got, err := VerifyRoot(ctx, env, testNow)
		if err != nil {
			return
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("accepted root does not validate: %v", err)
		}
		if !testNow.Before(got.Expires) {
			t.Fatal("accepted an expired root")
		}
		if n := independentCount(t, got, RoleRoot, env); n < got.Roles[RoleRoot].Threshold {
			t.Fatalf("accepted root with %d valid root signatures, threshold %d", n, got.Roles[RoleRoot].Threshold)
		}
		again, err := VerifyRoot(ctx, env, testNow)
		if err != nil || again.Version != got.Version {
			t.Fatalf("VerifyRoot is not stable: %v", err)
		}
	})
}

func FuzzVerifyPayload(f *testing.F) {
	ks := fixedKeyset(1, 3, 1)
	r := ks.build(1, 1, 2)
	good := signedPayload(f, planType, []byte(`{"plan":1}`), ks.plans[0], ks.plans[1])
	addEnvelopeSeeds(f, good)
	f.Add(signedPayload(f, planType, []byte(`{"plan":1}`), ks.plans[0]))
	f.Add(signedPayload(f, planType, nil, ks.plans...))
	f.Add(signedPayload(f, "other", []byte(`{"plan":1}`), ks.plans...))
	f.Add(signedPayload(f, planType, []byte(`{"plan":1}`), ks.root[0], ks.releases[0], ks.plans[2]))

	ctx := context.Background()
	f.Fuzz(func(t *testing.T, env []byte) {
		payload, err := VerifyPayload(ctx, r, RolePlans, planType, env)
		if err != nil {
			return
		}
		if n := independentCount(t, r, RolePlans, env); n < 2 {
			t.Fatalf("accepted payload with %d valid plans signatures, threshold 2", n)
		}
		var e dsse.Envelope
		if err := json.Unmarshal(env, &e); err != nil || e.PayloadType != planType {
			t.Fatalf("accepted wrong payload type %q", e.PayloadType)
		}
		if want, _ := decodeB64(e.Payload); !bytes.Equal(payload, want) {
			t.Fatal("returned payload differs from the envelope's")
		}
	})
}
