package harness

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// logTailLines is how much of each log a failed test prints.
const logTailLines = 60

// Process is a running binary with its output in files.
type Process struct {
	Name       string // e.g. "controlplane-1", "agent-2"
	StdoutPath string
	StderrPath string

	cmd  *exec.Cmd
	done chan struct{}

	mu   sync.Mutex
	code int // exit status once done; -1 if killed by a signal
}

// start runs bin with args under setpriv --pdeathsig KILL. The log files are
// opened for appending, so a restarted process keeps one history; a process
// started again under the same name passes dumpOnFailure false so its logs
// are printed once.
func (e *Env) start(t testing.TB, name, bin string, args []string, env []string, dumpOnFailure bool) *Process {
	t.Helper()
	p := &Process{
		Name:       name,
		StdoutPath: filepath.Join(e.dir, name+".stdout"),
		StderrPath: filepath.Join(e.dir, name+".stderr"),
		done:       make(chan struct{}),
	}
	stdout, err := os.OpenFile(p.StdoutPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	stderr, err := os.OpenFile(p.StderrPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		stdout.Close()
		t.Fatalf("harness: %v", err)
	}
	p.cmd = exec.Command("setpriv", append([]string{"--pdeathsig", "KILL", "--", bin}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = stdout, stderr
	p.cmd.Env = cleanEnv(env)
	err = p.cmd.Start()
	stdout.Close()
	stderr.Close()
	if err != nil {
		t.Fatalf("harness: start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.mu.Lock()
		p.code = p.cmd.ProcessState.ExitCode()
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if dumpOnFailure && t.Failed() {
			p.dumpLogs(t)
		}
	})
	return p
}

// cleanEnv is the test's environment without ATTACHE_* variables (so nothing
// from the developer's shell leaks into a process), plus extra.
func cleanEnv(extra []string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ATTACHE_") {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// Exited reports whether the process has ended and, if so, its exit status.
func (p *Process) Exited() (code int, exited bool) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.code, true
	default:
		return 0, false
	}
}

// Wait waits up to timeout for the process to exit and returns its exit
// status; ok is false if it is still running.
func (p *Process) Wait(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
		return p.Exited()
	case <-time.After(timeout):
		return 0, false
	}
}

// Signal sends sig to the process, if it is still running.
func (p *Process) Signal(sig os.Signal) {
	if _, exited := p.Exited(); exited {
		return
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return
	}
}

// Stop asks the process to end (SIGTERM), kills it if it has not after
// timeout, and reports whether it ended on its own.
func (p *Process) Stop(timeout time.Duration) bool {
	p.Signal(syscall.SIGTERM)
	if _, ok := p.Wait(timeout); ok {
		return true
	}
	p.Kill()
	return false
}

// Kill kills the process and waits for it to be reaped.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stderr is everything the process wrote to stderr so far (where the
// binaries log).
func (p *Process) Stderr() string {
	b, _ := os.ReadFile(p.StderrPath)
	return string(b)
}

// Stdout is everything the process wrote to stdout so far.
func (p *Process) Stdout() string {
	b, _ := os.ReadFile(p.StdoutPath)
	return string(b)
}

func (p *Process) dumpLogs(t testing.TB) {
	for _, f := range []string{p.StdoutPath, p.StderrPath} {
		b, err := os.ReadFile(f)
		if err != nil || len(b) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > logTailLines {
			lines = lines[len(lines)-logTailLines:]
		}
		t.Logf("---- last %d lines of %s ----\n%s\n---- end of %s ----", len(lines), filepath.Base(f), strings.Join(lines, "\n"), filepath.Base(f))
	}
}

// runBin runs bin ARGS… to completion under setpriv --pdeathsig KILL, with
// the harness's clean environment and cliTimeout, and returns its output
// and exit status.
func runBin(t testing.TB, bin string, args ...string) (stdout, stderr string, exitCode int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "setpriv", append([]string{"--pdeathsig", "KILL", "--", bin}, args...)...)
	cmd.Env = cleanEnv(nil)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: no answer within %s", filepath.Base(bin), strings.Join(args, " "), cliTimeout)
	}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%s %s: %v", filepath.Base(bin), strings.Join(args, " "), err)
		}
		return out.String(), errb.String(), ee.ExitCode()
	}
	return out.String(), errb.String(), 0
}
