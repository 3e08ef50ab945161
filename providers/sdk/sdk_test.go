package sdk_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"attache.dev/attache/providers/sdk"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

func params(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParams(t *testing.T) {
	tests := []struct {
		name   string
		in     map[string]any
		fields []string // violations wanted, in order
	}{
		{"valid", map[string]any{"name": "x", "n": 3.0, "list": []any{"a"}, "objs": []any{map[string]any{"k": "v"}}, "d": "5s", "b": true}, nil},
		{"missing", map[string]any{}, []string{"params.name", "params.n"}},
		{"types", map[string]any{"name": 1.0, "n": 1.5, "list": []any{1.0}, "objs": []any{"x"}, "d": "soon", "b": "yes"},
			[]string{"params.name", "params.n", "params.list[0]", "params.objs[0]", "params.d", "params.b"}},
		{"unknown", map[string]any{"name": "x", "n": 1.0, "extra": 1.0, "objs": []any{map[string]any{"k": "v", "zz": 1.0}}}, []string{"params.extra", "params.objs[0].zz"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := sdk.NewParams(params(t, tt.in))
			p.String("name", true)
			p.Int("n", true)
			p.Strings("list", false)
			for _, o := range p.Objects("objs", false) {
				o.String("k", true)
			}
			p.Duration("d", false)
			p.Bool("b", false)
			err := p.Err()
			if len(tt.fields) == 0 {
				if err != nil {
					t.Fatalf("unexpected %v", err)
				}
				return
			}
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			var got []string
			for _, v := range sdk.Violations(err) {
				got = append(got, v.Field)
				if !strings.Contains(err.Error(), v.Field) {
					t.Errorf("message %q does not name %s", err, v.Field)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.fields, ",") {
				t.Errorf("violations %v, want %v", got, tt.fields)
			}
		})
	}
}

func TestDecodeConfig(t *testing.T) {
	var cfg struct {
		Root string `json:"root"`
	}
	if err := sdk.DecodeConfig(&providerv1.ConfigureRequest{Config: params(t, map[string]any{"root": "/r"})}, &cfg); err != nil || cfg.Root != "/r" {
		t.Fatalf("struct config: %v %q", err, cfg.Root)
	}
	err := sdk.DecodeConfig(&providerv1.ConfigureRequest{ConfigJson: []byte(`{"root":"/r","x":1}`)}, &cfg)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"x"`) {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestToStatus(t *testing.T) {
	if status.Code(sdk.ToStatus(context.Canceled)) != codes.Canceled {
		t.Error("canceled")
	}
	if status.Code(sdk.ToStatus(sdk.FailedPrecondition("x"))) != codes.FailedPrecondition {
		t.Error("status passes through")
	}
}

// fake is a provider that streams two progress events.
type fake struct{}

func (fake) Describe(context.Context) (*providerv1.DescribeResponse, error) {
	return &providerv1.DescribeResponse{Name: "fake", Version: "1"}, nil
}
func (fake) Configure(context.Context, *providerv1.ConfigureRequest) error { return nil }
func (fake) Plan(_ context.Context, s *providerv1.Step) ([]*providerv1.Change, error) {
	if s.GetTenant() == "" {
		return nil, sdk.InvalidArgument("tenant", "required")
	}
	return []*providerv1.Change{{Resource: "r", Operation: providerv1.Operation_OPERATION_CREATE}}, nil
}
func (fake) Apply(_ context.Context, _ *providerv1.Step, progress sdk.ProgressFunc) (*providerv1.ApplyResult, error) {
	sdk.Report(progress, "r", "one")
	sdk.Report(progress, "r", "two")
	return &providerv1.ApplyResult{State: providerv1.StepState_STEP_STATE_SUCCEEDED}, nil
}
func (fake) Health(context.Context) (*providerv1.HealthResponse, error) {
	return &providerv1.HealthResponse{}, nil
}
func (fake) Usage(context.Context, *providerv1.UsageRequest) (*providerv1.UsageResponse, error) {
	return &providerv1.UsageResponse{}, nil
}

func TestInProcess(t *testing.T) {
	ip, err := sdk.ServeInProcess(fake{})
	if err != nil {
		t.Fatal(err)
	}
	defer ip.Close()
	var got []string
	res, err := ip.Apply(t.Context(), &providerv1.Step{Tenant: "a"}, func(p *providerv1.Progress) {
		if p.GetTime() == nil {
			t.Error("progress without time")
		}
		got = append(got, p.GetMessage())
	})
	if err != nil || res.GetState() != providerv1.StepState_STEP_STATE_SUCCEEDED || strings.Join(got, ",") != "one,two" {
		t.Fatalf("Apply: %v %v %v", res, err, got)
	}
	_, err = ip.Plan(t.Context(), &providerv1.Step{})
	if vs := sdk.Violations(err); len(vs) != 1 || vs[0].Field != "tenant" {
		t.Fatalf("Plan: %v, violations %v", err, vs)
	}
}

func TestNewLoggerHCLogShape(t *testing.T) {
	var buf bytes.Buffer
	sdk.NewLogger(&buf, slog.LevelDebug).Warn("hello", "k", "v")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m["@level"] != "warn" || m["@message"] != "hello" || m["@timestamp"] == nil || m["k"] != "v" {
		t.Fatalf("line %s", buf.Bytes())
	}
}
