package upgrade

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
)

const (
	// probeWindow is how long a failing probe is retried after the rollout
	// completes (at most the progress deadline), every probeInterval.
	probeWindow   = 30 * time.Second
	probeInterval = time.Second
	// probeTimeout bounds one request through the proxy.
	probeTimeout = 5 * time.Second
)

// probe sends req.Probe through the API server's proxy — to the Service, or
// to every ready Pod of d's current revision — until every answer has the
// expected status or probeWindow (at most the progress deadline) has passed.
// The error names the probe and says what answered last.
func (u *upgrader) probe(ctx context.Context, d *appsv1.Deployment) error {
	p := u.req.Probe
	window := min(probeWindow, u.req.ProgressDeadline)
	deadline := time.Now().Add(window)
	for {
		err := u.probeOnce(ctx, d)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().Add(probeInterval).After(deadline) {
			return fmt.Errorf("health probe %s GET %s on %s port %d (through the API server proxy, want status %d) failed for %s: %w",
				p.Scheme, p.Path, probeTarget(p), p.Port, p.Expect, window, err)
		}
		u.log.Debug("probe failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(probeInterval):
		}
	}
}

func probeTarget(p *Probe) string {
	if p.Service != "" {
		return "service " + p.Service
	}
	return "the new pods"
}

// probeOnce sends the probe once to the Service or to each ready new Pod.
func (u *upgrader) probeOnce(ctx context.Context, d *appsv1.Deployment) error {
	p := u.req.Probe
	path, params := splitPath(p.Path)
	port := strconv.Itoa(p.Port)
	if p.Service != "" {
		rw := u.c.CoreV1().Services(u.req.Namespace).ProxyGet(p.Scheme, p.Service, port, path, params)
		return u.expect(ctx, rw, "service "+p.Service)
	}
	rss, err := u.ownedReplicaSets(ctx, d)
	if err != nil {
		return err
	}
	var pods []string
	for i := range rss {
		if rss[i].Annotations[revisionAnnotation] != d.Annotations[revisionAnnotation] {
			continue
		}
		owned, err := u.ownedPods(ctx, &rss[i])
		if err != nil {
			return err
		}
		for j := range owned {
			if podReady(&owned[j]) {
				pods = append(pods, owned[j].Name)
			}
		}
	}
	if len(pods) == 0 {
		return errors.New("no ready pods of the new revision to probe")
	}
	for _, name := range pods {
		rw := u.c.CoreV1().Pods(u.req.Namespace).ProxyGet(p.Scheme, name, port, path, params)
		if err := u.expect(ctx, rw, "pod "+name); err != nil {
			return err
		}
	}
	return nil
}

// expect sends one proxied GET and compares its status with the Probe's.
func (u *upgrader) expect(ctx context.Context, rw rest.ResponseWrapper, target string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	code, body, err := proxyStatus(ctx, rw)
	if err != nil {
		return fmt.Errorf("%s: %w", target, err)
	}
	if code != u.req.Probe.Expect {
		msg := fmt.Sprintf("%s: status %d, want %d", target, code, u.req.Probe.Expect)
		if b := truncate(strings.Join(strings.Fields(string(body)), " "), 200); b != "" {
			msg += ": " + b
		}
		return errors.New(msg)
	}
	return nil
}

// proxyStatus sends a proxied GET and returns the status code and body. An
// error means no answer (transport, timeout).
func proxyStatus(ctx context.Context, rw rest.ResponseWrapper) (int, []byte, error) {
	if req, ok := rw.(*rest.Request); ok {
		res := req.Do(ctx)
		var code int
		res.StatusCode(&code)
		body, err := res.Raw()
		if code == 0 {
			if err == nil {
				err = errors.New("no response")
			}
			return 0, nil, err
		}
		return code, body, nil
	}
	// Another ResponseWrapper: DoRaw hides 2xx codes; take 2xx as 200.
	body, err := rw.DoRaw(ctx)
	if err == nil {
		return 200, body, nil
	}
	var st apierrors.APIStatus
	if errors.As(err, &st) && st.Status().Code != 0 {
		return int(st.Status().Code), []byte(st.Status().Message), nil
	}
	return 0, nil, err
}

// splitPath splits a validated probe path into the path and query params
// ProxyGet takes (the first value of each parameter).
func splitPath(p string) (string, map[string]string) {
	u, err := url.ParseRequestURI(p)
	if err != nil || u.RawQuery == "" {
		return p, nil
	}
	params := map[string]string{}
	for k, v := range u.Query() {
		params[k] = v[0]
	}
	return u.Path, params
}
