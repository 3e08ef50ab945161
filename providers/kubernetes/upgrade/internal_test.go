package upgrade

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestEvaluate(t *testing.T) {
	write := metav1.NewTime(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
	three := int32(3)
	dep := func(gen, observed int64, replicas, updated, available, unavailable int32, conds ...appsv1.DeploymentCondition) *appsv1.Deployment {
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Generation: gen},
			Spec:       appsv1.DeploymentSpec{Replicas: &three},
			Status: appsv1.DeploymentStatus{
				ObservedGeneration: observed, Replicas: replicas, UpdatedReplicas: updated,
				AvailableReplicas: available, UnavailableReplicas: unavailable, Conditions: conds,
			},
		}
	}
	timedOut := func(at metav1.Time) appsv1.DeploymentCondition {
		return appsv1.DeploymentCondition{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse,
			Reason: timedOutReason, Message: `ReplicaSet "web-2" has timed out progressing.`, LastUpdateTime: at}
	}
	tests := []struct {
		name  string
		d     *appsv1.Deployment
		state state
		msg   string
	}{
		{"not observed yet", dep(2, 1, 3, 3, 3, 0), inProgress, "waiting for the deployment controller to observe the new spec"},
		{"surging", dep(2, 2, 4, 1, 3, 1), inProgress, "1/3 updated, 3 available, 3 old"},
		{"old pods left", dep(2, 2, 4, 3, 3, 0), inProgress, "3/3 updated, 3 available, 1 old"},
		{"complete", dep(2, 2, 3, 3, 3, 0), complete, "3/3 updated, 3 available"},
		{"timed out after the write", dep(2, 2, 4, 1, 3, 1, timedOut(metav1.NewTime(write.Add(11*time.Second)))),
			failed, `ProgressDeadlineExceeded: ReplicaSet "web-2" has timed out progressing.`},
		{"timed out in the write's second: stale", dep(2, 2, 4, 3, 3, 1, timedOut(write)), inProgress, "3/3 updated, 3 available, 1 old"},
		{"timed out before the write: stale", dep(2, 2, 3, 3, 3, 0, timedOut(metav1.NewTime(write.Add(-time.Minute)))), complete, "3/3 updated, 3 available"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, msg := evaluate(tt.d, write)
			if st != tt.state || msg != tt.msg {
				t.Errorf("evaluate = %v, %q; want %v, %q", st, msg, tt.state, tt.msg)
			}
		})
	}
}

func TestDescribePod(t *testing.T) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-2-abcde"},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning,
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady", Message: "containers with unready status: [web]"},
			},
			ContainerStatuses: []corev1.ContainerStatus{
				{Name: "web", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
				{Name: "init", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "Back-off\npulling image"}}, RestartCount: 2},
				{Name: "sidecar", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
			},
		},
	}
	want := "web-2-abcde: Running, Ready=False (ContainersNotReady: containers with unready status: [web]), " +
		"container web running, not ready, container init waiting: ImagePullBackOff: Back-off pulling image, container init restarted 2 times"
	if got := describePod(p); got != want {
		t.Errorf("describePod =\n%s\nwant\n%s", got, want)
	}
}

func TestTruncate(t *testing.T) {
	s := strings.Repeat("é", 600) // 1200 bytes
	got := truncate(s, maxReason)
	if len(got) > maxReason || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
		t.Errorf("truncate: %d bytes, valid UTF-8 %v, %q…", len(got), utf8.ValidString(got), got[len(got)-8:])
	}
	if got := truncate("short", maxReason); got != "short" {
		t.Errorf("truncate(short) = %q", got)
	}
}
