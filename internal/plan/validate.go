package plan

import (
	"container/heap"
	"errors"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	planv1 "attache.dev/attache/protocol/gen/attache/plan/v1"

	"attache.dev/attache/internal/identity"
)

// Length bounds on names and references.
const (
	maxPlanIDLen     = 128
	maxNameLen       = 64 // provider, action
	maxResourceLen   = 1024
	maxReleaseRefLen = 256
	maxCycles        = 10 // cycles reported per plan
)

var (
	errNilPlan    = errors.New("plan is nil")
	errNoSteps    = errors.New("plan has no steps")
	errNilStep    = errors.New("step is nil")
	errUnsetValue = errors.New("value has no kind set")
	errTooDeep    = fmt.Errorf("nested deeper than %d levels", MaxParamsDepth)
	errNonFinite  = errors.New("number is NaN or infinite")
)

// Validate reports every problem with p at once (errors.Join), each naming
// the step (index and id) and field concerned. A valid plan has: a plan id;
// a valid tenant; an agent SPIFFE ID of that tenant; a sequence of 1 or more;
// issued_at and expires_at set, with expires_at after issued_at by at most
// MaxLifetime; a release_ref without whitespace or control characters; 1 to
// MaxSteps steps with unique ids (lowercase DNS labels), well-formed provider
// and action names ([a-z][a-z0-9._-]*), a resource, params of at most
// MaxParamsDepth levels holding only finite numbers, depends_on naming other
// existing steps, without duplicates and without cycles (each cycle is
// reported), and a well-formed compensation where there is one.
//
// Validate does not check signatures, the clock or who the plan is for;
// package planverify does.
func Validate(p *planv1.Plan) error {
	if p == nil {
		return errNilPlan
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	switch id := p.GetPlanId(); {
	case id == "":
		add("plan_id is empty")
	case len(id) > maxPlanIDLen:
		add("plan_id is %d bytes, limit %d", len(id), maxPlanIDLen)
	case !validPlanID(id):
		add("plan_id %.64q is not well-formed (want [A-Za-z0-9][A-Za-z0-9._-]*)", id)
	}
	tenantOK := identity.ValidName(p.GetTenant())
	if !tenantOK {
		add("tenant %.64q is not a valid tenant name (lowercase DNS label)", p.GetTenant())
	}
	if p.GetAgentSpiffeId() == "" {
		add("agent_spiffe_id is empty")
	} else if id, err := spiffeid.FromString(p.GetAgentSpiffeId()); err != nil {
		add("agent_spiffe_id %.200q: %v", p.GetAgentSpiffeId(), err)
	} else if tenant, _, err := identity.ParseAgentID(id.TrustDomain(), id); err != nil {
		add("agent_spiffe_id: %v", err)
	} else if tenantOK && tenant != p.GetTenant() {
		add("agent_spiffe_id %s is an agent of tenant %q, but the plan is for tenant %q", id, tenant, p.GetTenant())
	}
	if p.GetSequence() == 0 {
		add("sequence is 0; sequences start at 1")
	}
	issuedOK, expiresOK := true, true
	if p.GetIssuedAt() == nil {
		add("issued_at is not set")
		issuedOK = false
	} else if err := p.GetIssuedAt().CheckValid(); err != nil {
		add("issued_at: %v", err)
		issuedOK = false
	}
	if p.GetExpiresAt() == nil {
		add("expires_at is not set")
		expiresOK = false
	} else if err := p.GetExpiresAt().CheckValid(); err != nil {
		add("expires_at: %v", err)
		expiresOK = false
	}
	if issuedOK && expiresOK {
		issued, expires := p.GetIssuedAt().AsTime(), p.GetExpiresAt().AsTime()
		switch life := expires.Sub(issued); {
		case !expires.After(issued):
			add("expires_at %s is not after issued_at %s", expires.Format("2006-01-02T15:04:05.999999999Z07:00"), issued.Format("2006-01-02T15:04:05.999999999Z07:00"))
		case life > MaxLifetime:
			add("expires_at is %s after issued_at, limit %s", life, MaxLifetime)
		}
	}
	if ref := p.GetReleaseRef(); ref != "" {
		if len(ref) > maxReleaseRefLen {
			add("release_ref is %d bytes, limit %d", len(ref), maxReleaseRefLen)
		} else if !printableNoSpace(ref) {
			add("release_ref %.64q holds whitespace or control characters", ref)
		}
	}

	errs = append(errs, validateSteps(p.GetSteps())...)
	return errors.Join(errs...)
}

// ValidateSteps reports every problem with a plan's steps at once
// (errors.Join), exactly as Validate reports them: 1 to MaxSteps steps with
// unique ids, well-formed provider and action names, a resource, bounded
// and finite params, depends_on naming other existing steps without
// duplicates or cycles, and a well-formed compensation where there is one.
// It is for steps built outside a plan (a release's rendered templates);
// Validate calls it for a plan's steps.
func ValidateSteps(steps []*planv1.Step) error {
	return errors.Join(validateSteps(steps)...)
}

func validateSteps(steps []*planv1.Step) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch n := len(steps); {
	case n == 0:
		errs = append(errs, errNoSteps)
	case n > MaxSteps:
		// Validating each of a huge list would only bury this error.
		add("plan has %d steps, limit %d", n, MaxSteps)
		return errs
	}
	index := make(map[string]int, len(steps))
	for i, s := range steps {
		if s == nil {
			continue
		}
		if j, dup := index[s.GetId()]; dup && s.GetId() != "" {
			add("%s: id is also the id of steps[%d]", stepName(i, s), j)
			continue
		}
		index[s.GetId()] = i
	}
	for i, s := range steps {
		errs = append(errs, validateStep(i, s, index)...)
	}
	return append(errs, findCycles(steps, index)...)
}

