package httpapi

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	maxLabels         = 64
	maxDisplayNameLen = 200
)

// validTenantName reports whether s is a DNS label: 1–63 of [a-z0-9-],
// neither starting nor ending with '-'. Tenant names end up in SPIFFE IDs,
// Kubernetes namespaces and database schema names.
func validTenantName(s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("must be 1-63 characters")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("may contain only lower-case letters, digits and '-'")
		}
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return fmt.Errorf("must not start or end with '-'")
	}
	return nil
}

// validLabels follows Kubernetes label syntax: key is [prefix/]name with a
// DNS-subdomain prefix; name and value are up to 63 of [A-Za-z0-9-_.],
// starting and ending alphanumeric (the value may be empty).
func validLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fmt.Errorf("at most %d labels", maxLabels)
	}
	for k, v := range labels {
		name := k
		if prefix, rest, ok := strings.Cut(k, "/"); ok {
			if err := validSubdomain(prefix); err != nil {
				return fmt.Errorf("key %q: prefix %v", k, err)
			}
			name = rest
		}
		if name == "" {
			return fmt.Errorf("key %q: name must not be empty", k)
		}
		if err := validLabelPart(name); err != nil {
			return fmt.Errorf("key %q: %v", k, err)
		}
		if v != "" {
			if err := validLabelPart(v); err != nil {
				return fmt.Errorf("value of %q: %v", k, err)
			}
		}
	}
	return nil
}

func validLabelPart(s string) error {
	if len(s) > 63 {
		return fmt.Errorf("must be at most 63 characters")
	}
	for _, r := range s {
		if !isAlnum(r) && r != '-' && r != '_' && r != '.' {
			return fmt.Errorf("may contain only letters, digits, '-', '_' and '.'")
		}
	}
	if !isAlnum(rune(s[0])) || !isAlnum(rune(s[len(s)-1])) {
		return fmt.Errorf("must start and end with a letter or digit")
	}
	return nil
}

func validSubdomain(s string) error {
	if s == "" || len(s) > 253 {
		return fmt.Errorf("must be 1-253 characters")
	}
	for _, part := range strings.Split(s, ".") {
		if err := validTenantName(part); err != nil {
			return fmt.Errorf("must be a DNS subdomain: %v", err)
		}
	}
	return nil
}

func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

func validDisplayName(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("must be valid UTF-8")
	}
	if utf8.RuneCountInString(s) > maxDisplayNameLen {
		return fmt.Errorf("must be at most %d characters", maxDisplayNameLen)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("must not contain control characters")
		}
	}
	return nil
}

// validTokenName: API token names appear in every audit actor.
func validTokenName(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	return validLabelPart(s)
}
