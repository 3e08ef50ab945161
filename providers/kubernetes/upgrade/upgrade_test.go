package upgrade_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"attache.dev/attache/providers/kubernetes/upgrade"
)

const webRepo = "registry.example.com/acme/web"

func TestUpgrade(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	oldImage, newImage := image(webRepo, "v1"), image(webRepo+":2.0", "v2")
	sidecar := containerImage(e.deployment(t, "web", oldImage, 3), "sidecar")

	var (
		mu       sync.Mutex
		progress []string
	)
	req := upgrade.Request{
		Namespace:        e.ns,
		Deployment:       "web",
		Images:           map[string]string{"web": newImage},
		ProgressDeadline: 30 * time.Second,
		Progress: func(msg string) {
			mu.Lock()
			defer mu.Unlock()
			progress = append(progress, msg)
		},
	}
	start := time.Now()
	out, err := upgrade.Upgrade(context.Background(), e.c, e.log, req)
	if err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	t.Logf("upgrade to ready took %s; progress: %q", time.Since(start).Round(time.Millisecond), progress)
	if want := (upgrade.Outcome{Changed: true, Revision: "2", Previous: "1"}); out != want {
		t.Errorf("Outcome = %+v, want %+v", out, want)
	}
	d := e.get(t, "web")
	if got := containerImage(d, "web"); got != newImage {
		t.Errorf("web image = %q, want %q", got, newImage)
	}
	if got := containerImage(d, "sidecar"); got != sidecar {
		t.Errorf("sidecar image = %q, want it untouched (%q)", got, sidecar)
	}
	if !complete(d) {
		t.Errorf("deployment not complete after Upgrade returned: %+v", d.Status)
	}
	if p := d.Spec.ProgressDeadlineSeconds; p == nil || *p != 30 {
		t.Errorf("progressDeadlineSeconds = %v, want 30", p)
	}
	if len(progress) == 0 || progress[len(progress)-1] != "3/3 updated, 3 available" {
		t.Errorf("progress = %q, want it to end with %q", progress, "3/3 updated, 3 available")
	}
	var managers []string
	for _, mf := range d.ManagedFields {
		managers = append(managers, mf.Manager+"/"+string(mf.Operation))
	}
	if !slices.Contains(managers, "attache/Update") {
		t.Errorf("managed fields %v: no entry for field manager attache", managers)
	}

	t.Run("again is a no-op", func(t *testing.T) {
		before := e.writes.Load()
		out, err := upgrade.Upgrade(context.Background(), e.c, e.log, req)
		if err != nil {
			t.Fatalf("Upgrade: %v", err)
		}
		if want := (upgrade.Outcome{Changed: false, Revision: "2", Previous: "1"}); out != want {
			t.Errorf("Outcome = %+v, want %+v", out, want)
		}
		if n := e.writes.Load() - before; n != 0 {
			t.Errorf("the second Upgrade made %d write requests, want 0", n)
		}
		if g := e.get(t, "web").Generation; g != d.Generation {
			t.Errorf("generation %d → %d", d.Generation, g)
		}
	})
}

// TestUpgradeRollsBack upgrades to revisions that fail in different ways
// and checks that each is rolled back with the reason.
func TestUpgradeRollsBack(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		newImage string
		probe    *upgrade.Probe
		reason   []string
	}{
		{
			name:     "new pods never ready",
			newImage: neverReadyImage(webRepo, "v2"),
			reason:   []string{"ProgressDeadlineExceeded", "new pods not ready", "Ready=False"},
		},
		{
			// kwok's Pods are not reachable through the proxy, so a pod probe
			// always fails here (its success path cannot be exercised).
			name:     "pod probe fails",
			newImage: image(webRepo, "v2"),
			probe:    &upgrade.Probe{Port: 8080, Path: "/healthz"},
			reason:   []string{"health probe http GET /healthz on the new pods port 8080 (through the API server proxy, want status 200) failed", "pod web-"},
		},
		{
			name:     "service probe fails",
			newImage: image(webRepo, "v2"),
			probe:    &upgrade.Probe{Service: "web", Port: 80, Path: "/healthz?full=1", Scheme: "http", Expect: 204},
			reason:   []string{"health probe http GET /healthz?full=1 on service web port 80", "want status 204", "service web:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			oldImage := image(webRepo, "v1")
			e.deployment(t, "web", oldImage, 3)
			if tt.probe != nil && tt.probe.Service != "" {
				e.service(t, tt.probe.Service)
			}
			start := time.Now()
			out, err := upgrade.Upgrade(context.Background(), e.c, e.log, upgrade.Request{
				Namespace:        e.ns,
				Deployment:       "web",
				Images:           map[string]string{"web": tt.newImage},
				ProgressDeadline: 10 * time.Second,
				Probe:            tt.probe,
			})
			if err != nil {
				t.Fatalf("Upgrade: %v", err)
			}
			t.Logf("failed upgrade + rollback took %s; reason: %s", time.Since(start).Round(time.Millisecond), out.Reason)
			if !out.RolledBack || !out.Changed || out.Previous != "1" || out.Revision != "3" {
				t.Errorf("Outcome = %+v, want Changed, RolledBack, Previous 1, Revision 3", out)
			}
			for _, w := range tt.reason {
				if !strings.Contains(out.Reason, w) {
					t.Errorf("Reason %q does not mention %q", out.Reason, w)
				}
			}
			if len(out.Reason) > 1024 {
				t.Errorf("Reason is %d bytes, want at most 1 KiB", len(out.Reason))
			}
			d := e.get(t, "web")
			if got := containerImage(d, "web"); got != oldImage {
				t.Errorf("web image after rollback = %q, want the old %q", got, oldImage)
			}
			if _, ok := d.Spec.Template.Labels["pod-template-hash"]; ok {
				t.Errorf("rolled-back template carries the pod-template-hash label: %v", d.Spec.Template.Labels)
			}
			if !complete(d) {
				t.Errorf("deployment not available after the rollback: %+v", d.Status)
			}
		})
	}
}

