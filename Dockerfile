# syntax=docker/dockerfile:1
# Multi-stage build of the mcpgw binaries (control-plane, data-plane, mcpgw).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/mcpgw target/release/control-plane target/release/data-plane /out/

FROM debian:bookworm-slim
# ca-certificates: HTTPS upstreams; curl: the HEALTHCHECK; tini: reaps upstream stdio servers.
# Node.js or Python are not included: add them in a derived image for stdio upstreams that need them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin mcpgw \
 && mkdir -p /data && chown mcpgw:mcpgw /data && chmod 0700 /data
COPY --from=build /out/ /usr/local/bin/

ENV MCPGW_DATA_DIR=/data \
    MCPGW_CONTROL_LISTEN=0.0.0.0:8001 \
    MCPGW_GATEWAY_LISTEN=0.0.0.0:8000 \
    MCPGW_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8000 8001
USER mcpgw
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8001/health || exit 1
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["mcpgw"]
