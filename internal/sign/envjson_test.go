package sign

import (
	"reflect"
	"strings"
	"testing"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// envelopeJSONCases are inputs on which parseEnvelope must agree with
// decodeStrict; ok says whether both accept.
var envelopeJSONCases = []struct {
	name, in string
	ok       bool
	detail   string // part of parseEnvelope's error when !ok
}{
	{"plain", `{"payloadType":"t","payload":"cA==","signatures":[{"keyid":"k","sig":"c2ln"}]}`, true, ""},
	{"whitespace", " \t\r\n{ \"payloadType\" : \"t\" , \"payload\":\"\",\n\"signatures\" : [ { \"keyid\" : \"k\" , \"sig\" : \"\" } , {\"sig\":\"x\"} ] } \n", true, ""},
	{"field order", `{"signatures":[],"payload":"","payloadType":""}`, true, ""},
	{"empty object", `{}`, true, ""},
	{"top-level null", `null`, true, ""},
	{"null fields", `{"payloadType":null,"payload":null,"signatures":null}`, true, ""},
	{"null signature", `{"signatures":[null,{"keyid":null,"sig":null}]}`, true, ""},
	{"empty signature", `{"signatures":[{}]}`, true, ""},
	{"escapes", `{"payloadType":"a\/b\u0041\n\"\\","payload":"x\u00e9"}`, true, ""},
	{"escaped key", `{"payload\u0054ype":"t"}`, true, ""},
	{"utf-8", `{"payloadType":"héllo ☃"}`, true, ""},
	{"invalid utf-8 is replaced", "{\"payloadType\":\"a\xffb\"}", true, ""},
	{"DEL byte", "{\"payloadType\":\"a\x7fb\"}", true, ""},
	{"surrogate escape", `{"payloadType":"\ud800"}`, true, ""},

	{"empty", ``, false, "unexpected end"},
	{"spaces only", `   `, false, "unexpected end"},
	{"string", `"x"`, false, "not an object"},
	{"array", `[]`, false, "unexpected JSON array"},
	{"number", `1`, false, "not an object"},
	{"unknown field", `{"extra":1}`, false, `unknown field "extra"`},
	{"case-folded field", `{"PayloadType":"t"}`, false, `unknown field "PayloadType"`},
	{"duplicate field", `{"payload":"","payload":""}`, false, `duplicate key "payload"`},
	{"duplicate via escape", `{"payload":"","p\u0061yload":""}`, false, `duplicate key "payload"`},
	{"duplicate null field", `{"signatures":null,"signatures":[]}`, false, `duplicate key "signatures"`},
	{"unknown signature field", `{"signatures":[{"kid":1,"keyid":"k"}]}`, false, `unknown field "kid"`},
	{"duplicate signature field", `{"signatures":[{"sig":"","sig":""}]}`, false, `duplicate key "sig"`},
	{"number for string", `{"payload":1}`, false, "not a string"},
	{"bool for string", `{"payload":true}`, false, "not a string"},
	{"object for string", `{"payload":{}}`, false, "unexpected JSON object"},
	{"array for string", `{"payload":["x"]}`, false, "unexpected JSON array"},
	{"object for signatures", `{"signatures":{}}`, false, "unexpected JSON object"},
	{"string for signatures", `{"signatures":"x"}`, false, "not an array"},
	{"string signature", `{"signatures":["x"]}`, false, "not an object"},
	{"nested arrays", `{"signatures":[[[]]]}`, false, "unexpected JSON array"},
	{"trailing comma", `{"payload":"",}`, false, "invalid character"},
	{"trailing array comma", `{"signatures":[{},]}`, false, "invalid character"},
	{"missing comma", `{"payload":"" "payloadType":""}`, false, "invalid character"},
	{"missing colon", `{"payload" ""}`, false, "invalid character"},
	{"unterminated string", `{"payload":"abc`, false, "unexpected end"},
	{"unterminated escape", `{"payload":"abc\`, false, "unexpected end"},
	{"unterminated object", `{"payload":""`, false, "unexpected end"},
	{"bad escape", `{"payload":"\x"}`, false, "invalid character"},
	{"control byte", "{\"payload\":\"a\x01\"}", false, "invalid character"},
	{"nul literal", `{"payload":nul}`, false, "not a string"},
	{"null then junk", `{"payload":nullx}`, false, "invalid character"},
	{"trailing data", `{}{}`, false, "data after"},
	{"trailing null", `null null`, false, "data after"},
	{"single quotes", `{'payload':''}`, false, "invalid character"},
}

func TestParseEnvelope(t *testing.T) {
	for _, tc := range envelopeJSONCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseEnvelope([]byte(tc.in))
			var want dsse.Envelope
			oldErr := decodeStrict([]byte(tc.in), &want)
			if (oldErr == nil) != tc.ok {
				t.Fatalf("decodeStrict: err %v, want ok=%v (fix the case)", oldErr, tc.ok)
			}
			if !tc.ok {
				if err == nil {
					t.Fatalf("accepted, decoded %+v", got)
				}
				if !strings.Contains(err.Error(), tc.detail) {
					t.Fatalf("error %q does not contain %q", err, tc.detail)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded %#v, decodeStrict %#v", got, want)
			}
		})
	}
}

// FuzzParseEnvelope checks that the one-pass envelope parser accepts exactly
// what the generic strict decoder accepts, with the same result.
func FuzzParseEnvelope(f *testing.F) {
	ks := fixedKeyset(1, 2, 1)
	addEnvelopeSeeds(f, signedPayload(f, planType, []byte(`{"plan":1}`), ks.plans...))
	for _, tc := range envelopeJSONCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parseEnvelope(data)
		var want dsse.Envelope
		oldErr := decodeStrict(data, &want)
		if (err == nil) != (oldErr == nil) {
			t.Fatalf("parseEnvelope err %v, decodeStrict err %v", err, oldErr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("parseEnvelope %#v, decodeStrict %#v", got, want)
		}
	})
}

// TestDecodeEnvelopeManySignaturesErrorBounded: an envelope with far more
// signatures than allowed is refused with one short error, not one error per
// signature (which the agent would log whole for every such offer).
func TestDecodeEnvelopeManySignaturesErrorBounded(t *testing.T) {
	sig := `{"keyid":"k","sig":"!"},`
	n := (MaxEnvelopeSize - 100) / len(sig)
	env := `{"payloadType":"t","payload":"cA==","signatures":[` + strings.Repeat(sig, n-1) + strings.TrimSuffix(sig, ",") + `]}`
	_, _, err := decodeEnvelope([]byte(env))
	if err == nil {
		t.Fatal("accepted")
	}
	if !strings.Contains(err.Error(), "limit 32") {
		t.Fatalf("error %q does not give the limit", err)
	}
	if len(err.Error()) > 1024 {
		t.Fatalf("error is %d bytes for %d signatures", len(err.Error()), n)
	}
}
