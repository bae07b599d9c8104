// Package shared holds what the Go interop plugin and host agree on: the handshake and the
// go-plugin glue for the KV service of proto/kv.proto.
package shared

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"rpcplugin-interop/kvproto"
)

// Handshake matches the Rust side: cookie KV_PLUGIN=rpcplugin-kv.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "KV_PLUGIN",
	MagicCookieValue: "rpcplugin-kv",
}

// KV is the plugin-side implementation hook: the server is built per broker.
type KV interface {
	kvproto.KVServer
}

// KVPlugin is the go-plugin Plugin for the KV service over gRPC.
type KVPlugin struct {
	plugin.Plugin
	// Impl builds the KV implementation once the broker is known (plugin side only).
	Impl func(broker *plugin.GRPCBroker) kvproto.KVServer
}

// GRPCServer registers the KV service on the plugin's gRPC server.
func (p *KVPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	kvproto.RegisterKVServer(s, p.Impl(broker))
	return nil
}

// Client is what the host dispenses: the KV stub and the broker of the connection.
type Client struct {
	KV     kvproto.KVClient
	Broker *plugin.GRPCBroker
}

// GRPCClient builds the host-side client.
func (p *KVPlugin) GRPCClient(_ context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &Client{KV: kvproto.NewKVClient(c), Broker: broker}, nil
}

// Adder adds two numbers; both sides serve it over the broker.
type Adder struct {
	kvproto.UnimplementedAdderServer
	Calls int
}

// Add returns a+b.
func (a *Adder) Add(_ context.Context, req *kvproto.AddRequest) (*kvproto.AddResponse, error) {
	a.Calls++
	return &kvproto.AddResponse{Sum: req.A + req.B}, nil
}

// AdderServer is a factory for broker.AcceptAndServe.
func AdderServer(adder *Adder) func([]grpc.ServerOption) *grpc.Server {
	return func(opts []grpc.ServerOption) *grpc.Server {
		s := grpc.NewServer(opts...)
		kvproto.RegisterAdderServer(s, adder)
		return s
	}
}
