// go-kv-bench: go-plugin's (v1.8) host measured the way benches/plugin.rs measures ours: start
// (NewClient + Client + Dispense, i.e. spawn, handshake, connect), Kill (Shutdown, wait, reap),
// and unary Get round trips. Usage: go-kv-bench <cycles> <calls> <auto-mtls 0|1> <plugin> [args].
// Prints one JSON object of nanosecond samples.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"rpcplugin-interop/kvproto"
	"rpcplugin-interop/shared"
)

func start(mtls bool, cmd []string) (*plugin.Client, *shared.Client, error) {
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  shared.Handshake,
		Plugins:          map[string]plugin.Plugin{"kv": &shared.KVPlugin{}},
		Cmd:              exec.Command(cmd[0], cmd[1:]...),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         mtls,
		Logger:           hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off}),
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

func main() {
	if len(os.Args) < 5 {
		fmt.Fprintln(os.Stderr, "usage: go-kv-bench <cycles> <calls> <auto-mtls 0|1> <plugin> [args...]")
		os.Exit(2)
	}
	cycles, _ := strconv.Atoi(os.Args[1])
	calls, _ := strconv.Atoi(os.Args[2])
	mtls := os.Args[3] == "1"
	cmd := os.Args[4:]
	out := map[string][]int64{"start": {}, "close": {}, "get": {}}
	die := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for i := 0; i < cycles; i++ {
		t := time.Now()
		client, _, err := start(mtls, cmd)
		if err != nil {
			die(err)
		}
		out["start"] = append(out["start"], time.Since(t).Nanoseconds())
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
	if _, err := kv.KV.Put(ctx, &kvproto.PutRequest{Key: "k", Value: make([]byte, 64)}); err != nil {
		die(err)
	}
	for i := 0; i < calls/10; i++ {
		kv.KV.Get(ctx, &kvproto.GetRequest{Key: "k"})
	}
	for i := 0; i < calls; i++ {
		t := time.Now()
		if _, err := kv.KV.Get(ctx, &kvproto.GetRequest{Key: "k"}); err != nil {
			die(err)
		}
		out["get"] = append(out["get"], time.Since(t).Nanoseconds())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
