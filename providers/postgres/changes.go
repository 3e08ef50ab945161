package postgres

import (
	"fmt"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/protobuf/types/known/structpb"
)

// maxListedChanges bounds the changes a Plan or an ApplyResult lists one by
// one; beyond it they are listed per kind of resource and operation (a
// step over 10,000 tenants would otherwise outgrow a gRPC message).
const maxListedChanges = 1000

// change is one entry of a diff; kind is the resource pattern its group
// shows when the diff is too long to list ("postgres/roles/*").
type change struct {
	kind     string
	resource string
	op       providerv1.Operation
	summary  string
}

// changes is a diff in the order Apply makes it.
type changes []change

// Operations, short.
const (
	opCreate = providerv1.Operation_OPERATION_CREATE
	opUpdate = providerv1.Operation_OPERATION_UPDATE
	opDelete = providerv1.Operation_OPERATION_DELETE
	opNoop   = providerv1.Operation_OPERATION_NOOP
)

// add appends a change.
func (cs *changes) add(kind, resource string, op providerv1.Operation, format string, args ...any) {
	*cs = append(*cs, change{kind: kind, resource: resource, op: op, summary: fmt.Sprintf(format, args...)})
}

// count counts the changes that are not NOOP.
func (cs changes) count() int {
	n := 0
	for _, c := range cs {
		if c.op != opNoop {
			n++
		}
	}
	return n
}

// proto returns the diff for the wire: one Change per change, or, past
// maxListedChanges, one per kind and operation in order of first
// appearance, saying how many it stands for.
func (cs changes) proto() []*providerv1.Change {
	if len(cs) <= maxListedChanges {
		out := make([]*providerv1.Change, len(cs))
		for i, c := range cs {
			out[i] = &providerv1.Change{Resource: c.resource, Operation: c.op, Summary: c.summary}
		}
		return out
	}
	type key struct {
		kind string
		op   providerv1.Operation
	}
	type group struct {
		first, last change
		n           int
	}
	var order []key
	groups := map[key]*group{}
	for _, c := range cs {
		k := key{c.kind, c.op}
		g, ok := groups[k]
		if !ok {
			g = &group{first: c}
			groups[k] = g
			order = append(order, k)
		}
		g.last = c
		g.n++
	}
	out := make([]*providerv1.Change, 0, len(order))
	for _, k := range order {
		g := groups[k]
		summary := g.first.summary
		if g.n > 1 {
			summary = fmt.Sprintf("%d resources, %s … %s; first: %s", g.n, g.first.resource, g.last.resource, g.first.summary)
		}
		out = append(out, &providerv1.Change{Resource: k.kind, Operation: k.op, Summary: summary})
	}
	return out
}

// succeeded builds a SUCCEEDED result.
func succeeded(msg string, cs changes, outputs map[string]any) *providerv1.ApplyResult {
	return &providerv1.ApplyResult{State: providerv1.StepState_STEP_STATE_SUCCEEDED, Message: msg, Changes: cs.proto(), Outputs: toStruct(outputs)}
}

// failed builds a FAILED result.
func failed(msg string, cs changes, outputs map[string]any) *providerv1.ApplyResult {
	return &providerv1.ApplyResult{State: providerv1.StepState_STEP_STATE_FAILED, Message: msg, Changes: cs.proto(), Outputs: toStruct(outputs)}
}

// toStruct converts outputs (strings and numbers) to a Struct; nil stays nil.
func toStruct(m map[string]any) *structpb.Struct {
	if len(m) == 0 {
		return nil
	}
	s := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for k, v := range m {
		switch x := v.(type) {
		case string:
			s.Fields[k] = structpb.NewStringValue(x)
		case int:
			s.Fields[k] = structpb.NewNumberValue(float64(x))
		case int64:
			s.Fields[k] = structpb.NewNumberValue(float64(x))
		case float64:
			s.Fields[k] = structpb.NewNumberValue(x)
		case bool:
			s.Fields[k] = structpb.NewBoolValue(x)
		default:
			panic(fmt.Sprintf("output %s: unsupported type %T", k, v))
		}
	}
	return s
}
