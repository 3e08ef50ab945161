// Package kubernetes is attache-provider-kubernetes: it runs tenants in
// namespaces of one Kubernetes cluster, with the actions
//
//   - namespace.provision: a namespace per tenant, labelled for it, with a
//     default-deny NetworkPolicy, same-namespace and declared ingress
//     allowances, ResourceQuota and LimitRange from the tenant's tier, a
//     ServiceAccount with a read-only Role, Secrets from files, and the
//     RoleBinding through which the least-privileged agent works there;
//   - manifests.apply: a release's rendered manifests, applied into the
//     tenant's namespace with an inventory so later applies prune what they
//     no longer hold (providers/kubernetes/inventory);
//   - deployment.upgrade: new images by digest, a health-checked rollout and
//     a rollback with the reason on failure (providers/kubernetes/upgrade);
//   - namespace.erase: the namespace and everything in it, then a check that
//     nothing labelled for the tenant remains,
//
// plus Plan (a server-side dry run, and drift for manifests), Health
// (deployment availability and drift per tenant namespace) and Usage
// (requested CPU and memory per tenant namespace). Everything is created by
// server-side apply with field manager "attache"; every action is idempotent.
// The agent's own RBAC is in providers/kubernetes/rbac.
//
// Imported by its command (cmd/attache-provider-kubernetes) and its tests;
// the agent runs the binary through agent/catalog.
package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Name is the provider's name; its binary is attache-provider-kubernetes.
const Name = "kubernetes"

// FieldManager is the server-side apply field manager of every object the
// provider applies.
const FieldManager = "attache"

// Labels on everything the provider creates.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedByValue = "attache"
	LabelTenant    = "attache.dev/tenant"
	// LabelSource marks what namespace.provision created (and may prune).
	LabelSource = "attache.dev/source"
	LabelTier   = "attache.dev/tier"
)

// Provider is the Kubernetes provider. Create it with New, then Configure it.
type Provider struct {
	version string
	log     *slog.Logger

	mu    sync.Mutex // guards the fields below
	env   *env       // nil until configured
	locks map[string]*sync.Mutex
}

var _ sdk.Provider = (*Provider)(nil)

// New returns an unconfigured provider reporting version in Describe.
func New(log *slog.Logger, version string) *Provider {
	return &Provider{version: version, log: log, locks: map[string]*sync.Mutex{}}
}

// env is one configuration and its clients.
type env struct {
	log *slog.Logger
	s   settings
	c   *clients
}

// Describe lists the actions.
func (p *Provider) Describe(context.Context) (*providerv1.DescribeResponse, error) {
	resp := &providerv1.DescribeResponse{Name: Name, Version: p.version}
	for _, a := range actions {
		resp.Actions = append(resp.Actions, a.info)
	}
	sort.Slice(resp.Actions, func(i, j int) bool { return resp.Actions[i].GetName() < resp.Actions[j].GetName() })
	return resp, nil
}

// Configure validates the configuration and builds the clients. An API
// server that cannot be reached does not fail Configure (Health reports it,
// and every action tries again); a configuration that is wrong does.
func (p *Provider) Configure(ctx context.Context, req *providerv1.ConfigureRequest) error {
	var cfg Config
	if err := sdk.DecodeConfig(req, &cfg); err != nil {
		return err
	}
	s, err := cfg.settings()
	if err != nil {
		return invalidConfig(err)
	}
	rc, err := s.restConfig(p.version)
	if err != nil {
		return invalidConfig(err)
	}
	c, err := newClients(rc, p.log)
	if err != nil {
		return invalidConfig(fieldError{field: "config", msg: err.Error()})
	}
	p.mu.Lock()
	p.env = &env{log: p.log, s: s, c: c}
	p.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := serverVersion(cctx, c)
	if err != nil {
		p.log.Warn("configured, but the API server is not reachable yet; actions will try again", "tenant", req.GetTenant().GetTenant(), "host", rc.Host, "err", err)
		return nil
	}
	p.log.Info("configured", "tenant", req.GetTenant().GetTenant(), "host", rc.Host, "server_version", v, "namespace_prefix", s.NamespacePrefix)
	return nil
}

// serverVersion asks the API server for its version.
func serverVersion(ctx context.Context, c *clients) (string, error) {
	b, err := c.kube.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
	if err != nil {
		return "", err
	}
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return "", err
	}
	return v.GitVersion, nil
}

// getEnv returns the configured environment or FailedPrecondition.
func (p *Provider) getEnv() (*env, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.env == nil {
		return nil, sdk.FailedPrecondition("provider %q is not configured (call Configure first)", Name)
	}
	return p.env, nil
}

