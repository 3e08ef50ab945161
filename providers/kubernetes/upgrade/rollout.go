package upgrade

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
)

const (
	// resyncInterval is how often the Deployment is re-read besides the
	// watch (and how soon a broken watch is reopened).
	resyncInterval = time.Second
	// stallGrace is how long past the progress deadline Upgrade waits,
	// without any change in the rollout's counts, for the controller to
	// report ProgressDeadlineExceeded before calling the rollout failed
	// itself (a stopped controller reports nothing).
	stallGrace = 30 * time.Second
)

// result is how a rollout ended.
type result struct {
	complete bool
	reason   string // why not, when !complete
}

// state is what evaluate makes of one reading of a Deployment.
type state int

const (
	inProgress state = iota
	complete
	failed
)

// evaluate reads a Deployment's status the way `kubectl rollout status`
// does: complete once the controller has observed the latest generation and
// every desired replica is updated and available with no old ones left;
// failed when the Progressing condition says ProgressDeadlineExceeded and
// was set after since, the second of our last write (the controller leaves
// an older one in place when the template goes back to an existing replica
// set; a real one comes at least the progress deadline after the write).
// msg is a progress line, or the failure.
func evaluate(d *appsv1.Deployment, since metav1.Time) (state, string) {
	st := d.Status
	if st.ObservedGeneration < d.Generation {
		return inProgress, "waiting for the deployment controller to observe the new spec"
	}
	if c := progressing(d); c != nil && c.Reason == timedOutReason && c.LastUpdateTime.After(since.Time) {
		return failed, fmt.Sprintf("%s: %s", timedOutReason, c.Message)
	}
	want := replicas(d)
	msg := fmt.Sprintf("%d/%d updated, %d available", st.UpdatedReplicas, want, st.AvailableReplicas)
	if old := st.Replicas - st.UpdatedReplicas; old > 0 {
		msg += fmt.Sprintf(", %d old", old)
	}
	if st.UpdatedReplicas == want && st.Replicas == want && st.AvailableReplicas == want && st.UnavailableReplicas == 0 {
		return complete, msg
	}
	return inProgress, msg
}

// progressing is the Deployment's Progressing condition, or nil.
func progressing(d *appsv1.Deployment) *appsv1.DeploymentCondition {
	for i := range d.Status.Conditions {
		if d.Status.Conditions[i].Type == appsv1.DeploymentProgressing {
			return &d.Status.Conditions[i]
		}
	}
	return nil
}

// replicas is the desired replica count (the API server defaults it to 1).
func replicas(d *appsv1.Deployment) int32 {
	if d.Spec.Replicas == nil {
		return 1
	}
	return *d.Spec.Replicas
}

// counts identifies a reading's progress, for the stall check.
func counts(d *appsv1.Deployment) [6]int64 {
	st := d.Status
	return [6]int64{st.ObservedGeneration, int64(st.Replicas), int64(st.UpdatedReplicas),
		int64(st.ReadyReplicas), int64(st.AvailableReplicas), int64(st.UnavailableReplicas)}
}

// wait follows the Deployment (a watch, plus a re-read every
// resyncInterval) until its rollout completes or fails. since is the server
// time of our last write to it (zero if none), see evaluate. limit, if not
// zero, bounds the whole wait; otherwise the rollout may take as long as it
// keeps progressing. A rollout failure is a result, not an error; errors are
// the context's or the API server's.
func (u *upgrader) wait(ctx context.Context, d *appsv1.Deployment, since metav1.Time, limit time.Duration) (*appsv1.Deployment, result, error) {
	waitCtx := ctx
	if limit > 0 {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	deployments := u.c.AppsV1().Deployments(u.req.Namespace)
	var w watch.Interface
	openWatch := func() {
		var err error
		w, err = deployments.Watch(waitCtx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", u.req.Deployment).String(),
			ResourceVersion: d.ResourceVersion,
		})
		if err != nil {
			u.log.Debug("watch failed; re-reading instead", "err", err)
			w = nil
		}
	}
	defer func() {
		if w != nil {
			w.Stop()
		}
	}()
	openWatch()
	tick := time.NewTicker(resyncInterval)
	defer tick.Stop()

	var (
		lastMsg    string
		lastCounts = counts(d)
		lastChange = time.Now()
		stall      = u.req.ProgressDeadline + stallGrace
	)
	for {
		st, msg := evaluate(d, since)
		switch st {
		case complete:
			u.report(msg)
			return d, result{complete: true}, nil
		case failed:
			return d, result{reason: u.failureReason(ctx, d, msg)}, nil
		}
		u.report(msg)
		lastMsg = msg
		if c := counts(d); c != lastCounts {
			lastCounts, lastChange = c, time.Now()
		} else if time.Since(lastChange) > stall {
			why := fmt.Sprintf("no rollout progress for %s (%s) and no %s from the deployment controller",
				stall.Round(time.Second), lastMsg, timedOutReason)
			return d, result{reason: u.failureReason(ctx, d, why)}, nil
		}

		var events <-chan watch.Event
		if w != nil {
			events = w.ResultChan()
		}
		select {
		case <-waitCtx.Done():
			if err := ctx.Err(); err != nil {
				return d, result{}, err
			}
			why := fmt.Sprintf("not complete after %s (%s)", limit, lastMsg)
			return d, result{reason: u.failureReason(ctx, d, why)}, nil
		case ev, ok := <-events:
			if !ok {
				w.Stop()
				w = nil // reopened after the next re-read
				continue
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				if nd, ok := ev.Object.(*appsv1.Deployment); ok {
					d = nd
				}
			case watch.Deleted:
				return d, result{}, errors.New("the deployment was deleted")
			case watch.Error:
				u.log.Debug("watch error; re-reading", "err", apierrors.FromObject(ev.Object))
				w.Stop()
				w = nil
			}
		case <-tick.C:
			nd, err := deployments.Get(waitCtx, u.req.Deployment, metav1.GetOptions{})
			switch {
			case err == nil:
				d = nd
				if w == nil {
					openWatch()
				}
			case waitCtx.Err() != nil:
				// Reported by the select above on the next turn.
			case apierrors.IsNotFound(err):
				return d, result{}, errors.New("the deployment was deleted")
			case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
				return d, result{}, fmt.Errorf("get: %w", err)
			default:
				u.log.Debug("re-reading the deployment failed; retrying", "err", err)
			}
		}
	}
}

