"""A pyvider-rpcplugin 0.5.5 host loading a go-plugin style KV plugin (ours, in Rust), for the
interop tests of rpcplugin. Usage: python kv_host.py <plugin> [args...]. Env: KV_PROTO_DIR
(generated stubs). Prints one JSON object; exit status 0 when every step passed.

pyvider's client sends the cookie named by its own PLUGIN_MAGIC_COOKIE_KEY / _VALUE settings,
set below to this host's handshake (KV_PLUGIN=rpcplugin-kv).
"""

import asyncio
import json
import os
import sys

os.environ.setdefault("PLUGIN_MAGIC_COOKIE_KEY", "KV_PLUGIN")
os.environ.setdefault("PLUGIN_MAGIC_COOKIE_VALUE", "rpcplugin-kv")
sys.path.insert(0, os.environ["KV_PROTO_DIR"])

import kv_pb2  # noqa: E402
import kv_pb2_grpc  # noqa: E402
from pyvider.rpcplugin import plugin_client  # noqa: E402


async def main(command):
    report = {"put_get": None, "shutdown": None, "errors": []}
    client = plugin_client(command=command)
    try:
        await client.start()
        stub = kv_pb2_grpc.KVStub(client.grpc_channel)
        try:
            await stub.Put(kv_pb2.PutRequest(key="greeting", value=b"hello"), timeout=10)
            reply = await stub.Get(kv_pb2.GetRequest(key="greeting"), timeout=10)
            report["put_get"] = "ok" if reply.value == b"hello" else f"got {reply.value!r}"
            # With the test plugin's print-env mode: did the plugin get a client certificate?
            try:
                env = (await stub.Get(kv_pb2.GetRequest(key="env"), timeout=10)).value.decode()
                report["plugin_env"] = env.splitlines()
            except Exception:  # noqa: BLE001 - plugins without print-env have no such key
                pass
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            report["put_get"] = f"{type(e).__name__}: {e}"
        try:
            await client.shutdown_plugin()
            report["shutdown"] = "ok"
        except Exception as e:  # noqa: BLE001
            report["shutdown"] = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001
        report["errors"].append(f"start: {type(e).__name__}: {e}")
    finally:
        await client.close()
    for step in ("put_get", "shutdown"):
        if report[step] not in ("ok", None):
            report["errors"].append(f"{step}: {report[step]}")
    print(json.dumps(report))
    return 0 if not report["errors"] and report["put_get"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
