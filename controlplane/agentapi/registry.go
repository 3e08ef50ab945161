package agentapi

import (
	"context"
	"errors"
	"sync"

	"attache.dev/attache/controlplane/store"
)

// errReplaced is the cancel cause of a session superseded by a newer one.
var errReplaced = errors.New("session replaced by a newer session of the same agent")

// registry maps the agents connected to this replica to their session's
// cancel function and plan nudge channel. It is connection state, not control-plane state: it dies
// with the process and agents reconnect.
type registry struct {
	mu sync.Mutex
	m  map[store.AgentKey]entry
}

type entry struct {
	session string
	cancel  context.CancelCauseFunc
	nudge   chan<- struct{} // capacity 1: "look for new plans"
}

func newRegistry() *registry { return &registry{m: make(map[store.AgentKey]entry)} }

// add registers a session; an older session of the same agent is cut (the
// agent reconnected and the old stream is dead or a duplicate).
func (r *registry) add(k store.AgentKey, session string, cancel context.CancelCauseFunc, nudge chan<- struct{}) {
	r.mu.Lock()
	old, ok := r.m[k]
	r.m[k] = entry{session: session, cancel: cancel, nudge: nudge}
	r.mu.Unlock()
	if ok {
		old.cancel(errReplaced)
	}
}

func (r *registry) remove(k store.AgentKey, session string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.m[k]; ok && e.session == session {
		delete(r.m, k)
	}
}

func (r *registry) cancel(k store.AgentKey, cause error) bool {
	r.mu.Lock()
	e, ok := r.m[k]
	r.mu.Unlock()
	if ok {
		e.cancel(cause)
	}
	return ok
}

// nudge tells the agent's session, if it is on this replica, to look for new
// plans. It never blocks: a nudge already pending covers this one.
func (r *registry) nudge(k store.AgentKey) bool {
	r.mu.Lock()
	e, ok := r.m[k]
	r.mu.Unlock()
	if ok {
		select {
		case e.nudge <- struct{}{}:
		default:
		}
	}
	return ok
}

// nudgeAll nudges every session on this replica.
func (r *registry) nudgeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.m {
		select {
		case e.nudge <- struct{}{}:
		default:
		}
	}
}
