package plan

import (
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// nest wraps v in n levels: lists when list, structs otherwise.
func nest(v *structpb.Value, n int, list bool) *structpb.Value {
	for range n {
		if list {
			v = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{v}})
		} else {
			v = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"k": v}})
		}
	}
	return v
}

func paramsCases() map[string]*structpb.Struct {
	s := func(kv ...any) *structpb.Struct {
		m := map[string]*structpb.Value{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1].(*structpb.Value)
		}
		return &structpb.Struct{Fields: m}
	}
	return map[string]*structpb.Struct{
		"nil":                  nil,
		"empty":                {},
		"scalars":              s("a", num(1), "b", structpb.NewStringValue("x"), "c", structpb.NewBoolValue(true), "d", structpb.NewNullValue()),
		"NaN":                  s("a", num(1), "b", num(math.NaN())),
		"-Inf in list":         s("a", structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{num(1), num(math.Inf(-1))}})),
		"unset value":          s("a", &structpb.Value{}),
		"nil value":            s("a", (*structpb.Value)(nil)),
		"nil struct value":     s("a", &structpb.Value{Kind: &structpb.Value_StructValue{}}),
		"nil list value":       s("a", &structpb.Value{Kind: &structpb.Value_ListValue{}}),
		"lists at the limit":   s("a", nest(num(1), MaxParamsDepth-2, true)),
		"lists too deep":       s("a", nest(num(1), MaxParamsDepth-1, true)),
		"structs at the limit": s("a", nest(num(1), MaxParamsDepth-2, false)),
		"structs too deep":     s("a", nest(num(1), MaxParamsDepth-1, false)),
		"empty list too deep":  s("a", nest(structpb.NewListValue(&structpb.ListValue{}), MaxParamsDepth-1, true)),
		"bad deep in many":     s("a", num(1), "b", num(2), "c", num(3), "z", nest(num(math.NaN()), 5, false)),
	}
}

// TestParamsFastPath checks that the allocation-free check agrees with the
// ordered one that builds the error.
func TestParamsFastPath(t *testing.T) {
	for name, p := range paramsCases() {
		t.Run(name, func(t *testing.T) {
			ok, err := structOK(p, 1), checkStruct(p, 1)
			if ok != (err == nil) {
				t.Fatalf("structOK %v, checkStruct %v", ok, err)
			}
			if err2 := checkParams(p); (err2 == nil) != ok || (err2 != nil && err2.Error() != err.Error()) {
				t.Fatalf("checkParams %v, checkStruct %v", err2, err)
			}
			wantOK := !strings.Contains(name, "NaN") && !strings.Contains(name, "Inf") && !strings.Contains(name, "too deep") &&
				!strings.Contains(name, "unset") && !strings.Contains(name, "nil value") && !strings.Contains(name, "bad")
			if ok != wantOK {
				t.Fatalf("ok = %v, want %v (%v)", ok, wantOK, err)
			}
		})
	}
}

// FuzzParamsCheck checks structOK against checkStruct on decoded Structs.
func FuzzParamsCheck(f *testing.F) {
	for _, p := range paramsCases() {
		if b, err := proto.Marshal(p); err == nil {
			f.Add(b)
		}
	}
	f.Add(protowire.AppendTag(nil, 1, protowire.BytesType))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s structpb.Struct
		if proto.Unmarshal(b, &s) != nil {
			return
		}
		ok, err := structOK(&s, 1), checkStruct(&s, 1)
		if ok != (err == nil) {
			t.Fatalf("structOK %v, checkStruct %v", ok, err)
		}
	})
}
