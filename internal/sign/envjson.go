package sign

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// parseEnvelope decodes the JSON of a DSSE envelope strictly, accepting
// exactly what decodeStrict(data, &dsse.Envelope{}) accepts and producing the
// same value (FuzzParseEnvelope checks both): exact field names only, no
// duplicate keys, string or null for the strings, array or null for
// signatures, object or null for each signature, nothing after the value.
//
// It exists because the agent verifies every plan it receives: the generic
// decodeStrict walks the JSON once with json.Decoder.Token and decodes it a
// second time by reflection, which cost about as much as a third of the
// ed25519 verification. This parser reads the fixed shape in one pass;
// strings without escapes or non-ASCII bytes (base64, key ids, payload
// types) are copied as they are, any other string is decoded by
// json.Unmarshal so that escapes and invalid UTF-8 are handled exactly as
// encoding/json handles them.
func parseEnvelope(data []byte) (dsse.Envelope, error) {
	p := envParser{data: data}
	var env dsse.Envelope
	p.space()
	if p.null() {
		return env, p.end()
	}
	const (
		seenType = 1 << iota
		seenPayload
		seenSignatures
	)
	var seen int
	err := p.object("JSON", func(key string) error {
		var bit int
		switch key {
		case "payloadType":
			bit = seenType
		case "payload":
			bit = seenPayload
		case "signatures":
			bit = seenSignatures
		}
		if bit != 0 && seen&bit != 0 {
			return fmt.Errorf("JSON: duplicate key %.64q", key)
		}
		seen |= bit
		switch bit {
		case seenType:
			return p.stringOrNull(&env.PayloadType, "payloadType")
		case seenPayload:
			return p.stringOrNull(&env.Payload, "payload")
		case seenSignatures:
			return p.signatures(&env.Signatures)
		}
		return fmt.Errorf("JSON: unknown field %.64q", key)
	})
	if err != nil {
		return dsse.Envelope{}, err
	}
	if err := p.end(); err != nil {
		return dsse.Envelope{}, err
	}
	return env, nil
}

// envParser reads JSON from data at pos.
type envParser struct {
	data []byte
	pos  int
}

func (p *envParser) space() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// peek returns the next byte, 0 at the end.
func (p *envParser) peek() byte {
	if p.pos < len(p.data) {
		return p.data[p.pos]
	}
	return 0
}

func (p *envParser) syntax(what string) error {
	if p.pos >= len(p.data) {
		return errors.New("unexpected end of JSON input")
	}
	return fmt.Errorf("invalid character %q %s at offset %d", p.data[p.pos], what, p.pos)
}

// end checks that only whitespace follows the value.
func (p *envParser) end() error {
	p.space()
	if p.pos != len(p.data) {
		return errors.New("data after the JSON value")
	}
	return nil
}

// null consumes the literal null if it comes next.
func (p *envParser) null() bool {
	if len(p.data)-p.pos >= 4 && string(p.data[p.pos:p.pos+4]) == "null" {
		p.pos += 4
		return true
	}
	return false
}

// object reads an object whose opening brace is next, calling field for
// each key with the parser at the value, which field consumes.
func (p *envParser) object(path string, field func(key string) error) error {
	if p.peek() != '{' {
		return p.unexpected(path, "an object")
	}
	p.pos++
	p.space()
	if p.peek() == '}' {
		p.pos++
		return nil
	}
	for {
		p.space()
		if p.peek() != '"' {
			return p.syntax("looking for beginning of object key string")
		}
		key, err := p.str()
		if err != nil {
			return err
		}
		p.space()
		if p.peek() != ':' {
			return p.syntax("after object key")
		}
		p.pos++
		p.space()
		if err := field(key); err != nil {
			return err
		}
		p.space()
		switch p.peek() {
		case ',':
			p.pos++
		case '}':
			p.pos++
			return nil
		default:
			return p.syntax("after object key:value pair")
		}
	}
}

// unexpected reports a value of the wrong kind where want was expected.
func (p *envParser) unexpected(path, want string) error {
	switch c := p.peek(); c {
	case '{':
		return fmt.Errorf("%s: unexpected JSON object", path)
	case '[':
		return fmt.Errorf("%s: unexpected JSON array", path)
	case '"', 't', 'f', 'n', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return fmt.Errorf("%s: JSON value is not %s or null", path, want)
	default:
		return p.syntax("looking for beginning of value")
	}
}

func (p *envParser) stringOrNull(dst *string, path string) error {
	if p.null() {
		return nil
	}
	if p.peek() != '"' {
		return p.unexpected(path, "a string")
	}
	s, err := p.str()
	if err != nil {
		return err
	}
	*dst = s
	return nil
}

// str reads a string whose opening quote is at pos.
func (p *envParser) str() (string, error) {
	start := p.pos
	i := start + 1
	for i < len(p.data) {
		c := p.data[i]
		if c == '"' {
			p.pos = i + 1
			return string(p.data[start+1 : i]), nil
		}
		if c == '\\' || c < 0x20 || c >= 0x80 {
			return p.slowStr(start)
		}
		i++
	}
	p.pos = len(p.data)
	return "", errors.New("unexpected end of JSON input")
}

// slowStr decodes the string starting at start with encoding/json.
func (p *envParser) slowStr(start int) (string, error) {
	i := start + 1
	for i < len(p.data) && p.data[i] != '"' {
		if p.data[i] == '\\' {
			i++
		}
		i++
	}
	if i >= len(p.data) {
		p.pos = len(p.data)
		return "", errors.New("unexpected end of JSON input")
	}
	var s string
	if err := json.Unmarshal(p.data[start:i+1], &s); err != nil {
		return "", err
	}
	p.pos = i + 1
	return s, nil
}

func (p *envParser) signatures(dst *[]dsse.Signature) error {
	if p.null() {
		*dst = nil
		return nil
	}
	if p.peek() != '[' {
		return p.unexpected("signatures", "an array")
	}
	p.pos++
	sigs := make([]dsse.Signature, 0, 1)
	p.space()
	if p.peek() == ']' {
		p.pos++
		*dst = sigs
		return nil
	}
	for {
		p.space()
		var s dsse.Signature
		if !p.null() {
			if err := p.signature(&s); err != nil {
				return err
			}
		}
		sigs = append(sigs, s)
		p.space()
		switch p.peek() {
		case ',':
			p.pos++
		case ']':
			p.pos++
			*dst = sigs
			return nil
		default:
			return p.syntax("after array element")
		}
	}
}

func (p *envParser) signature(s *dsse.Signature) error {
	var seenKeyID, seenSig bool
	return p.object("signatures[]", func(key string) error {
		switch key {
		case "keyid":
			if seenKeyID {
				return fmt.Errorf("signatures[]: duplicate key %.64q", key)
			}
			seenKeyID = true
			return p.stringOrNull(&s.KeyID, "signatures[].keyid")
		case "sig":
			if seenSig {
				return fmt.Errorf("signatures[]: duplicate key %.64q", key)
			}
			seenSig = true
			return p.stringOrNull(&s.Sig, "signatures[].sig")
		}
		return fmt.Errorf("signatures[]: unknown field %.64q", key)
	})
}
