//! Compiles the agent API for ttrpc (async) with rust-protobuf.

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
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
    strip_inner_attributes(&std::path::Path::new(&out_dir).join("agent_ttrpc.rs"));
}

/// The ttrpc file is `include!`d into a module, where inner attributes are not
/// allowed; lib.rs puts the equivalent allows on the enclosing module instead.
fn strip_inner_attributes(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).expect("read generated ttrpc code");
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("#!["))
        .collect();
    std::fs::write(path, kept.join("\n")).expect("rewrite generated ttrpc code");
}
