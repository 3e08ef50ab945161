package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/kubernetes/upgrade"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/protobuf/types/known/structpb"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func init() {
	register(&providerv1.ActionInfo{
		Name:    "deployment.upgrade",
		Summary: "set a Deployment's images by digest, wait for the rollout against a progress deadline, check health (available replicas, optional HTTP probe through the API server) and roll back to the previous revision on failure",
		Params: []*providerv1.ParamInfo{
			{Name: "tenant", Type: "string", Description: "tenant id (default: the step's tenant)"},
			{Name: "deployment", Type: "string", Required: true, Description: "the Deployment in the tenant's namespace"},
			{Name: "images", Type: "object", Required: true, Description: "container name → image reference pinned by digest (repo[:tag]@sha256:<64 hex>)"},
			{Name: "progress_deadline", Type: "string", Description: "how long the rollout may make no progress (Go duration, whole seconds, 10s..1h, default 5m)"},
			{Name: "probe", Type: "object", Description: "{service, port, path, scheme, expect}: an HTTP GET through the API server proxy to the Service (or each ready Pod) that must answer expect (default 200)"},
		},
	}, parseUpgrade, planUpgrade, applyUpgrade)
}

// upgradeSpec is a validated deployment.upgrade step.
type upgradeSpec struct {
	target
	req upgrade.Request
}

func (*upgradeSpec) secrets() []string { return nil }

var probeKeys = []string{"service", "port", "path", "scheme", "expect"}

func parseUpgrade(e *env, step *providerv1.Step) (*upgradeSpec, error) {
	p := sdk.NewParams(step.GetParams())
	raw := step.GetParams().GetFields()
	sp := &upgradeSpec{target: readTarget(p, &e.s, step)}
	sp.req = upgrade.Request{
		Namespace:  sp.namespace,
		Deployment: p.String("deployment", true),
		Images:     stringMap(p, raw, "images", true),
	}
	sp.req.ProgressDeadline = p.Duration("progress_deadline", false)
	if pr := objectParam(p, raw, "probe", probeKeys...); pr != nil {
		sp.req.Probe = readProbe(p, pr)
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	if sp.namespace == "" || sp.req.Deployment == "" || len(sp.req.Images) == 0 {
		return sp, nil // reported above
	}
	if err := upgrade.Validate(sp.req); err != nil {
		return nil, validateError(err)
	}
	return sp, nil
}

// readProbe reads the probe object's fields.
func readProbe(p *sdk.Params, raw map[string]*structpb.Value) *upgrade.Probe {
	field := p.Field("probe")
	str := func(k string) string {
		v, ok := raw[k]
		if !ok {
			return ""
		}
		s, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			p.FailPath(field+"."+k, "must be a string")
			return ""
		}
		return s.StringValue
	}
	num := func(k string, required bool) int {
		v, ok := raw[k]
		if !ok {
			if required {
				p.FailPath(field+"."+k, "required")
			}
			return 0
		}
		n, ok := v.GetKind().(*structpb.Value_NumberValue)
		if !ok || n.NumberValue != float64(int(n.NumberValue)) {
			p.FailPath(field+"."+k, "must be an integer")
			return 0
		}
		return int(n.NumberValue)
	}
	pr := &upgrade.Probe{Service: str("service"), Port: num("port", true), Path: str("path"), Scheme: str("scheme"), Expect: num("expect", false)}
	if pr.Path == "" {
		pr.Path = "/"
	}
	return pr
}

// validateError maps upgrade.Validate's errors ("images[web]: …") to an
// InvalidArgument naming the step's fields ("params.images.web").
func validateError(err error) error {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var fes []fieldError
	for _, x := range errs {
		field, msg, ok := strings.Cut(x.Error(), ": ")
		if !ok {
			field, msg = "params", x.Error()
		}
		switch {
		case field == "namespace":
			field = "tenant"
		case strings.HasPrefix(field, "images[") && strings.HasSuffix(field, "]"):
			field = "params.images." + strings.TrimSuffix(strings.TrimPrefix(field, "images["), "]")
		case field != "params":
			field = "params." + field
		}
		fes = append(fes, fieldError{field: field, msg: msg})
	}
	return invalidFields(fes)
}

func planUpgrade(ctx context.Context, e *env, sp *upgradeSpec) (changes, error) {
	res := resourceName("apps/v1", "Deployment", sp.namespace, sp.req.Deployment)
	ns, err := e.managedNamespace(ctx, sp.target)
	if err != nil {
		return nil, err
	}
	var d *appsv1.Deployment
	if ns != nil {
		d, err = e.c.kube.AppsV1().Deployments(sp.namespace).Get(ctx, sp.req.Deployment, metav1.GetOptions{})
		if err != nil && !isNotFound(err) {
			return nil, apiError("read "+res, err)
		}
		if isNotFound(err) {
			d = nil
		}
	}
	var cs changes
	for _, name := range slices.Sorted(maps.Keys(sp.req.Images)) {
		want := sp.req.Images[name]
		if d == nil {
			// A plan that creates it in an earlier step.
			cs.add(res, opUpdate, "container %s: set image %s (the deployment does not exist yet)", name, want)
			continue
		}
		cur, ok := containerImage(d, name)
		switch {
		case !ok:
			return nil, sdk.FailedPrecondition("%s has no container %q", res, name)
		case cur == want:
			cs.add(res, opNoop, "container %s: image %s (unchanged)", name, want)
		default:
			cs.add(res, opUpdate, "container %s: image %s → %s", name, cur, want)
		}
	}
	return cs, nil
}

// containerImage returns the image of container name (containers or init
// containers).
func containerImage(d *appsv1.Deployment, name string) (string, bool) {
	for _, c := range append(slices.Clone(d.Spec.Template.Spec.Containers), d.Spec.Template.Spec.InitContainers...) {
		if c.Name == name {
			return c.Image, true
		}
	}
	return "", false
}

func applyUpgrade(ctx context.Context, e *env, sp *upgradeSpec, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	ns, err := e.managedNamespace(ctx, sp.target)
	if err != nil {
		return nil, err
	}
	if ns == nil {
		return nil, notProvisioned(sp.target)
	}
	cs, err := planUpgrade(ctx, e, sp)
	if err != nil {
		return nil, err
	}
	res := resourceName("apps/v1", "Deployment", sp.namespace, sp.req.Deployment)
	req := sp.req
	req.Progress = func(msg string) { sdk.Report(progress, res, msg) }
	out, err := upgrade.Upgrade(ctx, e.c.kube, e.log, req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
			return nil, ctxErr
		}
		return nil, apiError("upgrade "+res, err)
	}
	outputs := map[string]any{
		"deployment":        sp.req.Deployment,
		"namespace":         sp.namespace,
		"revision":          out.Revision,
		"previous_revision": out.Previous,
	}
	if out.RolledBack {
		outputs["rolled_back"] = true
		return failed(fmt.Sprintf("upgrade of deployment %s rolled back to revision %s: %s", sp.req.Deployment, out.Previous, out.Reason), cs, outputs), nil
	}
	if !out.Changed {
		return succeeded(fmt.Sprintf("deployment %s already runs the requested images (revision %s)", sp.req.Deployment, out.Revision), cs, outputs), nil
	}
	return succeeded(fmt.Sprintf("deployment %s upgraded to revision %s (from %s) and healthy", sp.req.Deployment, out.Revision, out.Previous), cs, outputs), nil
}
