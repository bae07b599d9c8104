"""A pyvider-rpcplugin 0.5.5 plugin serving the KV service of proto/kv.proto, for the interop
tests of rpcplugin. Run with the interop venv's python; the generated stubs are found through
KV_PROTO_DIR (set by the tests to VENVDIR/kvproto).

Env: KV_PLUGIN_TRANSPORT ("unix" or "tcp"), KV_PLUGIN_VERSIONS (default "1"). Like any go-plugin plugin it expects the host to send
KV_PLUGIN=rpcplugin-kv; pyvider learns the cookie's name and value from its own
PLUGIN_MAGIC_COOKIE_KEY / PLUGIN_MAGIC_COOKIE_VALUE settings, set below as this plugin's
configuration.
"""

import asyncio
import logging
import os
import sys

os.environ.setdefault("PLUGIN_MAGIC_COOKIE_KEY", "KV_PLUGIN")
os.environ.setdefault("PLUGIN_MAGIC_COOKIE_VALUE", "rpcplugin-kv")
sys.path.insert(0, os.environ["KV_PROTO_DIR"])

import grpc  # noqa: E402
import kv_pb2  # noqa: E402
import kv_pb2_grpc  # noqa: E402
from pyvider.rpcplugin import plugin_server  # noqa: E402
from pyvider.rpcplugin.protocol.base import RPCPluginProtocol  # noqa: E402

log = logging.getLogger("kv-plugin")


class KV(kv_pb2_grpc.KVServicer):
    def __init__(self):
        self.data = {"pid": str(os.getpid()).encode()}

    async def Get(self, request, context):
        if request.key not in self.data:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no key {request.key!r}")
        return kv_pb2.GetResponse(value=self.data[request.key])

    async def Put(self, request, context):
        self.data[request.key] = request.value
        return kv_pb2.PutResponse()

    async def Speak(self, request, context):
        sys.stdout.write(request.stdout)
        sys.stdout.flush()
        sys.stderr.write(request.stderr)
        sys.stderr.flush()
        if request.log_message:
            log.warning(request.log_message)
        return kv_pb2.SpeakResponse()

    async def AddViaHost(self, request, context):
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "pyvider-rpcplugin's broker is a stub: it cannot dial"
        )

    async def ServeAdder(self, request, context):
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "pyvider-rpcplugin's broker is a stub: it cannot serve"
        )


class KVProtocol(RPCPluginProtocol):
    # The versions this plugin serves (KV_PLUGIN_VERSIONS, default "1"); pyvider negotiates the
    # highest one the host also lists in PLUGIN_PROTOCOL_VERSIONS.
    supported_protocol_versions = [
        int(v) for v in os.environ.get("KV_PLUGIN_VERSIONS", "1").split(",")
    ]

    async def get_grpc_descriptors(self):
        return kv_pb2.DESCRIPTOR, "rpcplugin.example.KV"

    async def add_to_server(self, server, handler):
        kv_pb2_grpc.add_KVServicer_to_server(handler, server)


async def main():
    server = plugin_server(
        protocol=KVProtocol(),
        handler=KV(),
        transport=os.environ.get("KV_PLUGIN_TRANSPORT", "unix"),
    )
    await server.serve()


if __name__ == "__main__":
    asyncio.run(main())
