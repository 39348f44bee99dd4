//! tlsward: keeps an Istio ingress gateway's TLS credentials, DNS records, Gateway
//! and VirtualServices correct on its own. `main.rs` is only the CLI over this library.

pub mod address;
pub mod config;
pub mod daemon;
pub mod deadline;
pub mod dns;
pub mod doctor;
pub mod issuer;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod plan;
pub mod render;
pub mod serve;
pub mod store;
