package sdk

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestWatchParent(t *testing.T) {
	var ppid atomic.Int64
	ppid.Store(4242)
	orphaned := make(chan struct{}, 2)
	stop := watchParent(func() int { return int(ppid.Load()) }, time.Millisecond, func() { orphaned <- struct{}{} })
	defer stop()

	time.Sleep(20 * time.Millisecond)
	select {
	case <-orphaned:
		t.Fatal("orphaned called while the parent is unchanged")
	default:
	}
	ppid.Store(1) // the host died; init adopted the plugin
	select {
	case <-orphaned:
	case <-time.After(5 * time.Second):
		t.Fatal("orphaned not called after the parent changed")
	}
	time.Sleep(20 * time.Millisecond)
	if len(orphaned) != 0 {
		t.Error("orphaned called more than once")
	}
}

func TestWatchParentStop(t *testing.T) {
	var ppid atomic.Int64
	ppid.Store(4242)
	called := make(chan struct{}, 1)
	stop := watchParent(func() int { return int(ppid.Load()) }, time.Millisecond, func() { called <- struct{}{} })
	stop()
	stop() // idempotent
	time.Sleep(10 * time.Millisecond)
	ppid.Store(1)
	time.Sleep(20 * time.Millisecond)
	select {
	case <-called:
		t.Error("orphaned called after stop")
	default:
	}
}
