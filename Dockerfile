# syntax=docker/dockerfile:1
#
# mailroom's image, in stages:
#   dev      the toolchain and cargo-watch: docker-compose.dev.yml mounts the source at
#            /app and the service is rebuilt and restarted on every change
#   builder  the release build
#   runtime  (the default, last stage) the binary alone on slim Debian, unprivileged, on
#            the production profile: it refuses to start without API keys and the gRPC
#            certificate (docs/operations.md#docker shows a `docker run` with them)
#
#   docker build -t mailroom .                 # the runtime image
#   docker build --target dev -t mailroom-dev .
#
# The whole tree is Rust on ring/rustls (no OpenSSL, no protoc), so the toolchain image
# needs nothing installed.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS toolchain
WORKDIR /app

FROM toolchain AS dev
RUN cargo install cargo-watch --locked
# Outside /app, so builds neither land in the mounted source tree nor trigger a reload.
ENV CARGO_TARGET_DIR=/target \
    MAILROOM_ENV=docker
EXPOSE 5000 5007 7070
# Restarts the service when the code, migrations or configuration change; documentation
# and the deployment files do not need a rebuild.
CMD ["cargo", "watch", \
     "--ignore", "docs/*", "--ignore", "*.md", "--ignore", "monitoring/*", "--ignore", "nginx/*", \
     "--ignore", "docker-compose.*.yml", "--ignore", "certs/*", \
     "-x", "run --locked --bin mailroom -- serve"]

FROM toolchain AS builder
COPY . .
# Cache mounts keep the crate downloads and the build between image builds; the binary is
# copied out because the target cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/app/target \
    cargo build --release --locked --bin mailroom \
    && cp target/release/mailroom /usr/local/bin/mailroom

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home --home-dir /app mailroom
WORKDIR /app
COPY --from=builder /usr/local/bin/mailroom /usr/local/bin/mailroom
# The profiles are built into the binary too; the files are here to be read and
# overridden (MAILROOM_CONFIG_DIR, --config FILE).
COPY config ./config
USER mailroom
# Safe by default: the compose files choose the `docker` profile (which takes the public
# development key) themselves.
ENV MAILROOM_ENV=production
EXPOSE 5000 5007 7070
ENTRYPOINT ["mailroom"]
CMD ["serve"]
