package enroll

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"attache.dev/attache/internal/identity"
	"attache.dev/attache/internal/jointoken"
	agentv1 "attache.dev/attache/protocol/gen/attache/agent/v1"
)

var caKey = [32]byte{1, 2, 3}

func validRequest(f testing.TB) (*agentv1.EnrollRequest, jointoken.Token) {
	tok, err := jointoken.New("127.0.0.1:7440", "example.org", caKey, [32]byte{4}, time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	k, _ := identity.NewKey()
	csr, _ := identity.NewCSR(k)
	return &agentv1.EnrollRequest{JoinToken: tok.String(), Csr: csr, AgentVersion: "1.0.0", Hostname: "h"}, tok
}

func TestValidate(t *testing.T) {
	good, _ := validRequest(t)
	other, _ := jointoken.New("127.0.0.1:7440", "other.org", caKey, [32]byte{4}, time.Hour, time.Now())
	wrongCA, _ := jointoken.New("127.0.0.1:7440", "example.org", [32]byte{9}, [32]byte{4}, time.Hour, time.Now())
	with := func(edit func(r *agentv1.EnrollRequest)) *agentv1.EnrollRequest {
		r := proto.Clone(good).(*agentv1.EnrollRequest)
		edit(r)
		return r
	}
	for _, tc := range []struct {
		name string
		req  *agentv1.EnrollRequest
		code codes.Code
		want string
	}{
		{"good", good, codes.OK, ""},
		{"no token", with(func(r *agentv1.EnrollRequest) { r.JoinToken = "" }), codes.InvalidArgument, "join token"},
		{"other trust domain", with(func(r *agentv1.EnrollRequest) { r.JoinToken = other.String() }), codes.FailedPrecondition, "another control plane"},
		{"other CA", with(func(r *agentv1.EnrollRequest) { r.JoinToken = wrongCA.String() }), codes.FailedPrecondition, "another control plane"},
		{"no csr", with(func(r *agentv1.EnrollRequest) { r.Csr = nil }), codes.InvalidArgument, "csr"},
		{"long version", with(func(r *agentv1.EnrollRequest) { r.AgentVersion = strings.Repeat("v", 65) }), codes.InvalidArgument, "agent_version"},
		{"long hostname", with(func(r *agentv1.EnrollRequest) { r.Hostname = strings.Repeat("h", 256) }), codes.InvalidArgument, "hostname"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := validate(tc.req, "example.org", caKey)
			if status.Code(err) != tc.code || (tc.want != "" && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("validate = %v, want %v containing %q", err, tc.code, tc.want)
			}
		})
	}
}

// FuzzEnrollRequest decodes arbitrary wire bytes as the enrollment service
// does and validates them: no panic, only InvalidArgument or
// FailedPrecondition refusals, and no token secret ever echoed in an error.
func FuzzEnrollRequest(f *testing.F) {
	good, tok := validRequest(f)
	b, _ := proto.Marshal(good)
	f.Add(b)
	f.Add(b[:len(b)/2])
	f.Add([]byte{0x0a, 0x03, 'a', 'b', 'c'})
	secret := tok.String()[len(jointoken.Prefix):]
	f.Fuzz(func(t *testing.T, data []byte) {
		var req agentv1.EnrollRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			return
		}
		_, err := validate(&req, "example.org", caKey)
		if err == nil {
			return
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.FailedPrecondition:
		default:
			t.Fatalf("unexpected code: %v", err)
		}
		if len(secret) > 16 && strings.Contains(err.Error(), secret) {
			t.Fatal("error echoes the join token")
		}
	})
}
