//! Generates the tfplugin5 and tfplugin6 messages and blocking stubs from proto/ (written for
//! this crate) with rpcplugin-codegen: no protoc needed.
fn main() {
    rpcplugin_codegen::Codegen::new()
        .include("proto")
        .input("proto/tfplugin5.proto")
        .input("proto/tfplugin6.proto")
        .run()
        .expect("generating the tfplugin5 and tfplugin6 code from proto/");
}
