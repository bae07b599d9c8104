// go-kv-host: go-plugin's (v1.8) own host loading a KV plugin, for the interop tests of
// rpcplugin. Usage: go-kv-host <plugin-path> [args...]. Env: GO_HOST_AUTO_MTLS (default 1),
// GO_HOST_MULTIPLEX (default 0). Prints one JSON report on stdout; exit status 0 when every step
// passed.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"rpcplugin-interop/kvproto"
	"rpcplugin-interop/shared"
)

// syncBuffer is a bytes.Buffer safe for one writer goroutine and one reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type report struct {
	NegotiatedVersion int      `json:"negotiated_version"`
	Protocol          string   `json:"protocol"`
	Ping              string   `json:"ping"`
	PutGet            string   `json:"put_get"`
	ServeAdder        string   `json:"serve_adder"`
	AddViaHost        string   `json:"add_via_host"`
	Streaming         string   `json:"streaming"`
	SpeakStdout       string   `json:"speak_stdout"`
	SpeakStderr       string   `json:"speak_stderr"`
	LogSeen           bool     `json:"log_seen"`
	Exited            bool     `json:"exited"`
	Multiplexed       bool     `json:"multiplexed"`
	HostSockets       int      `json:"host_sockets"`
	Errors            []string `json:"errors"`
}

func result(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

func waitFor(buf *syncBuffer, needle string) bool {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(buf.String(), needle) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// streaming uploads 1 MiB in 64 KiB chunks (client streaming), downloads it back in 100000-byte
// chunks (server streaming) and echoes three chunks (bidirectional), checking every byte.
func streaming(ctx context.Context, kv kvproto.KVClient) error {
	blob := make([]byte, 1<<20)
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	up, err := kv.Upload(ctx)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	for off := 0; off < len(blob); off += 64 * 1024 {
		if err := up.Send(&kvproto.Chunk{Key: "go-blob", Data: blob[off : off+64*1024]}); err != nil {
			return fmt.Errorf("upload send: %w", err)
		}
	}
	reply, err := up.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("upload close: %w", err)
	}
	if reply.Key != "go-blob" || reply.Size != uint64(len(blob)) {
		return fmt.Errorf("upload reply %v", reply)
	}
	down, err := kv.Download(ctx, &kvproto.DownloadRequest{Key: "go-blob", ChunkSize: 100000})
	if err != nil {
		return fmt.Errorf("download: %w", err)
	}
	var got []byte
	chunks := 0
	for {
		chunk, err := down.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("download recv: %w", err)
		}
		chunks++
		got = append(got, chunk.Data...)
	}
	if !bytes.Equal(got, blob) || chunks != 11 {
		return fmt.Errorf("download gave %d bytes in %d chunks", len(got), chunks)
	}
	echo, err := kv.Echo(ctx)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	for _, word := range []string{"one", "two", "three"} {
		if err := echo.Send(&kvproto.Chunk{Key: word, Data: []byte(word)}); err != nil {
			return fmt.Errorf("echo send: %w", err)
		}
		back, err := echo.Recv()
		if err != nil {
			return fmt.Errorf("echo recv: %w", err)
		}
		if back.Key != word || string(back.Data) != word {
			return fmt.Errorf("echo gave %v for %s", back, word)
		}
	}
	if err := echo.CloseSend(); err != nil {
		return fmt.Errorf("echo close: %w", err)
	}
	if _, err := echo.Recv(); err != io.EOF {
		return fmt.Errorf("echo end: %v", err)
	}
	return nil
}

