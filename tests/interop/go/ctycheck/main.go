// ctycheck decodes and re-encodes cty values with go-cty itself, so that the Rust codec in
// terraform/ (rpcplugin-terraform) can be checked against it byte for byte.
//
// One request per stdin line, one answer per stdout line, both JSON:
//
//	{"type": "<cty type JSON>", "msgpack": "<hex>"}   or   {"type": …, "json": "<JSON text>"}
//	{"msgpack": "<hex>", "json": "<JSON text>", "json_error": "…", "error": "…"}
//
// The value is decoded from whichever encoding the request carries, as that type, and encoded
// again in both. "error" is a decoding error; "json_error" is why the value has no JSON form
// (an unknown, an infinity).
//
// `ctycheck bench TYPE_FILE MSGPACK_FILE N` times go-cty on that value instead: N msgpack
// decodes, then N encodes, and prints one line: "decode_ns=… encode_ns=…" (per operation).
package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"
)

type request struct {
	Type    json.RawMessage `json:"type"`
	Msgpack *string         `json:"msgpack"`
	JSON    *string         `json:"json"`
}

type answer struct {
	Msgpack   string `json:"msgpack,omitempty"`
	JSON      string `json:"json,omitempty"`
	JSONError string `json:"json_error,omitempty"`
	Error     string `json:"error,omitempty"`
}

func handle(req request) (ans answer) {
	defer func() {
		if p := recover(); p != nil {
			ans = answer{Error: fmt.Sprintf("go-cty panicked: %v", p)}
		}
	}()
	ty, err := ctyjson.UnmarshalType(req.Type)
	if err != nil {
		return answer{Error: "type: " + err.Error()}
	}
	var val cty.Value
	switch {
	case req.Msgpack != nil:
		raw, err := hex.DecodeString(*req.Msgpack)
		if err != nil {
			return answer{Error: "hex: " + err.Error()}
		}
		val, err = ctymsgpack.Unmarshal(raw, ty)
		if err != nil {
			return answer{Error: err.Error()}
		}
	case req.JSON != nil:
		val, err = ctyjson.Unmarshal([]byte(*req.JSON), ty)
		if err != nil {
			return answer{Error: err.Error()}
		}
	default:
		return answer{Error: "the request has neither msgpack nor json"}
	}
	packed, err := ctymsgpack.Marshal(val, ty)
	if err != nil {
		return answer{Error: "re-encoding as msgpack: " + err.Error()}
	}
	ans.Msgpack = hex.EncodeToString(packed)
	text, err := ctyjson.Marshal(val, ty)
	if err != nil {
		ans.JSONError = err.Error()
	} else {
		ans.JSON = string(text)
	}
	return ans
}

func bench(typeFile, dataFile, count string) error {
	typeJSON, err := os.ReadFile(typeFile)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(dataFile)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(count)
	if err != nil || n <= 0 {
		return fmt.Errorf("N must be a positive number, got %q", count)
	}
	ty, err := ctyjson.UnmarshalType(typeJSON)
	if err != nil {
		return err
	}
	var val cty.Value
	start := time.Now()
	for i := 0; i < n; i++ {
		if val, err = ctymsgpack.Unmarshal(data, ty); err != nil {
			return err
		}
	}
	decode := time.Since(start)
	start = time.Now()
	for i := 0; i < n; i++ {
		if _, err = ctymsgpack.Marshal(val, ty); err != nil {
			return err
		}
	}
	encode := time.Since(start)
	fmt.Printf("decode_ns=%d encode_ns=%d\n", decode.Nanoseconds()/int64(n), encode.Nanoseconds()/int64(n))
	return nil
}

func main() {
	if len(os.Args) == 5 && os.Args[1] == "bench" {
		if err := bench(os.Args[2], os.Args[3], os.Args[4]); err != nil {
			fmt.Fprintln(os.Stderr, "ctycheck bench:", err)
			os.Exit(1)
		}
		return
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	for in.Scan() {
		var req request
		var ans answer
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			ans = answer{Error: "request: " + err.Error()}
		} else {
			ans = handle(req)
		}
		if err := enc.Encode(ans); err != nil {
			fmt.Fprintln(os.Stderr, "ctycheck:", err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "ctycheck:", err)
		os.Exit(1)
	}
	out.Flush()
}