// stepName names step i in errors: steps[3] "migrate".
func stepName(i int, s *planv1.Step) string {
	if s.GetId() == "" {
		return fmt.Sprintf("steps[%d]", i)
	}
	return fmt.Sprintf("steps[%d] %.64q", i, s.GetId())
}

func validateStep(i int, s *planv1.Step, index map[string]int) []error {
	if s == nil {
		return []error{fmt.Errorf("%s: %w", stepName(i, s), errNilStep)}
	}
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(stepName(i, s)+": "+format, args...))
	}
	if s.GetId() == "" {
		add("id is empty")
	} else if !validStepID(s.GetId()) {
		add("id is not a lowercase DNS label ([a-z0-9-], at most 63, starting and ending alphanumeric)")
	}
	checkName := func(field, v string) {
		switch {
		case v == "":
			add("%s is empty", field)
		case len(v) > maxNameLen:
			add("%s is %d bytes, limit %d", field, len(v), maxNameLen)
		case !validName(v):
			add("%s %.64q is not well-formed (want [a-z][a-z0-9._-]*)", field, v)
		}
	}
	checkName("provider", s.GetProvider())
	checkName("action", s.GetAction())
	switch r := s.GetResource(); {
	case r == "":
		add("resource is empty")
	case len(r) > maxResourceLen:
		add("resource is %d bytes, limit %d", len(r), maxResourceLen)
	case !printableNoSpace(r):
		add("resource %.64q holds whitespace or control characters", r)
	}
	if err := checkParams(s.GetParams()); err != nil {
		add("params%v", err)
	}
	if len(s.GetDependsOn()) > MaxSteps {
		add("depends_on lists %d steps, limit %d", len(s.GetDependsOn()), MaxSteps)
	} else {
		seen := make(map[string]bool, len(s.GetDependsOn()))
		for k, d := range s.GetDependsOn() {
			switch j, ok := index[d]; {
			case d == "":
				add("depends_on[%d] is empty", k)
			case seen[d]:
				add("depends_on[%d] lists %.64q twice", k, d)
			case !ok:
				add("depends_on[%d] names unknown step %.64q", k, d)
			case j == i:
				add("depends_on[%d]: the step depends on itself", k)
			}
			seen[d] = true
		}
	}
	if c := s.GetCompensation(); c != nil {
		switch a := c.GetAction(); {
		case a == "":
			add("compensation.action is empty")
		case len(a) > maxNameLen:
			add("compensation.action is %d bytes, limit %d", len(a), maxNameLen)
		case !validName(a):
			add("compensation.action %.64q is not well-formed (want [a-z][a-z0-9._-]*)", a)
		}
		if err := checkParams(c.GetParams()); err != nil {
			add("compensation.params%v", err)
		}
	}
	return errs
}

