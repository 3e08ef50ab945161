package sdk

import (
	"context"
	"errors"
	"io"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// server serves a Provider as the gRPC ProviderService.
type server struct {
	providerv1.UnimplementedProviderServiceServer
	p Provider
}

// NewServer returns p as a ProviderServiceServer: errors are turned into
// gRPC statuses (ToStatus) and Apply's progress is streamed.
func NewServer(p Provider) providerv1.ProviderServiceServer {
	return &server{p: p}
}

func (s *server) Describe(ctx context.Context, _ *providerv1.DescribeRequest) (*providerv1.DescribeResponse, error) {
	resp, err := s.p.Describe(ctx)
	return resp, ToStatus(err)
}

func (s *server) Configure(ctx context.Context, req *providerv1.ConfigureRequest) (*providerv1.ConfigureResponse, error) {
	if err := s.p.Configure(ctx, req); err != nil {
		return nil, ToStatus(err)
	}
	return &providerv1.ConfigureResponse{}, nil
}

func (s *server) Plan(ctx context.Context, req *providerv1.PlanRequest) (*providerv1.PlanResponse, error) {
	if req.GetStep() == nil {
		return nil, InvalidArgument("step", "required")
	}
	changes, err := s.p.Plan(ctx, req.GetStep())
	if err != nil {
		return nil, ToStatus(err)
	}
	return &providerv1.PlanResponse{Changes: changes}, nil
}

func (s *server) Apply(req *providerv1.ApplyRequest, stream grpc.ServerStreamingServer[providerv1.ApplyEvent]) error {
	if req.GetStep() == nil {
		return InvalidArgument("step", "required")
	}
	var sendErr error
	progress := func(pr *providerv1.Progress) {
		if sendErr != nil {
			return
		}
		if pr.GetTime() == nil {
			pr.Time = timestamppb.Now()
		}
		sendErr = stream.Send(&providerv1.ApplyEvent{Event: &providerv1.ApplyEvent_Progress{Progress: pr}})
	}
	res, err := s.p.Apply(stream.Context(), req.GetStep(), progress)
	if err != nil {
		return ToStatus(err)
	}
	if sendErr != nil {
		return ToStatus(sendErr)
	}
	if res == nil {
		return status.Error(codes.Internal, "provider returned neither a result nor an error")
	}
	return stream.Send(&providerv1.ApplyEvent{Event: &providerv1.ApplyEvent_Result{Result: res}})
}

func (s *server) Health(ctx context.Context, _ *providerv1.HealthRequest) (*providerv1.HealthResponse, error) {
	resp, err := s.p.Health(ctx)
	return resp, ToStatus(err)
}

func (s *server) Usage(ctx context.Context, req *providerv1.UsageRequest) (*providerv1.UsageResponse, error) {
	resp, err := s.p.Usage(ctx, req)
	return resp, ToStatus(err)
}

// Client is a Provider backed by a ProviderService gRPC client: what the
// host gets from a plugin process and what the in-process pair returns.
// Errors are gRPC status errors; match them with status.Code.
type Client struct {
	c providerv1.ProviderServiceClient
}

var _ Provider = (*Client)(nil)

// NewClient returns a Provider that calls the ProviderService over conn.
func NewClient(conn grpc.ClientConnInterface) *Client {
	return &Client{c: providerv1.NewProviderServiceClient(conn)}
}

// Describe calls ProviderService.Describe.
func (c *Client) Describe(ctx context.Context) (*providerv1.DescribeResponse, error) {
	return c.c.Describe(ctx, &providerv1.DescribeRequest{})
}

// Configure calls ProviderService.Configure.
func (c *Client) Configure(ctx context.Context, req *providerv1.ConfigureRequest) error {
	_, err := c.c.Configure(ctx, req)
	return err
}

// Plan calls ProviderService.Plan.
func (c *Client) Plan(ctx context.Context, step *providerv1.Step) ([]*providerv1.Change, error) {
	resp, err := c.c.Plan(ctx, &providerv1.PlanRequest{Step: step})
	if err != nil {
		return nil, err
	}
	return resp.GetChanges(), nil
}

// Apply calls ProviderService.Apply, passing each progress event to
// progress and returning the final result.
func (c *Client) Apply(ctx context.Context, step *providerv1.Step, progress ProgressFunc) (*providerv1.ApplyResult, error) {
	stream, err := c.c.Apply(ctx, &providerv1.ApplyRequest{Step: step})
	if err != nil {
		return nil, err
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, status.Error(codes.Internal, "apply stream ended without a result")
		}
		if err != nil {
			return nil, err
		}
		switch e := ev.GetEvent().(type) {
		case *providerv1.ApplyEvent_Progress:
			if progress != nil {
				progress(e.Progress)
			}
		case *providerv1.ApplyEvent_Result:
			return e.Result, nil
		default:
			// An event this client does not know yet: ignore it.
		}
	}
}

// Health calls ProviderService.Health.
func (c *Client) Health(ctx context.Context) (*providerv1.HealthResponse, error) {
	return c.c.Health(ctx, &providerv1.HealthRequest{})
}

// Usage calls ProviderService.Usage.
func (c *Client) Usage(ctx context.Context, req *providerv1.UsageRequest) (*providerv1.UsageResponse, error) {
	return c.c.Usage(ctx, req)
}
