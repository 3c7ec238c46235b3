# syntax=docker/dockerfile:1
# The seqclust image (CPU): one static entrypoint, the `seqclust` binary, as a non-root user.
#   docker build -t seqclust:dev .
#   docker run --rm seqclust:dev config defaults
# GPU workers: Dockerfile.cuda. See docs/DEPLOY.md.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# protoc comes from the protoc-bin-vendored crate (scripts/protoc); no system package needed.
# Kernels dispatch on the CPU at run time, so the image runs on any x86-64 (no target-cpu).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p seqclust-cli \
 && install -D -m 0755 target/release/seqclust /out/seqclust

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 seqclust \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/seqclust --create-home seqclust
COPY --from=build /out/seqclust /usr/local/bin/seqclust
USER 10001:10001
WORKDIR /var/lib/seqclust
# 7070 gRPC (coordinator), 7100 collective (workers), 9464 metrics/health, 8080 serve HTTP
EXPOSE 7070 7100 9464 8080
# tini forwards SIGTERM to seqclust (graceful leave) and reaps children
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/seqclust"]
CMD ["--help"]
