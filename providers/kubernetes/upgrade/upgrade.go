// Package upgrade rolls a Deployment forward to new container images, pinned
// by digest, and back again when the new revision does not become healthy.
//
// Upgrade patches only the named containers' images (and
// spec.progressDeadlineSeconds) with a strategic merge patch under the field
// manager "attache", waits for the rollout against the progress deadline,
// checks health — every desired replica available and, if asked, an HTTP
// probe through the API server's proxy — and, when any of that fails, rolls
// the Deployment back to the revision it had before, the way `kubectl rollout
// undo` does: the pod template of the ReplicaSet carrying that revision,
// without its pod-template-hash label, is written back into the Deployment.
// The Outcome says what happened and why.
//
// A strategic merge patch, not server-side apply: the manifests.apply action
// applies whole Deployments under the same field manager name, and an apply
// naming only the image fields would drop every other field that manager
// owns.
//
// The package imports only client-go, apimachinery, the API types and the
// standard library. The kubernetes provider (providers/kubernetes) imports it
// for its deployment.upgrade action; nothing else should.
package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// FieldManager is the field manager of every write this package makes.
const FieldManager = "attache"

// Request is one upgrade: which Deployment, which images, how long to wait.
type Request struct {
	Namespace  string
	Deployment string
	// Images maps a container name (in spec.template.spec.containers or
	// initContainers) to the image it should run. Every reference must be
	// pinned by digest: repo[:tag]@sha256:<64 lowercase hex>.
	Images map[string]string
	// ProgressDeadline bounds how long the rollout may go without progress
	// before it counts as failed; it is also written to
	// spec.progressDeadlineSeconds, so the deployment controller reports
	// ProgressDeadlineExceeded. Zero means DefaultProgressDeadline; otherwise
	// whole seconds between 10s and 1h. A rollback waits at most this long.
	ProgressDeadline time.Duration
	// Probe, if set, must answer once the rollout is complete.
	Probe *Probe
	// Progress, if set, is called with a short line such as
	// "2/3 updated, 1 available" whenever the rollout's counts change.
	Progress func(msg string)
}

// Probe is an HTTP GET sent through the API server's proxy to a Service or,
// when Service is empty, to every ready Pod of the new revision.
type Probe struct {
	Service string // optional; empty = the new revision's ready Pods
	Port    int    // 1..65535: the Service port or the container port
	Path    string // starts with '/'; may carry a query string
	Scheme  string // "http" (default) or "https"
	Expect  int    // the status code required; default 200
}

// Outcome is what an Upgrade did.
type Outcome struct {
	// Changed is true when this call wrote to the Deployment (new images or
	// a rollback). It is false when the images were already as requested and
	// the rollout complete and healthy: nothing was written.
	Changed bool
	// Revision is the Deployment's deployment.kubernetes.io/revision
	// annotation at the end (after a rollback, the revision number the
	// restored template got).
	Revision string
	// Previous is the revision before the requested images: the one a
	// failed upgrade rolls back to. Empty if the Deployment has none.
	Previous string
	// RolledBack is true when the upgrade failed and the Deployment was
	// rolled back to Previous and is available again.
	RolledBack bool
	// Reason says why the upgrade failed: the ProgressDeadlineExceeded
	// message with the new Pods' states, or the probe's answer. Empty on
	// success. At most about 1 KiB.
	Reason string
}

const (
	// DefaultProgressDeadline is used when Request.ProgressDeadline is zero.
	DefaultProgressDeadline = 5 * time.Minute
	// MinProgressDeadline and MaxProgressDeadline bound Request.ProgressDeadline.
	MinProgressDeadline = 10 * time.Second
	MaxProgressDeadline = time.Hour

	// revisionAnnotation is set by the deployment controller on Deployments
	// and their ReplicaSets.
	revisionAnnotation = "deployment.kubernetes.io/revision"
	// timedOutReason is the Progressing condition's reason once the progress
	// deadline has passed (the controller's util.TimedOutReason).
	timedOutReason = "ProgressDeadlineExceeded"
	// maxReason bounds Outcome.Reason.
	maxReason = 1024
)

