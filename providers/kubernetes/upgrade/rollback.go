package upgrade

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// rollback restores the pod template of revision out.Previous, as `kubectl
// rollout undo --to-revision` does, and waits for it at most the progress
// deadline. out carries the failed upgrade's Reason.
func (u *upgrader) rollback(ctx context.Context, d *appsv1.Deployment, out Outcome) (Outcome, error) {
	fail := func(err error) (Outcome, error) {
		return out, fmt.Errorf("the new revision failed (%s) and rolling back to revision %q failed: %w", out.Reason, out.Previous, err)
	}
	if out.Previous == "" {
		return fail(errors.New("the deployment has no earlier revision"))
	}
	rss, err := u.ownedReplicaSets(ctx, d)
	if err != nil {
		return fail(err)
	}
	var target *appsv1.ReplicaSet
	for i := range rss {
		if rss[i].Annotations[revisionAnnotation] == out.Previous {
			target = &rss[i]
		}
	}
	if target == nil {
		return fail(fmt.Errorf("no replica set of the deployment has revision %s (revisionHistoryLimit too low?)", out.Previous))
	}
	tmpl := target.Spec.Template.DeepCopy()
	delete(tmpl.Labels, appsv1.DefaultDeploymentUniqueLabelKey)

	deployments := u.c.AppsV1().Deployments(u.req.Namespace)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := deployments.Get(ctx, u.req.Deployment, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get: %w", err)
		}
		if equality.Semantic.DeepEqual(cur.Spec.Template, *tmpl) {
			d = cur // already there (someone else rolled back)
			return nil
		}
		cur.Spec.Template = *tmpl
		d, err = deployments.Update(ctx, cur, metav1.UpdateOptions{FieldManager: FieldManager})
		if err != nil {
			return fmt.Errorf("update pod template: %w", err)
		}
		out.Changed = true
		return nil
	})
	if err != nil {
		return fail(err)
	}
	u.log.Info("rolled back the pod template", "to_revision", out.Previous, "replica_set", target.Name)

	d, res, err := u.wait(ctx, d, writeTime(d), u.req.ProgressDeadline)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return out, fmt.Errorf("the new revision failed (%s); waiting for the rollback to revision %q: %w", out.Reason, out.Previous, err)
		}
		return fail(fmt.Errorf("waiting for it: %w", err))
	}
	out.Revision = d.Annotations[revisionAnnotation]
	if !res.complete {
		return fail(errors.New(res.reason))
	}
	out.RolledBack = true
	u.log.Info("rolled back", "revision", out.Revision, "from_revision", out.Previous)
	return out, nil
}

// ownedReplicaSets lists the ReplicaSets d controls.
func (u *upgrader) ownedReplicaSets(ctx context.Context, d *appsv1.Deployment) ([]appsv1.ReplicaSet, error) {
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("deployment selector: %w", err)
	}
	list, err := u.c.AppsV1().ReplicaSets(u.req.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list replica sets: %w", err)
	}
	var owned []appsv1.ReplicaSet
	for _, rs := range list.Items {
		if ref := metav1.GetControllerOf(&rs); ref != nil && ref.UID == d.UID {
			owned = append(owned, rs)
		}
	}
	return owned, nil
}

// priorRevision is what a failed rollout of d's current pod template rolls
// back to: the highest revision among d's ReplicaSets whose template is not
// d's (the template's own ReplicaSet may not exist yet, and d's revision
// annotation may still be the old one, if the controller has not caught up).
// "" if there is none.
func (u *upgrader) priorRevision(ctx context.Context, d *appsv1.Deployment) (string, error) {
	rss, err := u.ownedReplicaSets(ctx, d)
	if err != nil {
		return "", err
	}
	best := int64(0)
	for _, rs := range rss {
		tmpl := rs.Spec.Template.DeepCopy()
		delete(tmpl.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
		if equality.Semantic.DeepEqual(*tmpl, d.Spec.Template) {
			continue
		}
		if r, err := strconv.ParseInt(rs.Annotations[revisionAnnotation], 10, 64); err == nil && r > best {
			best = r
		}
	}
	if best == 0 {
		return "", nil
	}
	return strconv.FormatInt(best, 10), nil
}

// writeTime is the server's time of our last Update of d (from its managed
// fields), or zero.
func writeTime(d *appsv1.Deployment) metav1.Time {
	var t metav1.Time
	for _, mf := range d.ManagedFields {
		if mf.Manager == FieldManager && mf.Operation == metav1.ManagedFieldsOperationUpdate && mf.Time != nil && t.Before(mf.Time) {
			t = *mf.Time
		}
	}
	return t
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

// containerNames lists d's containers for an error message.
func containerNames(d *appsv1.Deployment) string {
	var names []string
	for _, c := range d.Spec.Template.Spec.InitContainers {
		names = append(names, c.Name+" (init)")
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		names = append(names, c.Name)
	}
	return strings.Join(names, ", ")
}
