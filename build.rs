//! Generates the protocol services (health, controller, stdio, broker) and the example KV service
//! with the same generator users call from their own build scripts.
fn main() {
    rpcplugin_codegen::Codegen::new()
        .include("proto")
        .input("proto/health.proto")
        .input("proto/plugin.proto")
        .input("proto/kv.proto")
        .input("proto/reflection.proto")
        .run()
        .expect("generating protobuf and gRPC code from proto/");
}
