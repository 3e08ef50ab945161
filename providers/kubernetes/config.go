package kubernetes

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Config is the provider's configuration (ConfigureRequest.config), decoded
// strictly: an unknown key is refused.
type Config struct {
	// Kubeconfig is the absolute path of a kubeconfig file; empty means
	// in-cluster (the pod's ServiceAccount token and the cluster's CA).
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// Context is the kubeconfig context to use (default: its current one).
	Context string `json:"context,omitempty"`
	// NamespacePrefix starts every tenant namespace's name (default
	// "tenant-"): tenant acme lives in namespace tenant-acme.
	NamespacePrefix string `json:"namespace_prefix,omitempty"`
	// Tiers are the ResourceQuota and LimitRange per tier; a tier named
	// here replaces the built-in one of that name (pool, bridge, silo,
	// byoc).
	Tiers map[string]Tier `json:"tiers,omitempty"`
	// SecretsDir is the absolute directory namespace.provision's secrets
	// name files in.
	SecretsDir string `json:"secrets_dir,omitempty"`
	// AgentServiceAccount is the agent's ServiceAccount, "namespace/name"
	// (default "attache-system/attache-agent"); each tenant namespace gets
	// a RoleBinding granting it AgentClusterRole there.
	AgentServiceAccount string `json:"agent_service_account,omitempty"`
	// AgentClusterRole is the ClusterRole holding what the actions need
	// inside a tenant namespace (default "attache-agent-tenant").
	AgentClusterRole string `json:"agent_cluster_role,omitempty"`
	// PodSecurity is the Pod Security Standard enforced in tenant
	// namespaces: restricted (default), baseline or privileged.
	PodSecurity string `json:"pod_security,omitempty"`
	// QPS and Burst bound the client's request rate (default 500 and
	// 1000: a fresh tenant namespace takes 12 requests, and the API
	// server's priority and fairness protects it from a busy client).
	QPS   float64 `json:"qps,omitempty"`
	Burst int     `json:"burst,omitempty"`
	// Timeout bounds each API request (Go duration, default "30s").
	Timeout string `json:"timeout,omitempty"`
}

// Tier is one tier's resource limits for a tenant namespace.
type Tier struct {
	// Quota is the namespace's ResourceQuota: resource name → quantity,
	// e.g. {"requests.cpu": "2", "limits.memory": "8Gi", "pods": "20"}.
	Quota map[string]string `json:"quota,omitempty"`
	// Limits are the LimitRange's defaults for containers that set none.
	Limits Limits `json:"limits"`
}

// Limits are a LimitRange's container defaults (quantities).
type Limits struct {
	DefaultCPU           string `json:"default_cpu,omitempty"`
	DefaultMemory        string `json:"default_memory,omitempty"`
	DefaultRequestCPU    string `json:"default_request_cpu,omitempty"`
	DefaultRequestMemory string `json:"default_request_memory,omitempty"`
}

// Defaults.
const (
	DefaultNamespacePrefix     = "tenant-"
	DefaultAgentServiceAccount = "attache-system/attache-agent"
	DefaultAgentClusterRole    = "attache-agent-tenant"
	DefaultPodSecurity         = "restricted"
	DefaultQPS                 = 500
	DefaultBurst               = 1000
	DefaultTimeout             = 30 * time.Second
)

// DefaultTiers are the built-in tiers. A tier's quota caps what the
// namespace's pods may request and use in total; its limits are what a
// container gets when it sets none (so every pod fits under a quota that
// names requests.* and limits.*).
func DefaultTiers() map[string]Tier {
	tier := func(reqCPU, reqMem, limCPU, limMem, pods string, l Limits) Tier {
		return Tier{Quota: map[string]string{
			"requests.cpu": reqCPU, "requests.memory": reqMem,
			"limits.cpu": limCPU, "limits.memory": limMem, "pods": pods,
		}, Limits: l}
	}
	small := Limits{DefaultCPU: "500m", DefaultMemory: "512Mi", DefaultRequestCPU: "100m", DefaultRequestMemory: "128Mi"}
	large := Limits{DefaultCPU: "1", DefaultMemory: "1Gi", DefaultRequestCPU: "250m", DefaultRequestMemory: "256Mi"}
	return map[string]Tier{
		"pool":   tier("2", "4Gi", "4", "8Gi", "20", small),
		"bridge": tier("4", "8Gi", "8", "16Gi", "50", small),
		"silo":   tier("16", "32Gi", "32", "64Gi", "200", large),
		"byoc":   tier("64", "128Gi", "128", "256Gi", "1000", large),
	}
}

// settings is a validated Config with defaults applied.
type settings struct {
	Config
	tiers     map[string]Tier
	agentNS   string // the agent ServiceAccount's namespace
	agentName string // and name
	timeout   time.Duration
}

// fieldError is one problem with one configuration field.
type fieldError struct {
	field, msg string
}

func (e fieldError) Error() string { return e.field + ": " + e.msg }

// Validate reports every problem with c at once (errors.Join of one error
// per field, each naming it, e.g. "config.tiers.pool.quota.cpu: ...").
func (c Config) Validate() error {
	_, err := c.settings()
	return err
}

