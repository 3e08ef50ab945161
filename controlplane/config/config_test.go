package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Default()
	c.Version = 2
	c.TrustDomain = "Not A Domain"
	c.Agent.Listen = "0.0.0.0:7440"
	c.LogLevel = "loud"
	err := c.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"version", "trust_domain", "agent.advertise", "log_level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

func TestLoadStrict(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("version: 1\ntrust_domain: example.org\nsvid_ttl: 30s\nagent:\n  listen: 127.0.0.1:1\n"), 0o600)
	c, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.TrustDomain != "example.org" || c.SVIDTTL.String() != "30s" {
		t.Fatalf("loaded %+v", c)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\ntrust_domian: typo.org\n"), 0o600)
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), "trust_domian") {
		t.Fatalf("unknown key accepted or not named: %v", err)
	}
}

func TestMetricsForms(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		yaml    string
		want    Metrics
		errLike string
	}{
		{"metrics: true\n", Metrics{Enabled: true}, ""},
		{"metrics: false\n", Metrics{}, ""},
		{"metrics:\n  enabled: true\n  max_tenant_series: 50\n", Metrics{Enabled: true, MaxTenantSeries: 50}, ""},
		{"metrics:\n  enabled: true\n  max_tenant_serie: 50\n", Metrics{}, "max_tenant_serie"},
		{"metrics: maybe\n", Metrics{}, "metrics"},
	} {
		p := filepath.Join(dir, "c.yaml")
		os.WriteFile(p, []byte("version: 1\n"+tc.yaml), 0o600)
		c, err := Load(p)
		if tc.errLike != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errLike) {
				t.Errorf("%q: err = %v, want one naming %q", tc.yaml, err, tc.errLike)
			}
			continue
		}
		if err != nil || c.Metrics != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.yaml, c.Metrics, err, tc.want)
		}
	}
	c := Default()
	c.Metrics.MaxTenantSeries = -1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "metrics.max_tenant_series") {
		t.Fatalf("negative max_tenant_series: %v", err)
	}
}

const billingYAML = `version: 1
billing:
  endpoint: https://api.stripe.com/v1/billing/meter_events
  api_key_env: STRIPE_KEY
  interval: 30s
  meters:
    api.requests: {event_name: api_requests}
    storage.bytes: {event_name: storage, aggregation: max}
`

func TestBilling(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, []byte(billingYAML), 0o600)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	b := c.Billing
	if b == nil || b.Endpoint != "https://api.stripe.com/v1/billing/meter_events" || b.Interval.String() != "30s" || b.Delay != 0 ||
		b.Meters["storage.bytes"] != (BillingMeter{EventName: "storage", Aggregation: "max"}) || b.Label() != DefaultCustomerLabel {
		t.Fatalf("billing = %+v", b)
	}

	// The key comes from the environment or a file, never the config.
	t.Setenv("STRIPE_KEY", "")
	if _, err := b.APIKey(); err == nil || !strings.Contains(err.Error(), "STRIPE_KEY") {
		t.Fatalf("unset env: %v", err)
	}
	t.Setenv("STRIPE_KEY", " sk_test_123\n")
	if k, err := b.APIKey(); err != nil || k != "sk_test_123" {
		t.Fatalf("key = %q, %v", k, err)
	}
	kf := filepath.Join(dir, "key")
	os.WriteFile(kf, []byte("sk_file\n"), 0o600)
	fb := Billing{APIKeyFile: kf}
	if k, err := fb.APIKey(); err != nil || k != "sk_file" {
		t.Fatalf("file key = %q, %v", k, err)
	}

	// Unknown keys inside billing are refused.
	os.WriteFile(p, []byte(strings.Replace(billingYAML, "interval:", "intervall:", 1)), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "intervall") {
		t.Fatalf("unknown billing key: %v", err)
	}
	os.WriteFile(p, []byte(strings.Replace(billingYAML, "{event_name: api_requests}", "{event_name: api_requests, agg: sum}", 1)), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "agg") {
		t.Fatalf("unknown meter key: %v", err)
	}

	// Every problem at once, each naming its key.
	c = Default()
	c.Billing = &Billing{
		Endpoint:      "http://billing.example.com/events",
		APIKeyEnv:     "KEY",
		APIKeyFile:    "/etc/key",
		Interval:      Duration(time.Millisecond),
		Delay:         Duration(48 * time.Hour),
		Meters:        map[string]BillingMeter{"Bad Meter": {EventName: "x"}, "ok.meter": {Aggregation: "avg"}},
		CustomerLabel: "no spaces",
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("invalid billing accepted")
	}
	for _, want := range []string{"billing.endpoint", "not both", "billing.interval", "billing.delay", `"Bad Meter"`,
		"billing.meters.ok.meter.event_name", "billing.meters.ok.meter.aggregation", "billing.customer_label"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
	c.Billing = &Billing{Endpoint: "http://127.0.0.1:9/x", Meters: map[string]BillingMeter{"a": {EventName: "a"}}}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "api_key_env or api_key_file") {
		t.Fatalf("no key source: %v", err)
	}
	c.Billing.APIKeyEnv = "1BAD"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "billing.api_key_env") {
		t.Fatalf("bad env name: %v", err)
	}
	c.Billing.APIKeyEnv = "GOOD_KEY"
	if err := c.Validate(); err != nil {
		t.Fatalf("loopback http endpoint: %v", err)
	}
	c.Billing.Meters = nil
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "billing.meters") {
		t.Fatalf("no meters: %v", err)
	}
}
