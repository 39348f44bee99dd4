# tlsward's image: a static (musl) binary on distroless, run as non-root.
# Build: docker build -t tlsward .
FROM rust:1-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin tlsward \
 && cp target/x86_64-unknown-linux-musl/release/tlsward /tlsward

# Nothing but the binary and CA roots (distroless/static ships /etc/ssl/certs).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /tlsward /usr/local/bin/tlsward
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tlsward"]
CMD ["run", "--config", "/etc/tlsward/config/config.yaml"]
