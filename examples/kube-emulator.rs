//! The test suite's Kubernetes API emulator, standalone, so that an independent client
//! (kubectl) can check it: `cargo run --example kube-emulator -- --listen 127.0.0.1:PORT
//! --kubeconfig FILE`. Writes a kubeconfig for it, prints nothing secret, stops on
//! SIGTERM or SIGINT.

#[allow(dead_code)]
#[path = "../tests/support/kube_emulator.rs"]
mod kube_emulator;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Loopback address to serve on.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Where to write a kubeconfig for this server.
    #[arg(long)]
    kubeconfig: std::path::PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let port = listener.local_addr()?.port();
    std::fs::write(&args.kubeconfig, kube_emulator::kubeconfig(port))?;
    eprintln!(
        "kube-emulator listening on 127.0.0.1:{port}; kubeconfig at {}",
        args.kubeconfig.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = kube_emulator::Emulator::new().serve(listener) => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
