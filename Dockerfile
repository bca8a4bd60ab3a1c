# syntax=docker/dockerfile:1
# blox's container image: `blox server` as a non-root user, its store in the /data volume.
#
#   docker build --build-arg BLOX_VERSION="$(cargo pkgid -p blox | cut -d@ -f2)" -t blox .
#
# BLOX_VERSION must be the version of the blox being built (`blox --version`): the build checks it
# and puts it in the org.opencontainers.image.version label.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
ARG BLOX_VERSION=0.1.0
# protoc: etcd-client's build compiles etcd's protocol buffers; make: jemalloc's (the binary's
# allocator). Debian's versions are not pinned: the release (bookworm) is, and its updates are
# security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Debug info (the release profile's `debug = 1`) stays out of the image; symbol names stay in for
# backtraces.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p blox \
    && install -m 0755 target/release/blox /usr/local/bin/blox
RUN test "$(blox --version)" = "blox ${BLOX_VERSION}" \
    || { echo "BLOX_VERSION=${BLOX_VERSION} but the binary is $(blox --version)" >&2; exit 1; }

FROM debian:${DEBIAN_RELEASE}-slim
ARG BLOX_VERSION=0.1.0
LABEL org.opencontainers.image.title="blox" \
      org.opencontainers.image.description="ECS cluster state mirrored from ECS events, and daemon scheduling, served with Blox's API" \
      org.opencontainers.image.version="${BLOX_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# ca-certificates: the AWS SDK trusts the system's roots. curl: the health check.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 blox \
    && useradd --system --uid 10001 --gid blox --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin blox \
    && mkdir /data \
    && chown blox:blox /data
COPY --from=build /usr/local/bin/blox /usr/local/bin/blox
COPY --chmod=0755 deploy/docker/blox-healthcheck /usr/local/bin/blox-healthcheck
# blox refuses to serve on 0.0.0.0 without tokens: give BLOX_AUTH_TOKEN_FILE (a file mounted into
# the container) or, behind something that already decides who gets in, BLOX_INSECURE_NO_AUTH=true.
ENV BLOX_LISTEN=0.0.0.0:2000 \
    BLOX_STORE=log:/data/store \
    BLOX_LOG_FORMAT=json
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 2000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["blox-healthcheck"]
# SIGTERM: blox commits what it received and exits within --shutdown-grace (10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["blox", "server"]
