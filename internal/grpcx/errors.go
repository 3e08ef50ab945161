package grpcx

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the domain of Attaché's google.rpc.ErrorInfo details.
const ErrorDomain = "attache.dev"

// Reasons carried in ErrorInfo, so peers branch on them rather than on text.
const (
	// ReasonAgentRevoked: the agent was revoked; it must enroll again.
	ReasonAgentRevoked = "AGENT_REVOKED"
	// ReasonCrossTenant: a message named a tenant other than the caller's.
	ReasonCrossTenant = "CROSS_TENANT"
)

// Error is a status error with code, message and an ErrorInfo reason.
func Error(code codes.Code, reason, msg string) error {
	s, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain})
	if err != nil {
		return status.Error(code, msg)
	}
	return s.Err()
}

// HasReason reports whether err is a status error carrying reason.
func HasReason(err error, reason string) bool {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return false
	}
	for _, d := range se.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain && info.GetReason() == reason {
			return true
		}
	}
	return false
}
