package jointoken

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	valid := encode(validFields())
	f.Add(valid)
	f.Add(" " + valid + "\n")
	for _, n := range []int{0, 1, len(Prefix) - 1, len(Prefix), len(Prefix) + 1, len(valid) / 2, len(valid) - 1} {
		f.Add(valid[:n])
	}
	f.Add("attache-join-v2." + strings.TrimPrefix(valid, Prefix))
	f.Add(strings.ToUpper(valid))
	for _, j := range []string{
		`{}`, `[]`, `null`, `{"addr":1}`, `{"addr":"a:1","addr":"b:2"}`, `{"ADDR":"a:1"}`,
		`{"exp":1e3}`, `{"exp":-1}`, `{"td":null}`, `{"td":{"x":1}}`, `{"addr":"\u0000:1"}`,
		`{"secret":"` + strings.Repeat("A", 43) + `"}`,
		string(mustJSON(validFields())) + `{}`,
		string(mustJSON(validFields())) + ` `,
		"{\"addr\":\"\xff:1\"}",
	} {
		f.Add(Prefix + base64.RawURLEncoding.EncodeToString([]byte(j)))
	}
	f.Add(edit(`"addr":"cp.example.com:8443"`, `"addr":"[::1]:1"`))
	f.Add(edit(`"td":"example.org"`, `"td":"spiffe://example.org/x"`))

	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			msg := err.Error()
			if raw := strings.TrimSpace(s); len(raw) > len(Prefix)+8 && strings.Contains(msg, raw) {
				t.Fatalf("error contains the raw token: %q", msg)
			}
			if secret := secretField(s); len(secret) >= 4 && strings.Contains(msg, secret) {
				t.Fatalf("error contains the secret %q: %q", secret, msg)
			}
			return
		}
		again, err := Parse(tok.String())
		if err != nil {
			t.Fatalf("Parse(String()) failed: %v", err)
		}
		if !again.Equal(tok) {
			t.Fatalf("round trip changed the token")
		}
		if again.String() != tok.String() {
			t.Fatalf("String is not stable")
		}
		if err := tok.Validate(); err != nil {
			t.Fatalf("parsed token does not validate: %v", err)
		}
	})
}

// secretField digs the "secret" value out of s as leniently as possible, so
// that the fuzz target can check errors never echo it.
func secretField(s string) string {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), Prefix)
	if !ok {
		return ""
	}
	body, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var m map[string]any
	if dec.Decode(&m) != nil {
		return ""
	}
	v, _ := m["secret"].(string)
	return v
}