// countSockets counts the sockets this process holds open.
func countSockets() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	n := 0
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && strings.HasPrefix(target, "socket:") {
			n++
		}
	}
	return n
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go-kv-host <plugin-path> [args...]")
		os.Exit(2)
	}
	var stdout, stderr, raw syncBuffer
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:     shared.Handshake,
		Plugins:             map[string]plugin.Plugin{"kv": &shared.KVPlugin{}},
		Cmd:                 exec.Command(os.Args[1], os.Args[2:]...),
		AllowedProtocols:    []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:            os.Getenv("GO_HOST_AUTO_MTLS") != "0",
		GRPCBrokerMultiplex: os.Getenv("GO_HOST_MULTIPLEX") == "1",
		SyncStdout:          &stdout,
		SyncStderr:          &stderr,
		Stderr:              &raw,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name: "go-kv-host", Output: os.Stderr, Level: hclog.Debug,
		}),
	})
	defer client.Kill()
	r := report{Errors: []string{}}
	fail := func(step string, err error) {
		r.Errors = append(r.Errors, step+": "+err.Error())
	}
	done := func() {
		out, _ := json.Marshal(r)
		fmt.Println(string(out))
		if len(r.Errors) > 0 {
			os.Exit(1)
		}
	}

	rpc, err := client.Client()
	if err != nil {
		fail("start", err)
		done()
		return
	}
	r.NegotiatedVersion = client.NegotiatedVersion()
	r.Protocol = string(client.Protocol())
	r.Ping = result(rpc.Ping())
	raw2, err := rpc.Dispense("kv")
	if err != nil {
		fail("dispense", err)
		done()
		return
	}
	kv := raw2.(*shared.Client)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	_, err = kv.KV.Put(ctx, &kvproto.PutRequest{Key: "greeting", Value: []byte("hello")})
	if err == nil {
		var got *kvproto.GetResponse
		got, err = kv.KV.Get(ctx, &kvproto.GetRequest{Key: "greeting"})
		if err == nil && string(got.Value) != "hello" {
			err = fmt.Errorf("get returned %q", got.Value)
		}
	}
	r.PutGet = result(err)

	offered, err := kv.KV.ServeAdder(ctx, &kvproto.ServeAdderRequest{})
	if err == nil {
		conn, dialErr := kv.Broker.Dial(offered.AdderId)
		err = dialErr
		if err == nil {
			var sum *kvproto.AddResponse
			sum, err = kvproto.NewAdderClient(conn).Add(ctx, &kvproto.AddRequest{A: 2, B: 3})
			if err == nil && sum.Sum != 5 {
				err = fmt.Errorf("2+3 gave %d", sum.Sum)
			}
			conn.Close()
		}
	}
	r.ServeAdder = result(err)

	adder := &shared.Adder{}
	id := kv.Broker.NextId()
	go kv.Broker.AcceptAndServe(id, shared.AdderServer(adder))
	sum, err := kv.KV.AddViaHost(ctx, &kvproto.AddViaHostRequest{AdderId: id, A: 40, B: 2})
	if err == nil && (sum.Sum != 42 || adder.Calls != 1) {
		err = fmt.Errorf("sum %d after %d host calls", sum.Sum, adder.Calls)
	}
	r.AddViaHost = result(err)

	r.Streaming = result(streaming(ctx, kv.KV))

	_, err = kv.KV.Speak(ctx, &kvproto.SpeakRequest{
		Stdout: "out-marker\n", Stderr: "err-marker\n", LogMessage: "log-marker",
	})
	if err != nil {
		fail("speak", err)
	}
	waitFor(&stdout, "out-marker")
	waitFor(&stderr, "err-marker")
	r.SpeakStdout = stdout.String()
	r.SpeakStderr = stderr.String()
	r.LogSeen = waitFor(&raw, "log-marker")

	for _, step := range []struct{ name, value string }{
		{"ping", r.Ping}, {"put_get", r.PutGet}, {"serve_adder", r.ServeAdder}, {"add_via_host", r.AddViaHost},
		{"streaming", r.Streaming},
	} {
		if step.value != "ok" {
			r.Errors = append(r.Errors, step.name+": "+step.value)
		}
	}
	// With multiplexing every connection to the plugin is a yamux stream in one socket.
	r.Multiplexed = os.Getenv("GO_HOST_MULTIPLEX") == "1"
	r.HostSockets = countSockets()
	client.Kill()
	r.Exited = client.Exited()
	done()
}
