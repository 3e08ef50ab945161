package upgrade

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Validate checks req without talking to the cluster and reports every
// problem at once, each naming its field: namespace, deployment, images,
// images[<container>], progress_deadline, probe.service, probe.port,
// probe.path, probe.scheme, probe.expect. Whether the containers exist is
// checked by Upgrade against the live Deployment.
func Validate(req Request) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	for _, msg := range validation.IsDNS1123Label(req.Namespace) {
		bad("namespace", "%q: %s", req.Namespace, msg)
	}
	for _, msg := range validation.IsDNS1123Subdomain(req.Deployment) {
		bad("deployment", "%q: %s", req.Deployment, msg)
	}
	if len(req.Images) == 0 {
		bad("images", "at least one container image is required")
	}
	for _, name := range sortedKeys(req.Images) {
		field := fmt.Sprintf("images[%s]", name)
		for _, msg := range validation.IsDNS1123Label(name) {
			bad(field, "container name %q: %s", name, msg)
		}
		if err := checkImage(req.Images[name]); err != nil {
			bad(field, "%v", err)
		}
	}
	switch d := req.ProgressDeadline; {
	case d == 0:
	case d < MinProgressDeadline || d > MaxProgressDeadline:
		bad("progress_deadline", "%s is outside %s..%s", d, MinProgressDeadline, MaxProgressDeadline)
	case d%time.Second != 0:
		bad("progress_deadline", "%s is not a whole number of seconds", d)
	}
	if p := req.Probe; p != nil {
		if p.Service != "" {
			for _, msg := range validation.IsDNS1035Label(p.Service) {
				bad("probe.service", "%q: %s", p.Service, msg)
			}
		}
		if p.Port < 1 || p.Port > 65535 {
			bad("probe.port", "%d is outside 1..65535", p.Port)
		}
		if !strings.HasPrefix(p.Path, "/") {
			bad("probe.path", "%q must start with '/'", p.Path)
		} else if u, err := url.ParseRequestURI(p.Path); err != nil || u.Host != "" || strings.ContainsAny(p.Path, "# \t") {
			bad("probe.path", "%q is not a URL path (with an optional query)", p.Path)
		}
		if p.Scheme != "" && p.Scheme != "http" && p.Scheme != "https" {
			bad("probe.scheme", "%q: want http or https", p.Scheme)
		}
		if p.Expect != 0 && (p.Expect < 100 || p.Expect > 599) {
			bad("probe.expect", "%d is outside 100..599", p.Expect)
		}
	}
	return errors.Join(errs...)
}

// withDefaults fills the zero values Validate allows.
func (r Request) withDefaults() Request {
	if r.ProgressDeadline == 0 {
		r.ProgressDeadline = DefaultProgressDeadline
	}
	if r.Probe != nil {
		p := *r.Probe
		if p.Scheme == "" {
			p.Scheme = "http"
		}
		if p.Expect == 0 {
			p.Expect = 200
		}
		r.Probe = &p
	}
	return r
}

// imageRef is the reference grammar of distribution/reference (the one
// container runtimes parse), restricted to references pinned by a sha256
// digest: [domain[:port]/]path[:tag]@sha256:<64 lowercase hex>.
var imageRef = func() *regexp.Regexp {
	const (
		alnum      = `[a-z0-9]+`
		separator  = `(?:[._]|__|[-]+)`
		component  = alnum + `(?:` + separator + alnum + `)*`
		domainPart = `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])`
		host       = `(?:` + domainPart + `(?:\.` + domainPart + `)*|\[[a-fA-F0-9:]+\])`
		domain     = host + `(?::[0-9]+)?`
		name       = `(?:` + domain + `/)?` + component + `(?:/` + component + `)*`
		tag        = `[\w][\w.-]{0,127}`
		digest     = `sha256:[a-f0-9]{64}`
	)
	return regexp.MustCompile(`^(` + name + `)(?::` + tag + `)?@` + digest + `$`)
}()

// digestRef is the digest part of an image reference.
var digestRef = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)

// checkImage says what is wrong with an image reference, or nil.
func checkImage(ref string) error {
	if ref == "" {
		return errors.New("empty image reference")
	}
	at := strings.LastIndexByte(ref, '@')
	if at < 0 {
		return fmt.Errorf("%q is not pinned by digest: want repo[:tag]@sha256:<64 lowercase hex>", ref)
	}
	if d := ref[at+1:]; !digestRef.MatchString(d) {
		return fmt.Errorf("%q: digest %q is not sha256:<64 lowercase hex>", ref, d)
	}
	m := imageRef.FindStringSubmatch(ref)
	if m == nil {
		return fmt.Errorf("%q is not a valid image reference: want repo[:tag]@sha256:<64 lowercase hex>", ref)
	}
	if len(m[1]) > 255 {
		return fmt.Errorf("%q: repository name longer than 255 characters", ref)
	}
	return nil
}
