//! Generates the StoreAPI / remote-write code from `proto/` when the `wire` feature is on.

fn main() {
    #[cfg(feature = "wire")]
    wire::generate();
}

#[cfg(feature = "wire")]
mod wire {
    pub fn generate() {
        let protoc = match protoc_bin_vendored::protoc_bin_path() {
            Ok(p) => p,
            Err(e) => panic!("no vendored protoc for this platform: {e}"),
        };
        // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the env.
        unsafe { std::env::set_var("PROTOC", protoc) };
        let protos = [
            "proto/types.proto",
            "proto/prompb.proto",
            "proto/rpc.proto",
            "proto/info.proto",
            "proto/remote.proto",
            "proto/hints.proto",
            "proto/read.proto",
            "proto/write_v2.proto",
            "proto/exemplars.proto",
            "proto/metadata.proto",
        ];
        for p in protos {
            println!("cargo:rerun-if-changed={p}");
        }
        let result = tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .bytes(".thanos.Chunk.data")
            .bytes(".prometheus.Chunk.data")
            // The model's label type, with its own codec (wire/label_codec.rs).
            .extern_path(".thanos.Label", "crate::Label")
            .compile_protos(&protos, &["proto"]);
        if let Err(e) = result {
            panic!("protobuf code generation failed: {e}");
        }
    }
}
