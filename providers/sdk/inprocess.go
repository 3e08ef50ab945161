package sdk

import (
	"context"
	"net"

	providerv1 "attache.dev/attache/protocol/gen/attache/provider/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
)

// InProcess is a provider served in-process over real gRPC on an in-memory
// connection (SPIRE's builtin plugins work the same way): every call goes
// through protobuf encoding and the gRPC server and client, exactly as with a
// plugin process, without the process. Tests and providers linked into the
// agent use it. Close stops both ends.
type InProcess struct {
	*Client
	srv  *grpc.Server
	conn *grpc.ClientConn
}

// ServeInProcess serves p on an in-memory gRPC connection and returns a
// client for it.
func ServeInProcess(p Provider) (*InProcess, error) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	providerv1.RegisterProviderServiceServer(srv, NewServer(p))
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///attache-provider-inprocess",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		srv.Stop()
		return nil, err
	}
	return &InProcess{Client: NewClient(conn), srv: srv, conn: conn}, nil
}

// Close closes the client connection and stops the server.
func (ip *InProcess) Close() error {
	err := ip.conn.Close()
	ip.srv.Stop()
	return err
}
