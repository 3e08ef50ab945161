package upgrade_test

import (
	"strings"
	"testing"
	"time"

	"attache.dev/attache/providers/kubernetes/upgrade"
)

const (
	hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hexB = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func TestValidate(t *testing.T) {
	valid := func() upgrade.Request {
		return upgrade.Request{
			Namespace:  "tenant-acme",
			Deployment: "web",
			Images:     map[string]string{"web": "registry.example.com/acme/web:1.2@sha256:" + hexA},
		}
	}
	tests := []struct {
		name   string
		modify func(r *upgrade.Request)
		want   []string // substrings of the error; none = valid
	}{
		{"valid", func(r *upgrade.Request) {}, nil},
		{"valid without tag", func(r *upgrade.Request) { r.Images["web"] = "web@sha256:" + hexB }, nil},
		{"valid with port and deep path", func(r *upgrade.Request) {
			r.Images["web"] = "localhost:5000/a/b-c/d__e:v1.0-rc.1@sha256:" + hexB
		}, nil},
		{"valid deadline bounds", func(r *upgrade.Request) { r.ProgressDeadline = 10 * time.Second }, nil},
		{"valid max deadline", func(r *upgrade.Request) { r.ProgressDeadline = time.Hour }, nil},
		{"valid probe", func(r *upgrade.Request) {
			r.Probe = &upgrade.Probe{Service: "web", Port: 8443, Path: "/healthz?verbose=1", Scheme: "https", Expect: 204}
		}, nil},
		{"valid pod probe with defaults", func(r *upgrade.Request) { r.Probe = &upgrade.Probe{Port: 80, Path: "/"} }, nil},

		{"bad namespace", func(r *upgrade.Request) { r.Namespace = "Tenant_Acme" }, []string{"namespace:"}},
		{"empty namespace", func(r *upgrade.Request) { r.Namespace = "" }, []string{"namespace:"}},
		{"bad deployment", func(r *upgrade.Request) { r.Deployment = "web/x" }, []string{"deployment:"}},
		{"no images", func(r *upgrade.Request) { r.Images = nil }, []string{"images: at least one"}},
		{"tag only", func(r *upgrade.Request) { r.Images["web"] = "registry.example.com/web:1.2" },
			[]string{"images[web]", "not pinned by digest"}},
		{"uppercase digest", func(r *upgrade.Request) { r.Images["web"] = "web@sha256:" + strings.ToUpper(hexA) },
			[]string{"images[web]", "digest"}},
		{"short digest", func(r *upgrade.Request) { r.Images["web"] = "web@sha256:abc" }, []string{"images[web]", "digest"}},
		{"other algorithm", func(r *upgrade.Request) { r.Images["web"] = "web@sha512:" + hexA + hexA },
			[]string{"images[web]", "digest"}},
		{"uppercase repository", func(r *upgrade.Request) { r.Images["web"] = "registry.example.com/Web@sha256:" + hexA },
			[]string{"images[web]", "not a valid image reference"}},
		{"space in reference", func(r *upgrade.Request) { r.Images["web"] = "web app@sha256:" + hexA },
			[]string{"images[web]"}},
		{"empty image", func(r *upgrade.Request) { r.Images["web"] = "" }, []string{"images[web]: empty"}},
		{"bad container name", func(r *upgrade.Request) { r.Images["Web_1"] = "web@sha256:" + hexA },
			[]string{"images[Web_1]: container name"}},
		{"deadline too short", func(r *upgrade.Request) { r.ProgressDeadline = 9 * time.Second },
			[]string{"progress_deadline:"}},
		{"deadline too long", func(r *upgrade.Request) { r.ProgressDeadline = time.Hour + time.Second },
			[]string{"progress_deadline:"}},
		{"deadline negative", func(r *upgrade.Request) { r.ProgressDeadline = -time.Minute }, []string{"progress_deadline:"}},
		{"deadline fraction", func(r *upgrade.Request) { r.ProgressDeadline = 10500 * time.Millisecond },
			[]string{"progress_deadline:", "whole number of seconds"}},
		{"probe port zero", func(r *upgrade.Request) { r.Probe = &upgrade.Probe{Path: "/"} }, []string{"probe.port:"}},
		{"probe port too big", func(r *upgrade.Request) { r.Probe = &upgrade.Probe{Port: 65536, Path: "/"} },
			[]string{"probe.port:"}},
		{"probe path relative", func(r *upgrade.Request) { r.Probe = &upgrade.Probe{Port: 80, Path: "healthz"} },
			[]string{"probe.path:"}},
		{"probe path empty", func(r *upgrade.Request) { r.Probe = &upgrade.Probe{Port: 80} }, []string{"probe.path:"}},
		{"probe path fragment", func(r *upgrade.Request) { r.Probe = &upgrade.Probe{Port: 80, Path: "/a#b"} },
			[]string{"probe.path:"}},
		{"probe scheme", func(r *upgrade.Request) { r.Probe = &upgrade.Probe{Port: 80, Path: "/", Scheme: "ftp"} },
			[]string{"probe.scheme:"}},
		{"probe expect low", func(r *upgrade.Request) { r.Probe = &upgrade.Probe{Port: 80, Path: "/", Expect: 99} },
			[]string{"probe.expect:"}},
		{"probe expect high", func(r *upgrade.Request) { r.Probe = &upgrade.Probe{Port: 80, Path: "/", Expect: 600} },
			[]string{"probe.expect:"}},
		{"probe service name", func(r *upgrade.Request) {
			r.Probe = &upgrade.Probe{Service: "1web", Port: 80, Path: "/"}
		}, []string{"probe.service:"}},
		{"every problem at once", func(r *upgrade.Request) {
			r.Namespace = ""
			r.Images["web"] = "web:latest"
			r.ProgressDeadline = time.Second
			r.Probe = &upgrade.Probe{}
		}, []string{"namespace:", "images[web]", "progress_deadline:", "probe.port:", "probe.path:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := valid()
			tt.modify(&r)
			err := upgrade.Validate(r)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: no error, want one mentioning %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate error %q does not mention %q", err, w)
				}
			}
		})
	}
}
