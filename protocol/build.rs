//! Compiles the agent API for ttrpc (async) with rust-protobuf.

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    ttrpc_codegen::Codegen::new()
        .out_dir(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(true))
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("compile proto/agent.proto with ttrpc-codegen");
}
