// go-kv-bench: go-plugin's (v1.8) host measured the way benches/plugin.rs measures ours: start
// (NewClient + Client + Dispense, i.e. spawn and handshake), ready (start, then Ping: go-plugin's
// Client dials without blocking, so only a first call finds the connection up and the plugin
// serving, which our start ensures before it returns), Kill (Shutdown, wait, reap), and unary Get
// round trips. Usage: go-kv-bench <cycles> <calls> <auto-mtls 0|1> <plugin> [args].
// Prints one JSON object of nanosecond samples.
//
// go-kv-bench stream <rounds> <MiB> <auto-mtls 0|1> <plugin> [args]: uploads MiB mebibytes in 1 MiB
// chunks (client streaming) and downloads them in 1 MiB chunks (server streaming), rounds times;
// prints the nanoseconds of each upload and download.
//
// go-kv-bench mux <calls> <dials> <multiplex 0|1> <auto-mtls 0|1> <plugin> [args]: one plugin,
// with or without GRPCBrokerMultiplex; unary Get round trips, then broker offer+dial+call (the
// plugin serves an Adder via ServeAdder, the host dials it and calls Add); nanoseconds of each.
//
// go-kv-bench many <n> <auto-mtls 0|1> <plugin> [args]: starts n plugins at once, calls each
// once (Put), closes them all at once; prints start-all and close-all times, and this host's threads
// and resident memory before and with all n running. With KV_BENCH_READY=1 in the environment each
// start is followed by a Ping, and start_all_ns / start_cpu_ns time that "ready" form instead.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"rpcplugin-interop/kvproto"
	"rpcplugin-interop/shared"
)

func start(mtls bool, cmd []string) (*plugin.Client, *shared.Client, error) {
	return startWith(mtls, false, cmd)
}

func startWith(mtls, multiplex bool, cmd []string) (*plugin.Client, *shared.Client, error) {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:     shared.Handshake,
		Plugins:             map[string]plugin.Plugin{"kv": &shared.KVPlugin{}},
		Cmd:                 exec.Command(cmd[0], cmd[1:]...),
		AllowedProtocols:    []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:            mtls,
		GRPCBrokerMultiplex: multiplex,
		Logger:              hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off}),
	})
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		return nil, nil, err
	}
	raw, err := rpc.Dispense("kv")
	if err != nil {
		client.Kill()
		return nil, nil, err
	}
	return client, raw.(*shared.Client), nil
}

// ping makes go-plugin's first call on the client: its health check, over the connection it
// dials on first use.
func ping(client *plugin.Client) error {
	rpc, err := client.Client()
	if err != nil {
		return err
	}
	return rpc.Ping()
}

