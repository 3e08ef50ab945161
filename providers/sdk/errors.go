package sdk

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FieldViolation is one refused field: Field is its path, e.g.
// "params.migrations[2].sql", Description says what is wrong with it.
type FieldViolation struct {
	Field       string
	Description string
}

// InvalidArgument returns a gRPC InvalidArgument error whose message starts
// with field ("params.path: must be relative") and which carries a
// google.rpc.BadRequest detail naming the field.
func InvalidArgument(field, format string, args ...any) error {
	return invalidArgument([]FieldViolation{{Field: field, Description: fmt.Sprintf(format, args...)}})
}

// invalidArgument builds one InvalidArgument status for all violations.
func invalidArgument(vs []FieldViolation) error {
	msg := ""
	br := &errdetails.BadRequest{}
	for i, v := range vs {
		if i > 0 {
			msg += "; "
		}
		msg += v.Field + ": " + v.Description
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field: v.Field, Description: v.Description,
		})
	}
	st := status.New(codes.InvalidArgument, msg)
	if withDetails, err := st.WithDetails(br); err == nil {
		st = withDetails
	}
	return st.Err()
}

// Violations returns the fields an InvalidArgument error names (from its
// BadRequest detail), or nil for any other error.
func Violations(err error) []FieldViolation {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		return nil
	}
	var out []FieldViolation
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		}
	}
	return out
}

// FailedPrecondition returns a gRPC FailedPrecondition error: the step is
// valid but the system is not in a state where it can be applied (e.g. a
// migration whose checksum differs from the one already applied).
func FailedPrecondition(format string, args ...any) error {
	return status.Errorf(codes.FailedPrecondition, format, args...)
}

// ToStatus turns err into a gRPC status error for the wire: status errors
// pass through, context errors become Canceled / DeadlineExceeded, anything
// else becomes Internal with err's message.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
