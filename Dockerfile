# syntax=docker/dockerfile:1
# bfo-alive-exporter: multi-stage build, small non-root runtime image.
#
#   docker build -t bfo-alive-exporter .
#   docker run -p 9632:9632 -v "$PWD/config.toml:/etc/bfo-alive-exporter/config.toml:ro" bfo-alive-exporter
#   docker run -p 9632:9632 bfo-alive-exporter demo --web.listen-address=0.0.0.0:9632
#
# The health check asks GET /-/healthy on 127.0.0.1:9632 with bash's /dev/tcp, so the
# runtime image needs neither curl nor wget; keep the exporter on port 9632 inside the
# container (map it to any port outside). It speaks plain HTTP without credentials: with a
# --web.config.file that sets TLS or basic auth it fails, so run such a container with
# --no-healthcheck (or probe from your orchestrator, with the credentials).

ARG RUST_VERSION=1.88
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bfo-alive-exporter \
    && install -D -m 0755 target/release/bfo-alive-exporter /out/bfo-alive-exporter

FROM debian:${DEBIAN_RELEASE}-slim
LABEL org.opencontainers.image.title="bfo-alive-exporter" \
      org.opencontainers.image.description="Prometheus exporter that probes KOMBIT Beskedfordeler dueslag with AliveBesked round trips" \
      org.opencontainers.image.licenses="MIT"
# CA roots for TLS to the broker and the STS, from the build stage (no apt in this stage).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/bfo-alive-exporter /usr/local/bin/bfo-alive-exporter
# A numeric non-root user (nobody-like), so that Kubernetes runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
EXPOSE 9632
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9632 && printf 'GET /-/healthy HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/bfo-alive-exporter"]
CMD ["--config.file=/etc/bfo-alive-exporter/config.toml", "--web.listen-address=0.0.0.0:9632"]