// TestUpgradeResumes: an earlier Upgrade set the images and was interrupted;
// the retry writes nothing new, sees the rollout fail and rolls back to the
// revision before.
func TestUpgradeResumes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	oldImage, bad := image(webRepo, "v1"), neverReadyImage(webRepo, "v2")
	e.deployment(t, "web", oldImage, 3)
	patch := `{"spec":{"progressDeadlineSeconds":10,"template":{"spec":{"containers":[{"name":"web","image":"` + bad + `"}]}}}}`
	if _, err := e.c.AppsV1().Deployments(e.ns).Patch(context.Background(), "web", types.StrategicMergePatchType,
		[]byte(patch), metav1.PatchOptions{FieldManager: upgrade.FieldManager}); err != nil {
		t.Fatalf("patch: %v", err)
	}
	out, err := upgrade.Upgrade(context.Background(), e.c, e.log, upgrade.Request{
		Namespace:        e.ns,
		Deployment:       "web",
		Images:           map[string]string{"web": bad},
		ProgressDeadline: 10 * time.Second,
	})
	if err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	if !out.RolledBack || out.Previous != "1" || !strings.Contains(out.Reason, "ProgressDeadlineExceeded") {
		t.Errorf("Outcome = %+v, want RolledBack to 1 with ProgressDeadlineExceeded", out)
	}
	if got := containerImage(e.get(t, "web"), "web"); got != oldImage {
		t.Errorf("web image = %q, want %q", got, oldImage)
	}
}

// TestUpgradeRefused: requests refused before anything is written.
func TestUpgradeRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.deployment(t, "web", image(webRepo, "v1"), 1)
	paused := e.deployment(t, "paused", image(webRepo, "v1"), 1)
	paused.Spec.Paused = true
	if _, err := e.c.AppsV1().Deployments(e.ns).Update(context.Background(), paused, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("pause: %v", err)
	}
	tests := []struct {
		name       string
		deployment string
		images     map[string]string
		want       []string
	}{
		{"unknown container", "web", map[string]string{"web": image(webRepo, "v2"), "db": image("postgres", "17")},
			[]string{"images[db]", `no container "db"`, "web, sidecar"}},
		{"missing deployment", "nope", map[string]string{"web": image(webRepo, "v2")}, []string{"/nope", "not found"}},
		{"paused", "paused", map[string]string{"web": image(webRepo, "v2")}, []string{"paused"}},
		{"invalid", "web", map[string]string{"web": webRepo + ":latest"}, []string{"images[web]", "not pinned by digest"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.writes.Load()
			out, err := upgrade.Upgrade(context.Background(), e.c, e.log, upgrade.Request{
				Namespace: e.ns, Deployment: tt.deployment, Images: tt.images,
			})
			if err == nil {
				t.Fatalf("Upgrade: no error (outcome %+v)", out)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if n := e.writes.Load() - before; n != 0 {
				t.Errorf("%d write requests, want 0", n)
			}
		})
	}
}

// TestUpgradeCanceled cancels the context while the rollout is under way:
// Upgrade returns the context's error promptly and does not roll back.
func TestUpgradeCanceled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.deployment(t, "web", image(webRepo, "v1"), 3)
	bad := neverReadyImage(webRepo, "v2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var canceledAt time.Time
	out, err := upgrade.Upgrade(ctx, e.c, e.log, upgrade.Request{
		Namespace:        e.ns,
		Deployment:       "web",
		Images:           map[string]string{"web": bad},
		ProgressDeadline: time.Minute,
		Progress: func(msg string) {
			if canceledAt.IsZero() && strings.Contains(msg, "updated") {
				canceledAt = time.Now()
				cancel()
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Upgrade error = %v, want context.Canceled", err)
	}
	if took := time.Since(canceledAt); took > time.Second {
		t.Errorf("Upgrade returned %s after the cancel, want promptly", took)
	}
	if !out.Changed || out.RolledBack || out.Previous != "1" {
		t.Errorf("Outcome = %+v, want Changed, not RolledBack, Previous 1", out)
	}
	if got := containerImage(e.get(t, "web"), "web"); got != bad {
		t.Errorf("web image = %q, want %q (no rollback after a cancel)", got, bad)
	}
}
