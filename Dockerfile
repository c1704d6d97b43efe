# syntax=docker/dockerfile:1
# Matchday: one static-ish binary in a slim, non-root runtime image.
#
#   docker build -t matchday .
#   docker run -p 8080:8080 -e MATCHDAY__DATABASE__URL=... -e MATCHDAY__REDIS__URL=... matchday
#
# docker-compose.yml runs it with Postgres and Redis.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY migrations migrations
COPY config config
# The browser app is embedded into the binary at build time.
COPY static static
# Cache the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin matchday \
    && cp target/release/matchday /usr/local/bin/matchday

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin matchday
WORKDIR /app
COPY --from=build /usr/local/bin/matchday /usr/local/bin/matchday
COPY config config
COPY data data
USER 10001
ENV MATCHDAY__SERVER__HOST=0.0.0.0 \
    MATCHDAY__TELEMETRY__FORMAT=json
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/matchday"]
CMD ["serve"]
