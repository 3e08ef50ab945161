package release

import (
	"errors"
	"fmt"
	"strings"
)

// Placeholders. A scalar placeholder may appear anywhere inside a template
// string (a step's resource, a params string at any depth); a whole-value
// placeholder only as the entire value of a params string, which it
// replaces with a structured value.
const (
	phTenant     = "tenant"
	phTier       = "tier"
	phVersion    = "version"
	phName       = "name"
	phImagesDot  = "images."
	phValuesDot  = "values."
	phFlags      = "flags"
	phMigrations = "migrations"
	phManifests  = "manifests"
	phImages     = "images"
)

// knownPlaceholders is the list given in errors.
const knownPlaceholders = "{{tenant}}, {{tier}}, {{version}}, {{name}}, {{images.<name>}}, {{values.<key>}}; " +
	"as the whole value of a parameter also {{flags}}, {{migrations}}, {{manifests}} and {{images}}"

// segment is a piece of a template string: literal text, or a placeholder
// (ph set, without braces or surrounding spaces).
type segment struct {
	lit string
	ph  string
}

// parseTemplate splits s into literal text and placeholders written
// {{name}} (spaces inside the braces are allowed). An unterminated "{{",
// an empty placeholder and a "{{" inside a placeholder are errors. It does
// not check the placeholder names.
func parseTemplate(s string) ([]segment, error) {
	if !strings.Contains(s, "{{") {
		return []segment{{lit: s}}, nil
	}
	var out []segment
	for {
		i := strings.Index(s, "{{")
		if i < 0 {
			if s != "" {
				out = append(out, segment{lit: s})
			}
			return out, nil
		}
		if i > 0 {
			out = append(out, segment{lit: s[:i]})
		}
		rest := s[i+2:]
		j := strings.Index(rest, "}}")
		if j < 0 {
			return nil, errors.New(`"{{" without a closing "}}"`)
		}
		inner := rest[:j]
		if strings.Contains(inner, "{{") {
			return nil, fmt.Errorf(`"{{" inside the placeholder {{%.64s}}`, inner)
		}
		name := strings.TrimSpace(inner)
		if name == "" {
			return nil, errors.New("empty placeholder {{}}")
		}
		out = append(out, segment{ph: name})
		s = rest[j+2:]
	}
}

// wholePlaceholder returns the placeholder s consists of, if s is exactly
// one placeholder.
func wholePlaceholder(s string) (string, bool) {
	segs, err := parseTemplate(s)
	if err != nil || len(segs) != 1 || segs[0].ph == "" {
		return "", false
	}
	return segs[0].ph, true
}

func isWholeOnly(ph string) bool {
	switch ph {
	case phFlags, phMigrations, phManifests, phImages:
		return true
	}
	return false
}

// checkTemplate checks the placeholders of the template string s
// statically against r: every placeholder is known, every image named
// exists, every tier value key is well-formed. inParams says whether s is
// a params value, where a whole-value placeholder may be the entire
// string. Whether each tier has the values named is checked by rendering.
func checkTemplate(r *Release, s string, inParams bool) error {
	segs, err := parseTemplate(s)
	if err != nil {
		return err
	}
	for _, seg := range segs {
		if seg.ph == "" {
			continue
		}
		if err := checkPlaceholder(r, seg.ph, inParams && len(segs) == 1); err != nil {
			return err
		}
	}
	return nil
}

func checkPlaceholder(r *Release, ph string, whole bool) error {
	switch {
	case ph == phTenant, ph == phTier, ph == phVersion, ph == phName:
		return nil
	case isWholeOnly(ph):
		if whole {
			return nil
		}
		if ph == phFlags {
			return errors.New(`{{flags}} must be the whole value of a parameter ("{{flags}}"): flags are never substituted inside strings`)
		}
		return fmt.Errorf(`{{%s}} must be the whole value of a parameter ("{{%s}}")`, ph, ph)
	case strings.HasPrefix(ph, phImagesDot):
		img := strings.TrimPrefix(ph, phImagesDot)
		if _, ok := r.Images[img]; !ok {
			return fmt.Errorf("{{%.80s}}: the release has no image %.64q", ph, img)
		}
		return nil
	case strings.HasPrefix(ph, phValuesDot):
		key := strings.TrimPrefix(ph, phValuesDot)
		if !validKey(key) {
			return fmt.Errorf("{{%.80s}}: %.64q is not a tier value key ([a-z0-9][a-z0-9_.-]{0,63})", ph, key)
		}
		return nil
	case strings.HasPrefix(ph, phFlags+"."):
		return fmt.Errorf(`unknown placeholder {{%.80s}}: flags are never substituted inside strings; pass the whole map with "{{flags}}"`, ph)
	default:
		return fmt.Errorf("unknown placeholder {{%.80s}} (known: %s)", ph, knownPlaceholders)
	}
}
