# syntax=docker/dockerfile:1
# The one `orrery` binary (receive, query, operator) in a small non-root image.
#
#   docker build -t orrery:dev .
#
# Stage 1 builds with the Rust toolchain the workspace asks for (rust-version 1.95);
# protoc is vendored by the build, so no system protobuf is needed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin orrery \
 && install -D -m 0755 target/release/orrery /out/orrery

# Stage 2: runtime. CA certificates for TLS to the Kubernetes API and remote clusters.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 orrery \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin orrery \
 && install -d -o 10001 -g 10001 /var/orrery/data
COPY --from=build /out/orrery /usr/local/bin/orrery
USER 10001:10001
# gRPC StoreAPI, HTTP API/UI, remote write, operator metrics.
EXPOSE 10901 10902 19291 8080
ENTRYPOINT ["/usr/local/bin/orrery"]
CMD ["--help"]
