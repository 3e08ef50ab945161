package jointoken

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

var (
	testNow  = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	caHash   = sha256.Sum256([]byte("ca"))
	rootHash = sha256.Sum256([]byte("root"))
)

func newTestToken(t *testing.T) Token {
	t.Helper()
	tok, err := New("cp.example.com:8443", "example.org", caHash, rootHash, time.Hour, testNow)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tok
}

// encode builds a token string from raw JSON fields.
func encode(fields map[string]any) string {
	b, err := json.Marshal(fields)
	if err != nil {
		panic(err)
	}
	return Prefix + base64.RawURLEncoding.EncodeToString(b)
}

func validFields() map[string]any {
	return map[string]any{
		"addr":        "cp.example.com:8443",
		"td":          "example.org",
		"ca_sha256":   fmt.Sprintf("%x", caHash),
		"root_sha256": fmt.Sprintf("%x", rootHash),
		"id":          "0123456789abcdef",
		"secret":      base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"exp":         testNow.Unix(),
	}
}

func with(k string, v any) map[string]any {
	f := validFields()
	if v == nil {
		delete(f, k)
	} else {
		f[k] = v
	}
	return f
}

func TestNewRoundTrip(t *testing.T) {
	tok := newTestToken(t)
	if len(tok.ID) != 16 || len(tok.Secret) != 32 {
		t.Fatalf("id %q secret %d bytes", tok.ID, len(tok.Secret))
	}
	if !tok.ExpiresAt.Equal(testNow.Add(time.Hour)) {
		t.Errorf("ExpiresAt = %v", tok.ExpiresAt)
	}
	s := tok.String()
	if !strings.HasPrefix(s, Prefix) {
		t.Fatalf("String() = %q lacks prefix", s)
	}
	got, err := Parse("  \n" + s + "\n")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if !got.Equal(tok) {
		t.Errorf("round trip: got %+v, want %+v", got.LogValue(), tok.LogValue())
	}
	other := newTestToken(t)
	if other.ID == tok.ID || bytes.Equal(other.Secret, tok.Secret) {
		t.Error("two tokens share an id or secret")
	}
	if h := tok.SecretHash(); !bytes.Equal(h, func() []byte { x := sha256.Sum256(tok.Secret); return x[:] }()) {
		t.Error("SecretHash is not sha256(Secret)")
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New("cp:1", "example.org", caHash, rootHash, 0, testNow); err == nil {
		t.Error("zero ttl accepted")
	}
	if _, err := New("cp", "example.org", caHash, rootHash, time.Hour, testNow); err == nil {
		t.Error("addr without port accepted")
	}
	if _, err := New("cp:1", "example.org", [32]byte{}, rootHash, time.Hour, testNow); err == nil {
		t.Error("zero CA hash accepted")
	}
}

func TestParse(t *testing.T) {
	valid := encode(validFields())
	tests := []struct {
		name    string
		in      string
		wantErr string // substring; "" means success
	}{
		{"valid", valid, ""},
		{"valid with whitespace", "\t " + valid + " \r\n", ""},
		{"ipv4 host", encode(with("addr", "10.0.0.1:443")), ""},
		{"ipv6 host", encode(with("addr", "[2001:db8::1]:443")), ""},
		{"too long", valid + strings.Repeat("A", MaxLen), "too long"},
		{"empty", "", "expected prefix attache-join-v1."},
		{"wrong prefix", "attache-join-v2." + strings.TrimPrefix(valid, Prefix), "not an Attaché join token"},
		{"no prefix", strings.TrimPrefix(valid, Prefix), "not an Attaché join token"},
		{"bad base64", Prefix + "!!!", "base64url"},
		{"padded base64", Prefix + base64.URLEncoding.EncodeToString([]byte(`{"a":1}`)), "base64url"},
		{"std base64 chars", Prefix + "ab+/", "base64url"},
		{"not json", Prefix + base64.RawURLEncoding.EncodeToString([]byte("hello")), "not valid JSON"},
		{"json array", Prefix + base64.RawURLEncoding.EncodeToString([]byte("[1]")), "not a JSON object"},
		{"truncated json", Prefix + base64.RawURLEncoding.EncodeToString([]byte(`{"addr":"x:1"`)), "not valid JSON"},
		{"trailing data", Prefix + base64.RawURLEncoding.EncodeToString(append(mustJSON(validFields()), []byte(" {}")...)), "data after"},
		{"unknown field", encode(with("extra", "x")), "unknown field"},
		{"case-folded field", edit(`"addr"`, `"ADDR"`), "unknown field"},
		{"duplicate field", edit(`"addr":`, `"addr":"x:1","addr":`), `"addr" appears more than once`},
		{"null value", edit(`"td":"example.org"`, `"td":null`), `"td" must be a string`},
		{"nested value", edit(`"td":"example.org"`, `"td":{}`), `"td" must be a string`},
		{"number for string", encode(with("id", 5)), `"id" must be a string`},
		{"string for number", encode(with("exp", "5")), `"exp" must be a number`},
		{"fractional exp", edit(fmt.Sprint(testNow.Unix()), "1.5"), `"exp" must be an integer`},
		{"missing addr", encode(with("addr", nil)), `"addr" is missing`},
		{"missing exp", encode(with("exp", nil)), `"exp" is missing`},
		{"addr no port", encode(with("addr", "cp.example.com")), `"addr" is not host:port`},
		{"addr empty host", encode(with("addr", ":443")), `"addr" has an empty host`},
		{"addr port zero", encode(with("addr", "cp:0")), `"addr" has an invalid port`},
		{"addr port too big", encode(with("addr", "cp:65536")), `"addr" has an invalid port`},
		{"addr port not numeric", encode(with("addr", "cp:https")), `"addr" has an invalid port`},
		{"addr port leading zero", encode(with("addr", "cp:0443")), `"addr" has an invalid port`},
		{"addr bad host", encode(with("addr", "c p:443")), `"addr" has an invalid host`},
		{"addr empty", encode(with("addr", "")), `"addr" is empty`},
		{"td empty", encode(with("td", "")), `"td" is empty`},
		{"td uppercase", encode(with("td", "Example.org")), `"td" is not a valid SPIFFE trust domain`},
		{"td spiffe id", encode(with("td", "spiffe://example.org")), `"td" must be a bare trust domain`},
		{"ca hash short", encode(with("ca_sha256", "abcd")), `"ca_sha256" must be 64 lowercase hex`},
		{"ca hash upper", encode(with("ca_sha256", strings.ToUpper(fmt.Sprintf("%x", caHash)))), `"ca_sha256" must be 64 lowercase hex`},
		{"ca hash zero", encode(with("ca_sha256", strings.Repeat("0", 64))), `"ca_sha256" is all zeros`},
		{"root hash non-hex", encode(with("root_sha256", strings.Repeat("g", 64))), `"root_sha256" must be 64 lowercase hex`},
		{"id short", encode(with("id", "abc")), `"id" must be 16 lowercase hex`},
		{"id upper", encode(with("id", "0123456789ABCDEF")), `"id" must be 16 lowercase hex`},
		{"secret short", encode(with("secret", base64.RawURLEncoding.EncodeToString(make([]byte, 31)))), `"secret" must be 32 bytes`},
		{"secret long", encode(with("secret", base64.RawURLEncoding.EncodeToString(make([]byte, 33)))), `"secret" must be 32 bytes`},
		{"secret padded", encode(with("secret", base64.URLEncoding.EncodeToString(make([]byte, 32)))), `"secret" must be 32 bytes`},
		{"secret std alphabet", encode(with("secret", strings.Repeat("+", 43))), `"secret" must be 32 bytes`},
		{"exp zero", encode(with("exp", 0)), `"exp" must be a Unix time`},
		{"exp negative", encode(with("exp", -5)), `"exp" must be a Unix time`},
		{"exp far future", encode(with("exp", int64(1)<<50)), `"exp" must be a Unix time`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := Parse(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				again, err := Parse(tok.String())
				if err != nil || !again.Equal(tok) {
					t.Fatalf("round trip: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseReportsAllProblems(t *testing.T) {
	f := validFields()
	f["addr"] = "nope"
	f["id"] = "x"
	f["secret"] = "short"
	_, err := Parse(encode(f))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	for _, want := range []string{`"addr"`, `"id"`, `"secret"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := (Token{}).Validate(); err == nil {
		t.Fatal("zero token valid")
	} else {
		for _, want := range []string{"addr", "td", "ca_sha256", "root_sha256", "id", "secret", "exp"} {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", want)) {
				t.Errorf("error %q does not mention %s", err, want)
			}
		}
	}
	if err := newTestToken(t).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	tok := newTestToken(t)
	enc := base64.RawURLEncoding.EncodeToString(tok.Secret)
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("minted", "token", tok)
	for _, out := range []string{
		buf.String(),
		fmt.Sprint(tok),
		fmt.Sprintf("%v %+v %#v %s %q %x", tok, tok, tok, tok, tok, tok),
	} {
		if strings.Contains(out, enc) || strings.Contains(out, tok.String()) || strings.Contains(out, fmt.Sprintf("%x", tok.Secret)) {
			t.Errorf("secret leaked: %s", out)
		}
		if !strings.Contains(out, tok.ID) {
			t.Errorf("output lacks token id: %s", out)
		}
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// edit returns the valid token with one textual edit to its JSON.
func edit(old, new string) string {
	j := string(mustJSON(validFields()))
	if !strings.Contains(j, old) {
		panic("edit: " + old + " not in " + j)
	}
	return Prefix + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(j, old, new, 1)))
}
