# syntax=docker/dockerfile:1
# stackpulse server image: build with cargo, run as a non-root user on Debian slim.
#   docker build -t stackpulse .
#   docker run -p 8000:8000 -e STACKPULSE_JWT_ISSUER=… -e STACKPULSE_COGNITO_CLIENT_IDS=… stackpulse
# Configuration is by STACKPULSE_* environment variables (README, "Configuration").
# The server refuses a non-loopback bind without auth: give it an issuer (Cognito or
# OIDC) as below, or run it with --bind 127.0.0.1:8000 for a local try.
# Checked by hadolint in scripts/test-specs.sh (the image itself is not built there).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The manifests first, so a source change does not refetch the dependencies.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY web/dist ./web/dist
RUN cargo build --release --locked -p stackpulse --bin stackpulse \
    && install -D -m 0755 target/release/stackpulse /out/stackpulse

FROM debian:bookworm-slim AS runtime
# ca-certificates: AWS, the JWKS endpoint and rediss:// verify server certificates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin stackpulse
COPY --from=build /out/stackpulse /usr/local/bin/stackpulse
USER 10001:10001
ENV STACKPULSE_BIND=0.0.0.0:8000 \
    STACKPULSE_LOG_FORMAT=json \
    STACKPULSE_SHUTDOWN_GRACE=5
EXPOSE 8000
# /healthz answers 200 while the process runs (no credential needed). bash's
# /dev/tcp keeps curl out of the image. TLS (STACKPULSE_TLS_CERT) serves HTTPS on
# the same port: point the orchestrator's probe at it instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/stackpulse"]
CMD ["serve"]
