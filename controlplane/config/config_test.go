package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