// lock serializes the actions on one tenant; tenants proceed in parallel.
func (p *Provider) lock(tenant string) func() {
	p.mu.Lock()
	m, ok := p.locks[tenant]
	if !ok {
		m = &sync.Mutex{}
		p.locks[tenant] = m
	}
	p.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// Plan returns the changes step would make, changing nothing.
func (p *Provider) Plan(ctx context.Context, step *providerv1.Step) ([]*providerv1.Change, error) {
	a, err := lookup(step)
	if err != nil {
		return nil, err
	}
	e, err := p.getEnv()
	if err != nil {
		return nil, err
	}
	spec, err := a.parse(e, step)
	if err != nil {
		return nil, err
	}
	cs, err := a.plan(ctx, e, spec)
	if err != nil {
		return nil, scrubErr(err, spec.secrets())
	}
	return scrubChanges(cs.proto(), spec.secrets()), nil
}

// Apply carries step out.
func (p *Provider) Apply(ctx context.Context, step *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	a, err := lookup(step)
	if err != nil {
		return nil, err
	}
	e, err := p.getEnv()
	if err != nil {
		return nil, err
	}
	spec, err := a.parse(e, step)
	if err != nil {
		return nil, err
	}
	defer p.lock(spec.tenantID())()
	p.log.Info("apply", "step", step.GetId(), "action", step.GetAction(), "tenant", spec.tenantID(), "plan", step.GetPlanId(), "attempt", step.GetAttempt())
	secrets := spec.secrets()
	scrubbed := func(pr *providerv1.Progress) {
		if progress != nil {
			pr.Message = scrub(pr.GetMessage(), secrets)
			progress(pr)
		}
	}
	res, err := a.apply(ctx, e, spec, scrubbed)
	if err != nil {
		return nil, scrubErr(err, secrets)
	}
	return scrubResult(res, secrets), nil
}

// lookup validates the step's action and tenant.
func lookup(step *providerv1.Step) (action, error) {
	a, ok := actions[step.GetAction()]
	if !ok {
		names := make([]string, 0, len(actions))
		for n := range actions {
			names = append(names, n)
		}
		sort.Strings(names)
		return action{}, sdk.InvalidArgument("action", "unknown action %q (known: %s)", step.GetAction(), strings.Join(names, ", "))
	}
	if msgs := validation.IsDNS1123Label(step.GetTenant()); len(msgs) > 0 {
		return action{}, sdk.InvalidArgument("tenant", "must be a DNS label (lower-case letters, digits and '-', at most 63), got %q", step.GetTenant())
	}
	return a, nil
}

// spec is a validated step.
type spec interface {
	tenantID() string
	// secrets are the values no output may show.
	secrets() []string
}

// action is one action the provider offers: parse validates the step into
// a spec (InvalidArgument naming the field), plan and apply act on it.
type action struct {
	info  *providerv1.ActionInfo
	parse func(e *env, step *providerv1.Step) (spec, error)
	plan  func(ctx context.Context, e *env, s spec) (changes, error)
	apply func(ctx context.Context, e *env, s spec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error)
}

// actions lists every action by name.
var actions = map[string]action{}

// register adds an action whose spec has type T.
func register[T spec](info *providerv1.ActionInfo,
	parse func(e *env, step *providerv1.Step) (T, error),
	plan func(ctx context.Context, e *env, s T) (changes, error),
	apply func(ctx context.Context, e *env, s T, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error),
) {
	actions[info.GetName()] = action{
		info: info,
		parse: func(e *env, step *providerv1.Step) (spec, error) {
			s, err := parse(e, step)
			if err != nil {
				return nil, err
			}
			return s, nil
		},
		plan: func(ctx context.Context, e *env, s spec) (changes, error) { return plan(ctx, e, s.(T)) },
		apply: func(ctx context.Context, e *env, s spec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
			return apply(ctx, e, s.(T), progress)
		},
	}
}

// apiError turns an API error into a gRPC status error naming what was
// being done: NotFound and conflicts are FailedPrecondition, Forbidden is
// PermissionDenied, an unreachable server Unavailable; context errors stay.
func apiError(what string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case apierrors.IsForbidden(err):
		return status.Errorf(codes.PermissionDenied, "%s: %v", what, err)
	case apierrors.IsNotFound(err), apierrors.IsConflict(err), apierrors.IsAlreadyExists(err), apierrors.IsInvalid(err):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
	case apierrors.IsServerTimeout(err), apierrors.IsTimeout(err), apierrors.IsServiceUnavailable(err), apierrors.IsTooManyRequests(err), isConnError(err):
		return status.Errorf(codes.Unavailable, "%s: %v", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// isConnError reports an error that never reached the API server.
func isConnError(err error) bool {
	var se apierrors.APIStatus
	return !errors.As(err, &se)
}