// settings validates c and returns it with defaults applied.
func (c Config) settings() (settings, error) {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fieldError{field: "config." + field, msg: fmt.Sprintf(format, args...)})
	}
	s := settings{Config: c}
	if c.Kubeconfig != "" && !filepath.IsAbs(c.Kubeconfig) {
		fail("kubeconfig", "must be an absolute path, got %q", c.Kubeconfig)
	}
	if c.Context != "" && c.Kubeconfig == "" {
		fail("context", "needs kubeconfig (in-cluster configuration has no contexts)")
	}
	if s.NamespacePrefix == "" {
		s.NamespacePrefix = DefaultNamespacePrefix
	}
	if !prefixRE.MatchString(s.NamespacePrefix) {
		fail("namespace_prefix", "must be lower-case letters, digits and '-', start with a letter and be at most 20 characters, got %q", s.NamespacePrefix)
	}
	if s.SecretsDir != "" && !filepath.IsAbs(s.SecretsDir) {
		fail("secrets_dir", "must be an absolute directory, got %q", s.SecretsDir)
	}
	if s.AgentServiceAccount == "" {
		s.AgentServiceAccount = DefaultAgentServiceAccount
	}
	ns, name, ok := strings.Cut(s.AgentServiceAccount, "/")
	if !ok || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(name)) > 0 {
		fail("agent_service_account", "must be \"namespace/name\" (a namespace and a ServiceAccount name), got %q", s.AgentServiceAccount)
	}
	s.agentNS, s.agentName = ns, name
	if s.AgentClusterRole == "" {
		s.AgentClusterRole = DefaultAgentClusterRole
	}
	if msgs := validation.IsDNS1123Subdomain(s.AgentClusterRole); len(msgs) > 0 {
		fail("agent_cluster_role", "must be a ClusterRole name: %s", strings.Join(msgs, "; "))
	}
	switch s.PodSecurity {
	case "":
		s.PodSecurity = DefaultPodSecurity
	case "restricted", "baseline", "privileged":
	default:
		fail("pod_security", "must be restricted, baseline or privileged, got %q", s.PodSecurity)
	}
	switch {
	case c.QPS == 0:
		s.QPS = DefaultQPS
	case c.QPS < 0 || c.QPS > 10000:
		fail("qps", "must be between 0 and 10000, got %g", c.QPS)
	}
	switch {
	case c.Burst == 0:
		s.Burst = max(DefaultBurst, int(s.QPS))
	case c.Burst < 1 || c.Burst > 20000:
		fail("burst", "must be between 1 and 20000, got %d", c.Burst)
	}
	s.timeout = DefaultTimeout
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d <= 0 || d > time.Hour {
			fail("timeout", "must be a positive duration of at most 1h such as \"30s\", got %q", c.Timeout)
		} else {
			s.timeout = d
		}
	}
	s.tiers = DefaultTiers()
	for _, name := range slices.Sorted(maps.Keys(c.Tiers)) {
		t := c.Tiers[name]
		if len(validation.IsDNS1123Label(name)) > 0 {
			fail("tiers", "tier name %q must be a DNS label", name)
			continue
		}
		errs = append(errs, t.validate("config.tiers."+name)...)
		s.tiers[name] = t
	}
	return s, errors.Join(errs...)
}

// validate checks a tier's quantities and resource names.
func (t Tier) validate(field string) []error {
	var errs []error
	fail := func(f, format string, args ...any) {
		errs = append(errs, fieldError{field: field + "." + f, msg: fmt.Sprintf(format, args...)})
	}
	if len(t.Quota) == 0 {
		fail("quota", "must name at least one resource (e.g. requests.cpu)")
	}
	for _, r := range slices.Sorted(maps.Keys(t.Quota)) {
		if msgs := content.IsLabelKey(r); len(msgs) > 0 {
			fail("quota", "resource name %q: %s", r, strings.Join(msgs, "; "))
			continue
		}
		if _, err := resource.ParseQuantity(t.Quota[r]); err != nil {
			fail("quota."+r, "must be a quantity such as \"2\", \"500m\" or \"4Gi\", got %q", t.Quota[r])
		}
	}
	q := map[string]*resource.Quantity{}
	for f, v := range map[string]string{"default_cpu": t.Limits.DefaultCPU, "default_memory": t.Limits.DefaultMemory,
		"default_request_cpu": t.Limits.DefaultRequestCPU, "default_request_memory": t.Limits.DefaultRequestMemory} {
		if v == "" {
			fail("limits."+f, "required")
			continue
		}
		x, err := resource.ParseQuantity(v)
		if err != nil || x.Sign() <= 0 {
			fail("limits."+f, "must be a positive quantity, got %q", v)
			continue
		}
		q[f] = &x
	}
	for _, r := range []string{"cpu", "memory"} {
		req, lim := q["default_request_"+r], q["default_"+r]
		if req != nil && lim != nil && req.Cmp(*lim) > 0 {
			fail("limits.default_request_"+r, "%s is more than default_%s %s", req, r, lim)
		}
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errs
}

// invalidConfig turns Validate's error into one InvalidArgument status
// naming every field.
func invalidConfig(err error) error {
	var fes []fieldError
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		var fe fieldError
		if errors.As(e, &fe) {
			fes = append(fes, fe)
		} else {
			fes = append(fes, fieldError{field: "config", msg: e.Error()})
		}
	}
	walk(err)
	return invalidFields(fes)
}

// invalidFields is one InvalidArgument status naming every field.
func invalidFields(fes []fieldError) error {
	msgs := make([]string, len(fes))
	br := &errdetails.BadRequest{}
	for i, fe := range fes {
		msgs[i] = fe.Error()
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: fe.field, Description: fe.msg})
	}
	st := status.New(codes.InvalidArgument, strings.Join(msgs, "; "))
	if d, err := st.WithDetails(br); err == nil {
		st = d
	}
	return st.Err()
}
