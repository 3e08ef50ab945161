package agentcli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"

	"attache.dev/attache/agent/catalog"
	"attache.dev/attache/internal/yamldoc"
)

// MaxConfigBytes bounds the agent's config file.
const MaxConfigBytes = 1 << 20

// Config is the agent's config file (--config), written by the customer:
// which provider plugins the agent may run, pinned by checksum, and their
// configuration.
//
//	providers:
//	  - name: local
//	    path: /usr/local/libexec/attache/attache-provider-local
//	    sha256: 3f1c…   # attache-agent provider pin prints it
//	    config:
//	      root: /var/lib/attache/local
//	      bin_dir: /opt/vendor/bin
type Config struct {
	Providers []catalog.Entry `json:"providers"`
}

// LoadConfig reads and validates a config file strictly: unknown keys are
// errors, every problem is reported at once, and a file others may write is
// refused (it decides which programs the agent runs).
func LoadConfig(path string) (*Config, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("config: %s is writable by group or others (mode %04o): it decides which programs the agent runs; chmod go-w it", path, fi.Mode().Perm())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(b) > MaxConfigBytes {
		return nil, fmt.Errorf("config: %s is larger than %d bytes", path, MaxConfigBytes)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes YAML (or JSON) config strictly and validates it:
// one document, no duplicate keys, no unknown keys.
func ParseConfig(b []byte) (*Config, error) {
	if yamldoc.Multiple(b) {
		return nil, errors.New("more than one YAML document; the config is a single document")
	}
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode: more than one document")
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	if err := catalog.Validate(c.Providers); err != nil {
		return err
	}
	return nil
}

// FileSHA256 returns the hex SHA-256 of the file at path, the value a
// provider entry pins.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// PinEntry returns the config entry pinning the provider binary at path.
func PinEntry(name, path string, config json.RawMessage) (catalog.Entry, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return catalog.Entry{}, err
	}
	sum, err := FileSHA256(abs)
	if err != nil {
		return catalog.Entry{}, err
	}
	e := catalog.Entry{Name: name, Path: abs, SHA256: sum, Config: config}
	if err := catalog.Validate([]catalog.Entry{e}); err != nil {
		return catalog.Entry{}, err
	}
	return e, nil
}