// pathError carries the path below params at which a problem sits.
type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

// checkParams checks params; the error's text starts with the path below
// params (".a.b[2]: …"). Valid params (the agent's every plan) are checked
// in map order without allocating; only invalid ones are walked again in key
// order, so that the error reported is always the same one.
func checkParams(s *structpb.Struct) error {
	if structOK(s, 1) {
		return nil
	}
	return checkStruct(s, 1)
}

// structOK and valueOK say whether checkStruct and checkValue would return
// nil, without building paths or sorting keys.
func structOK(s *structpb.Struct, depth int) bool {
	if s == nil {
		return true
	}
	if depth > MaxParamsDepth {
		return false
	}
	for _, v := range s.GetFields() {
		if !valueOK(v, depth+1) {
			return false
		}
	}
	return true
}

func valueOK(v *structpb.Value, depth int) bool {
	if depth > MaxParamsDepth {
		return false
	}
	switch k := v.GetKind().(type) {
	case nil:
		return false
	case *structpb.Value_NumberValue:
		return !math.IsNaN(k.NumberValue) && !math.IsInf(k.NumberValue, 0)
	case *structpb.Value_StructValue:
		return structOK(k.StructValue, depth)
	case *structpb.Value_ListValue:
		for _, e := range k.ListValue.GetValues() {
			if !valueOK(e, depth+1) {
				return false
			}
		}
	}
	return true
}

// checkStruct checks s, found depth levels below params, in key order.
func checkStruct(s *structpb.Struct, depth int) error {
	if s == nil {
		return nil
	}
	if depth > MaxParamsDepth {
		return &pathError{"", errTooDeep}
	}
	fields := s.GetFields()
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if err := checkValue(fields[k], depth+1); err != nil {
			return prefix(keyPath(k), err)
		}
	}
	return nil
}

var simpleKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]{0,63}$`)

// keyPath renders a params key in an error path: .name, or ["odd key"].
func keyPath(k string) string {
	if simpleKey.MatchString(k) {
		return "." + k
	}
	return fmt.Sprintf("[%.64q]", k)
}

func checkValue(v *structpb.Value, depth int) error {
	if depth > MaxParamsDepth {
		return &pathError{"", errTooDeep}
	}
	switch k := v.GetKind().(type) {
	case nil:
		return &pathError{"", errUnsetValue}
	case *structpb.Value_NumberValue:
		if math.IsNaN(k.NumberValue) || math.IsInf(k.NumberValue, 0) {
			return &pathError{"", errNonFinite}
		}
	case *structpb.Value_StructValue:
		return checkStruct(k.StructValue, depth)
	case *structpb.Value_ListValue:
		for i, e := range k.ListValue.GetValues() {
			if err := checkValue(e, depth+1); err != nil {
				return prefix(fmt.Sprintf("[%d]", i), err)
			}
		}
	}
	return nil
}

func prefix(p string, err error) error {
	var pe *pathError
	if errors.As(err, &pe) {
		return &pathError{p + pe.path, pe.err}
	}
	return &pathError{p, err}
}

// The patterns below are checked by hand: regexp costs more than the rest of
// Validate together, and the agent validates every plan it receives.

func lower(c byte) bool { return 'a' <= c && c <= 'z' }
func digit(c byte) bool { return '0' <= c && c <= '9' }

// validStepID: a lowercase DNS label, ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$.
func validStepID(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !lower(c) && !digit(c) && c != '-' {
			return false
		}
	}
	return true
}

// validName: ^[a-z][a-z0-9._-]*$ (provider and action names).
func validName(s string) bool {
	if len(s) == 0 || !lower(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !lower(c) && !digit(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// validPlanID: ^[A-Za-z0-9][A-Za-z0-9._-]*$.
func validPlanID(s string) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := lower(c) || digit(c) || ('A' <= c && c <= 'Z')
		if !alnum && (i == 0 || (c != '.' && c != '_' && c != '-')) {
			return false
		}
	}
	return true
}

// printableNoSpace reports whether s is valid UTF-8 holding only printable,
// non-space runes.
func printableNoSpace(s string) bool {
	ascii := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf {
			ascii = false
			break
		} else if c <= ' ' || c == 0x7f {
			return false
		}
	}
	if ascii {
		return true
	}
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// findCycles reports each dependency cycle that a depth-first search over
// the steps (in declaration order, dependencies in listed order) closes, up
// to maxCycles. Unknown and self dependencies are reported by validateStep
// and skipped here.
func findCycles(steps []*planv1.Step, index map[string]int) []error {
	const (
		white = iota
		grey
		black
	)
	color := make([]uint8, len(steps))
	var stack []int
	var errs []error
	var visit func(i int)
	visit = func(i int) {
		color[i] = grey
		stack = append(stack, i)
		for _, d := range steps[i].GetDependsOn() {
			j, ok := index[d]
			if !ok || j == i || steps[j] == nil {
				continue
			}
			switch color[j] {
			case white:
				visit(j)
			case grey:
				if len(errs) < maxCycles {
					errs = append(errs, cycleError(steps, stack, j))
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[i] = black
	}
	for i, s := range steps {
		if s != nil && color[i] == white {
			visit(i)
		}
	}
	if len(errs) == maxCycles {
		errs = append(errs, fmt.Errorf("more dependency cycles not reported"))
	}
	return errs
}

// cycleError describes the cycle on stack from step j back to j, in
// dependency direction: "a" depends on "b" depends on … on "a".
func cycleError(steps []*planv1.Step, stack []int, j int) error {
	start := len(stack) - 1
	for stack[start] != j {
		start--
	}
	var b strings.Builder
	for _, k := range stack[start:] {
		fmt.Fprintf(&b, "%q -> ", steps[k].GetId())
	}
	fmt.Fprintf(&b, "%q", steps[j].GetId())
	return fmt.Errorf("%s: depends_on forms a cycle: %s", stepName(j, steps[j]), b.String())
}

// Order returns p's steps in an order that runs every step after all the
// steps it depends on and otherwise keeps declaration order: at each point
// the earliest-declared step whose dependencies are done comes next. It fails
// if p does not validate.
func Order(p *planv1.Plan) ([]*planv1.Step, error) {
	if err := Validate(p); err != nil {
		return nil, err
	}
	steps := p.GetSteps()
	index := make(map[string]int, len(steps))
	for i, s := range steps {
		index[s.GetId()] = i
	}
	waiting := make([]int, len(steps))      // dependencies not yet ordered
	dependents := make([][]int, len(steps)) // who waits on step i
	ready := &intHeap{}
	for i, s := range steps {
		waiting[i] = len(s.GetDependsOn())
		for _, d := range s.GetDependsOn() {
			dependents[index[d]] = append(dependents[index[d]], i)
		}
		if waiting[i] == 0 {
			heap.Push(ready, i)
		}
	}
	out := make([]*planv1.Step, 0, len(steps))
	for ready.Len() > 0 {
		i := heap.Pop(ready).(int)
		out = append(out, steps[i])
		for _, k := range dependents[i] {
			if waiting[k]--; waiting[k] == 0 {
				heap.Push(ready, k)
			}
		}
	}
	if len(out) != len(steps) { // Validate rules cycles out; defensive.
		return nil, errors.New("plan steps have a dependency cycle")
	}
	return out, nil
}

// intHeap is a min-heap of step indexes.
type intHeap []int

func (h intHeap) Len() int           { return len(h) }
func (h intHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
