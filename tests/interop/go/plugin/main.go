// go-kv-plugin: a go-plugin (v1.8) plugin serving the KV service of proto/kv.proto, for the
// interop tests of rpcplugin.
//
// Env: KV_PLUGIN_VERSIONS (comma list, default "1"), KV_PLUGIN_MODE ("normal" or "flood": the
// first Put starts writing 4 MiB to stdout and stderr; Get("flood") reads "done" afterwards).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"rpcplugin-interop/kvproto"
	"rpcplugin-interop/shared"
)

type store struct {
	kvproto.UnimplementedKVServer
	broker *plugin.GRPCBroker
	logger hclog.Logger
	stderr *os.File // the real stderr, kept before go-plugin redirects os.Stderr
	mu     sync.Mutex
	data   map[string][]byte
	flood  bool
}

func (s *store) set(key string, value []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[key] = value
}

func (s *store) Get(_ context.Context, req *kvproto.GetRequest) (*kvproto.GetResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[req.Key]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no key %q", req.Key)
	}
	return &kvproto.GetResponse{Value: v}, nil
}

func (s *store) Put(_ context.Context, req *kvproto.PutRequest) (*kvproto.PutResponse, error) {
	s.mu.Lock()
	start := s.flood
	s.flood = false
	s.mu.Unlock()
	if start {
		s.set("flood", []byte("running"))
		go func() {
			chunk := []byte(strings.Repeat("x", 64*1024) + "\n")
			for i := 0; i < 64; i++ {
				os.Stdout.Write(chunk)
				os.Stderr.Write(chunk)
				s.stderr.Write(chunk)
			}
			s.set("flood", []byte("done"))
		}()
	}
	if req.Key == "announce" {
		// Announces N broker ids the host never dials (each listener is closed at once; the
		// ConnInfo has gone out by then).
		n, err := strconv.Atoi(string(req.Value))
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "announce: %v", err)
		}
		for i := 0; i < n; i++ {
			l, err := s.broker.Accept(s.broker.NextId())
			if err != nil {
				return nil, status.Errorf(codes.Internal, "announce %d: %v", i, err)
			}
			l.Close()
		}
	}
	s.set(req.Key, req.Value)
	return &kvproto.PutResponse{}, nil
}

func (s *store) AddViaHost(ctx context.Context, req *kvproto.AddViaHostRequest) (*kvproto.AddResponse, error) {
	conn, err := s.broker.Dial(req.AdderId)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "dialing host adder %d: %v", req.AdderId, err)
	}
	defer conn.Close()
	return kvproto.NewAdderClient(conn).Add(ctx, &kvproto.AddRequest{A: req.A, B: req.B})
}

func (s *store) ServeAdder(context.Context, *kvproto.ServeAdderRequest) (*kvproto.ServeAdderResponse, error) {
	id := s.broker.NextId()
	go s.broker.AcceptAndServe(id, shared.AdderServer(&shared.Adder{}))
	return &kvproto.ServeAdderResponse{AdderId: id}, nil
}

func (s *store) Speak(_ context.Context, req *kvproto.SpeakRequest) (*kvproto.SpeakResponse, error) {
	fmt.Fprint(os.Stdout, req.Stdout)
	fmt.Fprint(os.Stderr, req.Stderr)
	if req.LogMessage != "" {
		s.logger.Info(req.LogMessage)
	}
	return &kvproto.SpeakResponse{}, nil
}

// Upload stores the concatenation of the chunks under the first chunk's key. For the key
// "no-reply" it reads everything and returns without a reply message: grpc-go then ends the call
// with status OK and no message, which a host must survive.
func (s *store) Upload(stream kvproto.KV_UploadServer) error {
	var key string
	var value []byte
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if key == "" {
			key = chunk.Key
		}
		value = append(value, chunk.Data...)
		switch key {
		case "reject":
			// Ends the call at the first chunk, while the host is still sending.
			return status.Error(codes.InvalidArgument, "uploads under \"reject\" are refused")
		case "early":
			// Answers at the first chunk without reading the rest (grpc-go allows it).
			return stream.SendAndClose(&kvproto.UploadResponse{Key: key, Size: uint64(len(value))})
		}
	}
	if key == "no-reply" {
		return nil
	}
	if key == "" {
		return status.Error(codes.InvalidArgument, "no chunks")
	}
	s.set(key, value)
	return stream.SendAndClose(&kvproto.UploadResponse{Key: key, Size: uint64(len(value))})
}

// Download streams the value of a key in chunks of chunk_size bytes (64 KiB by default).
func (s *store) Download(req *kvproto.DownloadRequest, stream kvproto.KV_DownloadServer) error {
	s.mu.Lock()
	v, ok := s.data[req.Key]
	s.mu.Unlock()
	if !ok {
		return status.Errorf(codes.NotFound, "no key %q", req.Key)
	}
	size := int(req.ChunkSize)
	if size == 0 {
		size = 64 * 1024
	}
	for off := 0; off < len(v); off += size {
		end := off + size
		if end > len(v) {
			end = len(v)
		}
		if err := stream.Send(&kvproto.Chunk{Key: req.Key, Data: v[off:end]}); err != nil {
			return err
		}
	}
	return nil
}

// Echo sends every chunk back.
func (s *store) Echo(stream kvproto.KV_EchoServer) error {
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(chunk); err != nil {
			return err
		}
	}
}

func main() {
	realStderr := os.Stderr
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "go-kv-plugin",
		Level:      hclog.Trace,
		Output:     realStderr,
		JSONFormat: true,
	})
	data := map[string][]byte{
		"pid": []byte(strconv.Itoa(os.Getpid())),
		// What a provider's schema looks like to a host: resource types and their attributes.
		// The build-script example turns it into Rust types.
		"schema": []byte(`{"resources":[` +
			`{"name":"kv_item","attributes":[{"name":"key","type":"string","required":true},{"name":"value","type":"bytes"},{"name":"ttl_seconds","type":"int"}]},` +
			`{"name":"kv_blob","attributes":[{"name":"key","type":"string","required":true},{"name":"chunk_size","type":"int"},{"name":"compressed","type":"bool"}]}]}`),
	}
	flood := os.Getenv("KV_PLUGIN_MODE") == "flood"
	kv := &shared.KVPlugin{Impl: func(broker *plugin.GRPCBroker) kvproto.KVServer {
		return &store{broker: broker, logger: logger, stderr: realStderr, data: data, flood: flood}
	}}
	versions := os.Getenv("KV_PLUGIN_VERSIONS")
	if versions == "" {
		versions = "1"
	}
	sets := map[int]plugin.PluginSet{}
	for _, v := range strings.Split(versions, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			fmt.Fprintf(realStderr, "bad KV_PLUGIN_VERSIONS entry %q\n", v)
			os.Exit(2)
		}
		sets[n] = plugin.PluginSet{"kv": kv}
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  shared.Handshake,
		VersionedPlugins: sets,
		GRPCServer:       plugin.DefaultGRPCServer,
		Logger:           logger,
	})
}
