package agentcli

import (
	"strings"
	"testing"
	"time"

	"attache.dev/attache/agent/telemetry"
)

// TestParseConfigAppMetrics: the app_metrics key is strict and validated,
// every problem at once, and turns into the collector's settings.
func TestParseConfigAppMetrics(t *testing.T) {
	c, err := ParseConfig([]byte("app_metrics:\n  url: http://127.0.0.1:8080/metrics\n  tenant_label: customer\n  timeout: 10s\n"))
	if err != nil {
		t.Fatal(err)
	}
	am, err := c.AppMetrics.Telemetry()
	if err != nil {
		t.Fatal(err)
	}
	if *am != (telemetry.AppMetrics{URL: "http://127.0.0.1:8080/metrics", TenantLabel: "customer", Timeout: 10 * time.Second}) {
		t.Fatalf("settings %+v", am)
	}
	c, err = ParseConfig([]byte("app_metrics: {url: 'https://app.internal/metrics'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if am, _ := c.AppMetrics.Telemetry(); am.Timeout != 0 || am.TenantLabel != "" {
		t.Fatalf("defaults are left to telemetry: %+v", am)
	}
	c, err = ParseConfig([]byte("providers: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if am, err := c.AppMetrics.Telemetry(); am != nil || err != nil {
		t.Fatalf("without app_metrics: %+v, %v", am, err)
	}

	for _, tc := range []struct {
		name string
		in   string
		want []string
	}{
		{"unknown key", "app_metrics:\n  url: http://127.0.0.1/metrics\n  interval: 10s\n", []string{`unknown field "interval"`}},
		{"no url", "app_metrics: {timeout: 5s}\n", []string{"app_metrics: url is required"}},
		{"everything wrong", "app_metrics:\n  url: unix:///run/app.sock\n  tenant_label: 'a-b'\n  timeout: 2m\n",
			[]string{"scheme must be http or https", `tenant_label: "a-b"`, "timeout: 2m0s is outside"}},
		{"not a duration", "app_metrics: {url: 'http://127.0.0.1/m', timeout: soon}\n", []string{`timeout: "soon" is not a duration`}},
		{"zero timeout", "app_metrics: {url: 'http://127.0.0.1/m', timeout: 0s}\n", []string{"timeout: must be between 1s and 1m0s"}},
		{"too short", "app_metrics: {url: 'http://127.0.0.1/m', timeout: 500ms}\n", []string{"timeout: 500ms is outside"}},
		{"credentials", "app_metrics: {url: 'http://u:p@127.0.0.1/m'}\n", []string{"credentials in the URL"}},
		{"provider named app", "providers:\n  - name: app\n    path: /p\n    sha256: " + sumA + "\napp_metrics: {url: 'http://127.0.0.1/m'}\n",
			[]string{`a provider named "app"`}},
		{"with provider problems", "providers:\n  - name: Bad\n    path: /p\n    sha256: " + sumA + "\napp_metrics: {url: 'ftp://x/m'}\n",
			[]string{"name must be a DNS label", "scheme must be http or https"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.in))
			if err == nil {
				t.Fatalf("accepted: %+v", c.AppMetrics)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	// A provider named app is fine without app_metrics.
	if _, err := ParseConfig([]byte("providers:\n  - name: app\n    path: /p\n    sha256: " + sumA + "\n")); err != nil {
		t.Errorf("provider named app without app_metrics: %v", err)
	}
}
