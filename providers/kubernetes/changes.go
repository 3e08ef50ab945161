package kubernetes

import (
	"fmt"
	"strings"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// maxListedChanges bounds the changes a Plan or an ApplyResult lists.
const maxListedChanges = 1000

// change is one entry of a diff. resource is "<apiVersion>/<Kind>
// <namespace>/<name>", e.g. "networking.k8s.io/v1/NetworkPolicy
// tenant-acme/default-deny" ("v1/Namespace tenant-acme" for a namespace).
type change struct {
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
func (cs *changes) add(resource string, op providerv1.Operation, format string, args ...any) {
	*cs = append(*cs, change{resource: resource, op: op, summary: fmt.Sprintf(format, args...)})
}

// counts counts the changes by operation.
func (cs changes) counts() map[providerv1.Operation]int {
	n := map[providerv1.Operation]int{}
	for _, c := range cs {
		n[c.op]++
	}
	return n
}

// tally says how many objects were created, updated, deleted, unchanged.
func (cs changes) tally() string {
	n := cs.counts()
	return fmt.Sprintf("%d created, %d updated, %d deleted, %d unchanged", n[opCreate], n[opUpdate], n[opDelete], n[opNoop])
}

// proto returns the diff for the wire, truncated past maxListedChanges with
// a last entry saying how many were left out.
func (cs changes) proto() []*providerv1.Change {
	out := make([]*providerv1.Change, 0, min(len(cs), maxListedChanges+1))
	for i, c := range cs {
		if i == maxListedChanges {
			rest := cs[i:]
			out = append(out, &providerv1.Change{Resource: fmt.Sprintf("%d more", len(rest)), Operation: opUpdate,
				Summary: fmt.Sprintf("%d more changes not listed (%s)", len(rest), rest.tally())})
			break
		}
		out = append(out, &providerv1.Change{Resource: c.resource, Operation: c.op, Summary: c.summary})
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
		case bool:
			s.Fields[k] = structpb.NewBoolValue(x)
		default:
			panic(fmt.Sprintf("output %s: unsupported type %T", k, v))
		}
	}
	return s
}

// minSecretLen is the shortest secret value scrub replaces: shorter ones
// would blank out ordinary words (secrets that short are not secret).
const minSecretLen = 4

// scrub replaces every secret value in msg with "***".
func scrub(msg string, secrets []string) string {
	for _, s := range secrets {
		if len(s) >= minSecretLen {
			msg = strings.ReplaceAll(msg, s, "***")
		}
	}
	return msg
}

// scrubErr returns err with secrets removed from its message, keeping its
// gRPC code (a plain error becomes Internal via sdk.ToStatus later; its
// message is scrubbed here).
func scrubErr(err error, secrets []string) error {
	if err == nil || len(secrets) == 0 {
		return err
	}
	if st, ok := status.FromError(err); ok {
		pb := st.Proto()
		pb.Message = scrub(pb.Message, secrets)
		return status.FromProto(pb).Err()
	}
	if msg := scrub(err.Error(), secrets); msg != err.Error() {
		return scrubbedError{msg: msg, err: err}
	}
	return err
}

// scrubbedError is an error whose message had secrets removed; it still
// unwraps to the original (for context errors).
type scrubbedError struct {
	msg string
	err error
}

func (e scrubbedError) Error() string { return e.msg }
func (e scrubbedError) Unwrap() error { return e.err }

// scrubChanges removes secrets from change summaries.
func scrubChanges(cs []*providerv1.Change, secrets []string) []*providerv1.Change {
	for _, c := range cs {
		c.Summary = scrub(c.GetSummary(), secrets)
		c.Resource = scrub(c.GetResource(), secrets)
	}
	return cs
}

// scrubResult removes secrets from what a result shows.
func scrubResult(r *providerv1.ApplyResult, secrets []string) *providerv1.ApplyResult {
	if r == nil || len(secrets) == 0 {
		return r
	}
	r.Message = scrub(r.GetMessage(), secrets)
	scrubChanges(r.GetChanges(), secrets)
	for k, v := range r.GetOutputs().GetFields() {
		if sv, ok := v.GetKind().(*structpb.Value_StringValue); ok {
			r.Outputs.Fields[k] = structpb.NewStringValue(scrub(sv.StringValue, secrets))
		}
	}
	return r
}