// Upgrade sets req.Images on the Deployment, waits for the rollout and checks
// health; if the rollout fails or the Deployment is not healthy it rolls back
// to the previous revision and returns an Outcome with RolledBack and Reason
// set (and a nil error). Errors mean the request was invalid, the API server
// refused, the context ended (the error wraps ctx.Err(); no rollback is
// attempted), or the rollback itself failed (the error names both failures).
//
// If the images are already as requested, nothing is written; Upgrade still
// waits for that rollout and checks it, rolling back to the revision before
// it if it fails, so a retried Upgrade finishes what an interrupted one
// started.
func Upgrade(ctx context.Context, c kubernetes.Interface, log *slog.Logger, req Request) (Outcome, error) {
	if err := Validate(req); err != nil {
		return Outcome{}, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	u := &upgrader{
		c:    c,
		req:  req.withDefaults(),
		name: req.Namespace + "/" + req.Deployment,
	}
	u.log = log.With("deployment", u.name)
	out, err := u.run(ctx)
	if err != nil {
		return out, fmt.Errorf("upgrade deployment %s: %w", u.name, err)
	}
	return out, nil
}

// upgrader carries one Upgrade call.
type upgrader struct {
	c    kubernetes.Interface
	log  *slog.Logger
	req  Request
	name string // namespace/name, for messages

	previous     string // the revision setImages replaced
	lastProgress string // the last line passed to req.Progress
}

func (u *upgrader) run(ctx context.Context) (Outcome, error) {
	var out Outcome
	d, changed, err := u.setImages(ctx)
	if err != nil {
		return out, err
	}
	out.Changed = changed
	if changed {
		// The revision the Deployment was on when we patched it.
		out.Previous = u.previous
	} else {
		// Images already as requested: the revision before the current one.
		prev, err := u.priorRevision(ctx, d)
		if err != nil {
			return out, err
		}
		out.Previous = prev
	}

	d, res, err := u.wait(ctx, d, writeTime(d), 0)
	if err != nil {
		return out, fmt.Errorf("waiting for rollout: %w", err)
	}
	out.Revision = d.Annotations[revisionAnnotation]
	reason := res.reason
	if res.complete && u.req.Probe != nil {
		if err := u.probe(ctx, d); err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return out, fmt.Errorf("probing: %w", ctxErr)
			}
			reason = err.Error()
		}
	}
	if res.complete && reason == "" {
		u.log.Info("rollout complete and healthy", "revision", out.Revision, "previous", out.Previous, "changed", out.Changed)
		return out, nil
	}
	out.Reason = truncate(reason, maxReason)
	u.log.Warn("upgrade failed; rolling back", "revision", out.Revision, "to_revision", out.Previous, "reason", out.Reason)
	return u.rollback(ctx, d, out)
}

// setImages patches the images that differ from the request, with the
// Deployment's resourceVersion as a precondition so the revision recorded in
// u.previous is the one the patch replaced. It returns the Deployment after
// the patch, or as read when nothing needed writing.
func (u *upgrader) setImages(ctx context.Context) (*appsv1.Deployment, bool, error) {
	deployments := u.c.AppsV1().Deployments(u.req.Namespace)
	var (
		d       *appsv1.Deployment
		changed bool
	)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var err error
		d, err = deployments.Get(ctx, u.req.Deployment, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get: %w", err)
		}
		if d.Spec.Paused {
			return errors.New("the deployment is paused: resume it first (a paused rollout never progresses)")
		}
		containers, initContainers, err := u.diff(d)
		if err != nil {
			return err
		}
		if len(containers) == 0 && len(initContainers) == 0 {
			changed = false
			return nil
		}
		u.previous = d.Annotations[revisionAnnotation]
		patch, err := imagePatch(d.ResourceVersion, u.req.ProgressDeadline, containers, initContainers)
		if err != nil {
			return err
		}
		before := d.Generation
		d, err = deployments.Patch(ctx, u.req.Deployment, types.StrategicMergePatchType, patch,
			metav1.PatchOptions{FieldManager: FieldManager})
		if err != nil {
			return fmt.Errorf("patch images: %w", err) // a conflict is retried from a fresh read
		}
		changed = d.Generation != before
		u.log.Info("images set", "previous_revision", u.previous, "generation", d.Generation)
		return nil
	})
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return nil, false, err
	}
	return d, changed, nil
}

// diff checks that every requested container exists in d's pod template and
// returns those whose image differs, split by list.
func (u *upgrader) diff(d *appsv1.Deployment) (containers, initContainers []containerImage, err error) {
	spec := &d.Spec.Template.Spec
	var errs []error
	for _, name := range sortedKeys(u.req.Images) {
		image := u.req.Images[name]
		found := false
		for _, ct := range spec.Containers {
			if ct.Name == name {
				found = true
				if ct.Image != image {
					containers = append(containers, containerImage{Name: name, Image: image})
				}
			}
		}
		for _, ct := range spec.InitContainers {
			if ct.Name == name {
				found = true
				if ct.Image != image {
					initContainers = append(initContainers, containerImage{Name: name, Image: image})
				}
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("images[%s]: the deployment has no container %q (it has %s)",
				name, name, containerNames(d)))
		}
	}
	return containers, initContainers, errors.Join(errs...)
}

// containerImage is one entry of the strategic merge patch's container lists
// (merged by name).
type containerImage struct {
	Name  string `json:"name"`
	Image string `json:"image"`
}

// imagePatch is a strategic merge patch setting only the given images and
// spec.progressDeadlineSeconds, conditional on resourceVersion.
func imagePatch(resourceVersion string, deadline time.Duration, containers, initContainers []containerImage) ([]byte, error) {
	podSpec := map[string]any{}
	if len(containers) > 0 {
		podSpec["containers"] = containers
	}
	if len(initContainers) > 0 {
		podSpec["initContainers"] = initContainers
	}
	patch := map[string]any{
		"metadata": map[string]any{"resourceVersion": resourceVersion},
		"spec": map[string]any{
			"progressDeadlineSeconds": int32(deadline / time.Second),
			"template":                map[string]any{"spec": podSpec},
		},
	}
	b, err := json.Marshal(patch)
	if err != nil {
		return nil, fmt.Errorf("encode patch: %w", err)
	}
	return b, nil
}