// die reports err and ends the bench with status 1.
func die(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// warmUp stores the 64-byte value the timed Gets read, then reads it n times untimed.
func warmUp(ctx context.Context, kv *shared.Client, n int) {
	if _, err := kv.KV.Put(ctx, &kvproto.PutRequest{Key: "k", Value: make([]byte, 64)}); err != nil {
		die(err)
	}
	for i := 0; i < n; i++ {
		kv.KV.Get(ctx, &kvproto.GetRequest{Key: "k"})
	}
}

// timedGets makes n Get round trips and returns the nanoseconds of each.
func timedGets(ctx context.Context, kv *shared.Client, n int) []int64 {
	samples := make([]int64, 0, n)
	for i := 0; i < n; i++ {
		t := time.Now()
		if _, err := kv.KV.Get(ctx, &kvproto.GetRequest{Key: "k"}); err != nil {
			die(err)
		}
		samples = append(samples, time.Since(t).Nanoseconds())
	}
	return samples
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "many" {
		many()
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "stream" {
		streaming()
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "mux" {
		muxBench()
		return
	}
	if len(os.Args) < 5 {
		fmt.Fprintln(os.Stderr, "usage: go-kv-bench <cycles> <calls> <auto-mtls 0|1> <plugin> [args...]")
		os.Exit(2)
	}
	cycles, _ := strconv.Atoi(os.Args[1])
	calls, _ := strconv.Atoi(os.Args[2])
	mtls := os.Args[3] == "1"
	cmd := os.Args[4:]
	out := map[string][]int64{"start": {}, "ready": {}, "close": {}, "get": {}}
	for i := 0; i < cycles; i++ {
		t := time.Now()
		client, _, err := start(mtls, cmd)
		if err != nil {
			die(err)
		}
		out["start"] = append(out["start"], time.Since(t).Nanoseconds())
		if err := ping(client); err != nil {
			client.Kill()
			die(err)
		}
		out["ready"] = append(out["ready"], time.Since(t).Nanoseconds())
		t = time.Now()
		client.Kill()
		out["close"] = append(out["close"], time.Since(t).Nanoseconds())
	}
	client, kv, err := start(mtls, cmd)
	if err != nil {
		die(err)
	}
	defer client.Kill()
	ctx := context.Background()
	warmUp(ctx, kv, calls/10)
	pid := client.ReattachConfig().Pid
	h0, p0, w0 := hostCPU(), procCPU(pid), time.Now()
	out["get"] = timedGets(ctx, kv, calls)
	h1, p1, w1 := hostCPU(), procCPU(pid), time.Now()
	if n := int64(calls); n > 0 {
		out["per_call"] = []int64{w1.Sub(w0).Nanoseconds() / n, (h1 - h0) / n, (p1 - p0) / n}
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

// hostCPU is this process's CPU time (user + system, all threads) in nanoseconds.
func hostCPU() int64 {
	var u syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &u)
	return u.Utime.Nano() + u.Stime.Nano()
}

// procCPU is the CPU time of process pid in nanoseconds, from /proc (clock ticks of 10 ms).
func procCPU(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return (ut + st) * 10_000_000
}

// statusField reads a numeric field ("Threads", "VmRSS" in kB) of /proc/self/status.
func statusField(name string) int64 {
	data, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, name+":"); ok {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				n, _ := strconv.ParseInt(fields[0], 10, 64)
				return n
			}
		}
	}
	return -1
}

func many() {
	if len(os.Args) < 5 {
		fmt.Fprintln(os.Stderr, "usage: go-kv-bench many <n> <auto-mtls 0|1> <plugin> [args...]")
		os.Exit(2)
	}
	n, _ := strconv.Atoi(os.Args[2])
	mtls := os.Args[3] == "1"
	cmd := os.Args[4:]
	ready := os.Getenv("KV_BENCH_READY") == "1"
	threadsBefore, rssBefore := statusField("Threads"), statusField("VmRSS")
	clients := make([]*plugin.Client, n)
	kvs := make([]*shared.Client, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	t, cpu := time.Now(), hostCPU()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, kv, err := start(mtls, cmd)
			if err == nil && ready {
				if err = ping(c); err != nil {
					c.Kill()
				}
			}
			if err != nil {
				errs <- err
				return
			}
			clients[i], kvs[i] = c, kv
		}(i)
	}
	wg.Wait()
	startAll, startCPU := time.Since(t), hostCPU()-cpu
	select {
	case err := <-errs:
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	default:
	}
	ctx := context.Background()
	for _, kv := range kvs {
		if _, err := kv.KV.Put(ctx, &kvproto.PutRequest{Key: "k", Value: []byte("v")}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	threads, rss := statusField("Threads"), statusField("VmRSS")
	t, cpu = time.Now(), hostCPU()
	for _, c := range clients {
		wg.Add(1)
		go func(c *plugin.Client) {
			defer wg.Done()
			c.Kill()
		}(c)
	}
	wg.Wait()
	closeAll, closeCPU := time.Since(t), hostCPU()-cpu
	json.NewEncoder(os.Stdout).Encode(map[string]int64{
		"start_all_ns":   startAll.Nanoseconds(),
		"start_cpu_ns":   startCPU,
		"close_all_ns":   closeAll.Nanoseconds(),
		"close_cpu_ns":   closeCPU,
		"threads_before": threadsBefore,
		"threads":        threads,
		"rss_before_kb":  rssBefore,
		"rss_kb":         rss,
	})
}

func streaming() {
	if len(os.Args) < 6 {
		fmt.Fprintln(os.Stderr, "usage: go-kv-bench stream <rounds> <MiB> <auto-mtls 0|1> <plugin> [args...]")
		os.Exit(2)
	}
	rounds, _ := strconv.Atoi(os.Args[2])
	mib, _ := strconv.Atoi(os.Args[3])
	mtls := os.Args[4] == "1"
	client, kv, err := start(mtls, os.Args[5:])
	if err != nil {
		die(err)
	}
	defer client.Kill()
	ctx := context.Background()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	out := map[string][]int64{"upload": {}, "download": {}}
	for r := 0; r < rounds; r++ {
		t := time.Now()
		up, err := kv.KV.Upload(ctx)
		if err != nil {
			die(err)
		}
		for i := 0; i < mib; i++ {
			if err := up.Send(&kvproto.Chunk{Key: "blob", Data: chunk}); err != nil {
				die(err)
			}
		}
		reply, err := up.CloseAndRecv()
		if err != nil {
			die(err)
		}
		if reply.Size != uint64(mib)<<20 {
			die(fmt.Errorf("stored %d bytes", reply.Size))
		}
		out["upload"] = append(out["upload"], time.Since(t).Nanoseconds())
		t = time.Now()
		down, err := kv.KV.Download(ctx, &kvproto.DownloadRequest{Key: "blob", ChunkSize: 1 << 20})
		if err != nil {
			die(err)
		}
		total := 0
		for {
			c, err := down.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				die(err)
			}
			total += len(c.Data)
		}
		if total != mib<<20 {
			die(fmt.Errorf("downloaded %d bytes", total))
		}
		out["download"] = append(out["download"], time.Since(t).Nanoseconds())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

func muxBench() {
	if len(os.Args) < 7 {
		fmt.Fprintln(os.Stderr, "usage: go-kv-bench mux <calls> <dials> <multiplex 0|1> <auto-mtls 0|1> <plugin> [args...]")
		os.Exit(2)
	}
	calls, _ := strconv.Atoi(os.Args[2])
	dials, _ := strconv.Atoi(os.Args[3])
	multiplex := os.Args[4] == "1"
	mtls := os.Args[5] == "1"
	client, kv, err := startWith(mtls, multiplex, os.Args[6:])
	if err != nil {
		die(err)
	}
	defer client.Kill()
	ctx := context.Background()
	warmUp(ctx, kv, calls/10)
	out := map[string][]int64{"get": {}, "broker": {}}
	out["get"] = timedGets(ctx, kv, calls)
	for i := 0; i < dials; i++ {
		t := time.Now()
		offered, err := kv.KV.ServeAdder(ctx, &kvproto.ServeAdderRequest{})
		if err != nil {
			die(err)
		}
		conn, err := kv.Broker.Dial(offered.AdderId)
		if err != nil {
			die(err)
		}
		if _, err := kvproto.NewAdderClient(conn).Add(ctx, &kvproto.AddRequest{A: 1, B: 2}); err != nil {
			die(err)
		}
		out["broker"] = append(out["broker"], time.Since(t).Nanoseconds())
		conn.Close()
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
