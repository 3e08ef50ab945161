package fleet

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// RSSKiB returns the resident set size (VmRSS) of process pid in KiB.
func RSSKiB(pid int) (int64, error) {
	return statusField(pid, "VmRSS:")
}

// Threads returns the number of OS threads of process pid.
func Threads(pid int) (int64, error) {
	return statusField(pid, "Threads:")
}

func statusField(pid int, name string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s line", pid, name)
}

// CPUTime returns the user plus system CPU time process pid has used.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it start at
	// the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: malformed utime/stime", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// CPUMeter measures a process's CPU use over an interval.
type CPUMeter struct {
	pid   int
	cpu0  time.Duration
	wall0 time.Time
}

// StartCPU starts measuring process pid.
func StartCPU(pid int) (*CPUMeter, error) {
	c, err := CPUTime(pid)
	if err != nil {
		return nil, err
	}
	return &CPUMeter{pid: pid, cpu0: c, wall0: time.Now()}, nil
}

// CPUSinceStart measures process pid from its start, which was at t0.
func CPUSinceStart(pid int, t0 time.Time) *CPUMeter {
	return &CPUMeter{pid: pid, wall0: t0}
}

// Stop returns the CPU time used since StartCPU and its share of one core in
// percent (200% is two cores busy).
func (m *CPUMeter) Stop() (cpu time.Duration, percent float64, err error) {
	c, err := CPUTime(m.pid)
	if err != nil {
		return 0, 0, err
	}
	wall := time.Since(m.wall0)
	cpu = c - m.cpu0
	return cpu, 100 * cpu.Seconds() / wall.Seconds(), nil
}

// RaiseFileLimit raises the soft RLIMIT_NOFILE to the hard limit. Because it
// calls syscall.Setrlimit explicitly, processes started afterwards (the
// control plane) inherit the raised limit. It returns the new soft limit.
func RaiseFileLimit() (uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, err
	}
	r.Cur = r.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, err
	}
	return r.Cur, nil
}

// Machine describes the host for the benchmark record.
type Machine struct {
	CPUs      int
	CPUModel  string
	MemTotal  string
	GoVersion string
	Kernel    string
}

// DescribeMachine reads /proc for the CPU model, memory and kernel.
func DescribeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), CPUModel: "unknown", MemTotal: "unknown", Kernel: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if kib, err := statusLike("/proc/meminfo", "MemTotal:"); err == nil {
		m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kib)/(1<<20))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func statusLike(path, name string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, name)
}

// RunqueueWait is the time the threads of process pid alive now have spent
// runnable but waiting for a CPU (second field of
// /proc/PID/task/*/schedstat). Large growth over an interval means the
// process was starved of CPU rather than idle.
func RunqueueWait(pid int) (time.Duration, error) {
	dirs, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var total int64
	for _, d := range dirs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, d.Name()))
		if err != nil {
			continue // thread exited
		}
		f := strings.Fields(string(b))
		if len(f) >= 2 {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				total += n
			}
		}
	}
	return time.Duration(total), nil
}

// MachineMeter measures the whole machine's CPU use from /proc/stat.
type MachineMeter struct {
	busy, steal, total uint64
}

// StartMachine starts measuring.
func StartMachine() (*MachineMeter, error) {
	busy, steal, total, err := machineTicks()
	if err != nil {
		return nil, err
	}
	return &MachineMeter{busy: busy, steal: steal, total: total}, nil
}

// Stop returns the machine's busy CPU and the CPU stolen by the hypervisor
// since StartMachine, in percent of one core (with 2 CPUs, 200% is all).
func (m *MachineMeter) Stop() (busyPercent, stealPercent float64) {
	busy, steal, total, err := machineTicks()
	if err != nil || total == m.total {
		return 0, 0
	}
	n := float64(runtime.NumCPU())
	dt := float64(total - m.total)
	return 100 * n * float64(busy-m.busy) / dt, 100 * n * float64(steal-m.steal) / dt
}

func machineTicks() (busy, steal, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, 0, errors.New("/proc/stat: malformed")
	}
	var v [8]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	// user nice system idle iowait irq softirq steal
	for _, x := range v {
		total += x
	}
	idle := v[3] + v[4]
	return total - idle - v[7], v[7], total, nil
}