// report passes a progress line to req.Progress when it differs from the
// last one.
func (u *upgrader) report(msg string) {
	if msg == u.lastProgress {
		return
	}
	u.lastProgress = msg
	u.log.Debug("rollout", "progress", msg)
	if u.req.Progress != nil {
		u.req.Progress(msg)
	}
}

// failureReason is why plus the state of the new revision's Pods that are not
// ready, bounded to maxReason.
func (u *upgrader) failureReason(ctx context.Context, d *appsv1.Deployment, why string) string {
	if s := u.podSummary(ctx, d); s != "" {
		why += "; " + s
	}
	return truncate(why, maxReason)
}

// podSummary describes the not-ready Pods of d's current revision, e.g.
// "2 of 3 new pods not ready: web-5d8-x2: Running, Ready=False
// (ContainersNotReady: ...); ...".
func (u *upgrader) podSummary(ctx context.Context, d *appsv1.Deployment) string {
	if ctx.Err() != nil {
		return ""
	}
	rss, err := u.ownedReplicaSets(ctx, d)
	if err != nil {
		return fmt.Sprintf("(new pods not listed: %v)", err)
	}
	rev := d.Annotations[revisionAnnotation]
	var rs *appsv1.ReplicaSet
	for i := range rss {
		if rss[i].Annotations[revisionAnnotation] == rev {
			rs = &rss[i]
		}
	}
	if rs == nil {
		return ""
	}
	pods, err := u.ownedPods(ctx, rs)
	if err != nil {
		return fmt.Sprintf("(pods of replica set %s not listed: %v)", rs.Name, err)
	}
	var notReady []string
	for i := range pods {
		if !podReady(&pods[i]) {
			notReady = append(notReady, describePod(&pods[i]))
		}
	}
	if len(notReady) == 0 {
		return ""
	}
	const shown = 3
	s := fmt.Sprintf("%d of %d new pods not ready: %s", len(notReady), len(pods),
		strings.Join(notReady[:min(shown, len(notReady))], "; "))
	if len(notReady) > shown {
		s += fmt.Sprintf("; and %d more", len(notReady)-shown)
	}
	return s
}

// ownedPods lists the Pods rs controls.
func (u *upgrader) ownedPods(ctx context.Context, rs *appsv1.ReplicaSet) ([]corev1.Pod, error) {
	sel, err := metav1.LabelSelectorAsSelector(rs.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("replica set %s selector: %w", rs.Name, err)
	}
	list, err := u.c.CoreV1().Pods(u.req.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var pods []corev1.Pod
	for _, p := range list.Items {
		if ref := metav1.GetControllerOf(&p); ref != nil && ref.UID == rs.UID && p.DeletionTimestamp == nil {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

// podReady reports the Pod's Ready condition.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// describePod is one not-ready Pod in a line: phase, Ready condition,
// containers waiting or terminated.
func describePod(p *corev1.Pod) string {
	parts := []string{string(p.Status.Phase)}
	if p.Status.Phase == "" {
		parts[0] = "no phase"
	}
	for _, c := range p.Status.Conditions {
		switch {
		case c.Type == corev1.PodReady && c.Status != corev1.ConditionTrue:
			parts = append(parts, condition("Ready", c.Status, c.Reason, c.Message))
		case c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue:
			parts = append(parts, condition("Scheduled", c.Status, c.Reason, c.Message))
		}
	}
	statuses := append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	for _, cs := range statuses {
		switch {
		case cs.State.Waiting != nil:
			parts = append(parts, fmt.Sprintf("container %s waiting: %s", cs.Name,
				reasonMessage(cs.State.Waiting.Reason, cs.State.Waiting.Message)))
		case cs.State.Terminated != nil && cs.State.Terminated.ExitCode != 0:
			parts = append(parts, fmt.Sprintf("container %s terminated: %s (exit %d)", cs.Name,
				reasonMessage(cs.State.Terminated.Reason, cs.State.Terminated.Message), cs.State.Terminated.ExitCode))
		case cs.State.Running != nil && !cs.Ready:
			parts = append(parts, fmt.Sprintf("container %s running, not ready", cs.Name))
		}
		if cs.RestartCount > 0 {
			parts = append(parts, fmt.Sprintf("container %s restarted %d times", cs.Name, cs.RestartCount))
		}
	}
	return p.Name + ": " + strings.Join(parts, ", ")
}

func condition(name string, status corev1.ConditionStatus, reason, message string) string {
	s := fmt.Sprintf("%s=%s", name, status)
	if rm := reasonMessage(reason, message); rm != "" {
		s += " (" + rm + ")"
	}
	return s
}

// reasonMessage joins a reason and a message, the message cut to a line.
func reasonMessage(reason, message string) string {
	message = truncate(strings.Join(strings.Fields(message), " "), 160)
	switch {
	case reason == "":
		return message
	case message == "":
		return reason
	}
	return reason + ": " + message
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
