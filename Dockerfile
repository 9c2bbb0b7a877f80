# syntax=docker/dockerfile:1
# The `pipeline` image: one binary, every component is a subcommand
#   docker run --rm ghcr.io/audio-pipeline-qa/pipeline:latest algorithm-a
# Build: docker build -t ghcr.io/audio-pipeline-qa/pipeline:latest .   (or `make docker-build`)

FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace is needed: Cargo resolves every member, and the services crate embeds
# fixtures/contracts/*.json and its SQL migrations at compile time. .dockerignore keeps it small.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p services --bin pipeline \
    && install -D -m 0755 target/release/pipeline /out/pipeline

FROM debian:bookworm-slim AS runtime
# Only CA certificates beside the binary. Container health checks use bash's /dev/tcp (bash is
# part of the base image), so no curl/wget is installed; Kubernetes uses httpGet probes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pipeline \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pipeline
COPY --from=builder /out/pipeline /usr/local/bin/pipeline
USER 10001:10001
ENV RUST_LOG=info
# 8000: REST API (APQ_API_BIND); 8081: consumers' /healthz + /readyz (APQ_HEALTH_BIND).
EXPOSE 8000 8081
ENTRYPOINT ["/usr/local/bin/pipeline"]
CMD ["--help"]
