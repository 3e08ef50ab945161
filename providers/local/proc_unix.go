//go:build unix

package local

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// proc is an app process this provider started: its reaper goroutine closes
// done when it exits.
type proc struct {
	done chan struct{}
	err  error // exit status, valid after done is closed
}

// stopGrace is how long a stopped app gets between SIGTERM and SIGKILL.
const stopGrace = 5 * time.Second

// start runs s.argv in its own process group with a minimal environment,
// output appended to apps/<tenant>/<version>.log, and reaps it when it exits.
func (p *Provider) start(e *env, tenant string, s *upgradeSpec) (*appRecord, error) {
	logRel := appDir(tenant) + "/" + s.version + ".log"
	logf, err := e.root.OpenFile(logRel, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Dir = filepath.Join(e.rootDir, filepath.FromSlash(appDir(tenant)))
	cmd.Env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"ATTACHE_TENANT=" + tenant,
		"ATTACHE_APP_VERSION=" + s.version,
		"ATTACHE_TENANT_DIR=" + filepath.Join(e.rootDir, filepath.FromSlash(tenantDir(tenant))),
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	pr := &proc{done: make(chan struct{})}
	pid := cmd.Process.Pid
	p.mu.Lock()
	p.procs[pid] = pr
	p.mu.Unlock()
	go func() {
		pr.err = cmd.Wait()
		close(pr.done)
		p.mu.Lock()
		if p.procs[pid] == pr {
			delete(p.procs, pid)
		}
		p.mu.Unlock()
	}()
	p.log.Info("app started", "tenant", tenant, "version", s.version, "pid", pid)
	return &appRecord{Version: s.version, Pid: pid, Pgid: pid, Command: s.argv, HealthURL: s.healthURL, StartedAt: time.Now().UTC()}, nil
}

// child returns the proc for pid if this provider started it.
func (p *Provider) child(pid int) *proc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.procs[pid]
}

// exited reports whether r's process has ended, and how.
func (p *Provider) exited(r *appRecord) (bool, string) {
	if pr := p.child(r.Pid); pr != nil {
		select {
		case <-pr.done:
			return true, fmt.Sprint(pr.err)
		default:
			return false, ""
		}
	}
	if !p.alive(r) {
		return true, "gone"
	}
	return false, ""
}

// alive reports whether r's process still runs and still leads the process
// group recorded for it (a recycled pid in another group does not count).
func (p *Provider) alive(r *appRecord) bool {
	if r == nil || r.Pid <= 0 {
		return false
	}
	if pr := p.child(r.Pid); pr != nil {
		select {
		case <-pr.done:
			return false
		default:
			return true
		}
	}
	if err := syscall.Kill(r.Pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	if pgid, err := syscall.Getpgid(r.Pid); err != nil || pgid != r.Pgid {
		return false
	}
	return !zombie(r.Pid)
}

// zombie reports whether pid has exited but not been reaped (Linux /proc;
// elsewhere it reports false).
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// stop ends r's process group: SIGTERM, then SIGKILL after stopGrace.
func (p *Provider) stop(r *appRecord) {
	if r == nil || r.Pgid <= 1 {
		return
	}
	_ = syscall.Kill(-r.Pgid, syscall.SIGTERM)
	deadline := time.Now().Add(stopGrace)
	for p.alive(r) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// Kill what is left of the group (children of the app included).
	_ = syscall.Kill(-r.Pgid, syscall.SIGKILL)
	deadline = time.Now().Add(stopGrace)
	for p.alive(r) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	p.log.Info("app stopped", "version", r.Version, "pid", r.Pid)
}
