//! The `tlsward` command line: parse, call the library, map results to exit codes.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use tlsward::config::{self, Config};
use tlsward::daemon::{self, Health, Runtime};
use tlsward::issuer::acme::Http01Challenges;
use tlsward::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "tlsward",
    version,
    about = "Keeps an Istio ingress gateway's TLS and DNS correct on its own"
)]
struct Cli {
    /// Log format; default: text on a terminal, json otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Log level or filter (error, warn, info, debug, trace; or an EnvFilter directive).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanFormat {
    Text,
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile, then keep reconciling on timers and config changes.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// One full pass, then exit: 0 when everything converged, 1 otherwise.
        #[arg(long)]
        once: bool,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, default_value = "127.0.0.1:9402")]
        listen: SocketAddr,
        /// Address of the ACME HTTP-01 answers (started only when an issuer uses HTTP-01).
        #[arg(long, default_value = "0.0.0.0:8089")]
        solver_listen: SocketAddr,
        /// Take part in leader election on a Lease in the gateway namespace: only the
        /// leader writes (Kubernetes store).
        #[arg(long)]
        leader_elect: bool,
        #[arg(long, default_value = "tlsward")]
        lease_name: String,
        /// Seconds a lease lasts without renewal.
        #[arg(long, default_value_t = 15)]
        lease_duration: u64,
        /// This replica's identity in the Lease (default: $POD_NAME, else host name and PID).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// After SIGTERM/SIGINT, how long work in flight may take before tlsward exits
        /// anyway (keep it under the pod's terminationGracePeriodSeconds).
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        shutdown_grace: std::time::Duration,
    },
    /// Validate the config without touching anything.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show what a pass would change, writing nothing.
    Plan {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
    },
    /// Explain misconfigurations behind a TLS ingress that fails (the "503 UF/UR"):
    /// live through the config's store, DNS and TLS probes, or offline on manifests.
    /// Exit 0: no error findings; 1: error findings; 2: doctor could not run.
    Doctor {
        /// The live setup this config describes.
        #[arg(long, required_unless_present = "manifests", conflicts_with = "manifests")]
        config: Option<PathBuf>,
        /// YAML/JSON files or folders of Kubernetes objects (offline, no cluster).
        #[arg(long, num_args = 1..)]
        manifests: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: DoctorFormat,
        /// Judge certificates as of this moment (RFC 3339) instead of now.
        #[arg(long, value_parser = parse_time)]
        at: Option<time::OffsetDateTime>,
    },
    /// Print the config's JSON Schema.
    Schema,
}

#[derive(Clone, Copy, ValueEnum)]
enum DoctorFormat {
    Text,
    Json,
}

fn parse_time(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2027-01-01T00:00:00Z: {e}"))
}

/// Exit code when doctor could not run at all.
const DOCTOR_FAILED: u8 = 2;

fn doctor_manifests(paths: &[PathBuf], format: DoctorFormat, at: Option<time::OffsetDateTime>) -> ExitCode {
    let inventory = match tlsward::doctor::read_manifests(paths) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(DOCTOR_FAILED);
        }
    };
    let options = tlsward::doctor::Options {
        now: at.unwrap_or_else(time::OffsetDateTime::now_utc),
        renew_before: config::ConfigFile::default_renew_before(),
        complete: false,
        sees_workloads: true,
        outbound_policy: None,
    };
    let report = tlsward::doctor::diagnose(&inventory, &options);
    print_report(&report, format, inventory.object_count())
}

async fn doctor_live(path: &Path, format: DoctorFormat, at: Option<time::OffsetDateTime>) -> Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(DOCTOR_FAILED));
        }
    };
    let runtime = match Runtime::new(config, Arc::new(Metrics::new()), Arc::default()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return Ok(ExitCode::from(DOCTOR_FAILED));
        }
    };
    let live = match runtime.doctor(at.unwrap_or_else(time::OffsetDateTime::now_utc)).await {
        Ok(live) => live,
        Err(e) => {
            eprintln!("error: {}", tlsward::deadline::chain(&e));
            return Ok(ExitCode::from(DOCTOR_FAILED));
        }
    };
    for note in &live.notes {
        eprintln!("note: {note}");
    }
    Ok(print_report(&live.report, format, live.objects))
}

fn print_report(report: &tlsward::doctor::Report, format: DoctorFormat, objects: usize) -> ExitCode {
    match format {
        DoctorFormat::Text => print!("{}", report.text()),
        DoctorFormat::Json => println!("{}", report.json()),
    }
    let ignored: usize = report.ignored.values().sum();
    let kinds: Vec<String> = report.ignored.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    eprintln!(
        "{} finding(s) in {objects} object(s){}",
        report.findings.len(),
        if ignored == 0 {
            String::new()
        } else {
            format!("; {ignored} object(s) of other kinds ignored ({})", kinds.join(", "))
        }
    );
    if report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Log timestamps as people read them: RFC 3339, UTC, whole seconds.
struct WholeSeconds;

impl tracing_subscriber::fmt::time::FormatTime for WholeSeconds {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", tlsward::plan::rfc3339(time::OffsetDateTime::now_utc()))
    }
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match cli.log_format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(WholeSeconds)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(1)
    })
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    config::Duration::parse(text)
        .map(|d| d.to_std())
        .ok_or_else(|| config::duration_message(text))
}

/// Runs `work` to its end, unless shutdown is asked for and it is still running
/// `grace` later: then it is dropped (every write is atomic, so nothing is torn) and
/// `None` says so.
async fn within_grace<T>(
    work: impl std::future::Future<Output = T>,
    shutdown: &CancellationToken,
    grace: std::time::Duration,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return Some(done),
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, work).await {
        Ok(done) => Some(done),
        Err(_) => {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "shutdown grace period over: abandoning the work in flight (no credential is half-written)"
            );
            None
        }
    }
}

fn shutdown_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight writes"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight writes"),
        }
        token.cancel();
    });
}

async fn run(
    path: &Path,
    once: bool,
    listen: SocketAddr,
    solver_listen: SocketAddr,
    leader: Option<daemon::LeaderSettings>,
    grace: std::time::Duration,
) -> Result<ExitCode> {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    shutdown_on_signals(shutdown.clone());
    let http01 = Arc::new(Http01Challenges::default());
    // Started now for the issuers configured at start, or by the daemon when a reload
    // adds the first HTTP-01 issuer.
    let mut solver = tlsward::serve::SolverEndpoint::new(solver_listen, http01.clone(), shutdown.clone());
    if config.file.uses_http01() {
        solver
            .ensure()
            .await
            .with_context(|| format!("binding {solver_listen} for ACME HTTP-01 answers"))?;
    }
    if once {
        let runtime = match Runtime::new(config, metrics, http01).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return Ok(ExitCode::from(1));
            }
        };
        let work = async {
            let mut report = runtime.pass(&shutdown).await;
            runtime.record(&mut report).await;
            let mut mesh = None;
            if !shutdown.is_cancelled() {
                let outcome = runtime.mesh_step().await;
                report.failures.extend(outcome.failures.iter().cloned());
                mesh = Some(outcome);
            }
            (report, mesh)
        };
        let Some((report, mesh)) = within_grace(work, &shutdown, grace).await else {
            eprintln!("interrupted: the pass did not finish within the shutdown grace period");
            return Ok(ExitCode::from(1));
        };
        for c in &report.conflicts {
            eprintln!("conflict: {c}");
        }
        if report.failures.is_empty() && report.converged {
            eprintln!(
                "converged: {} credential(s) written, {} DNS change(s){}",
                report.issued.len(),
                report.dns_changes,
                mesh.filter(|m| m.applied + m.deleted > 0)
                    .map(|m| format!(", {} mesh policy object(s) written, {} removed", m.applied, m.deleted))
                    .unwrap_or_default()
            );
            return Ok(ExitCode::SUCCESS);
        }
        for f in &report.failures {
            eprintln!("failed [{}] {}: {}", f.stage, f.subject, f.message);
        }
        if report.failures.is_empty() {
            eprintln!(
                "not converged: {} conflict(s) left untouched, or something a second pass would still change",
                report.conflicts.len()
            );
        }
        return Ok(ExitCode::from(1));
    }
    let health = Health::default();
    let watch = tlsward::config::watch::ConfigWatch::start(path)?;
    let (bound, server) = daemon_server(listen, metrics.clone(), health.clone(), shutdown.clone()).await?;
    tracing::info!(listen = %bound, config = %path.display(), "tlsward running");
    let daemon = daemon::run(
        config,
        metrics,
        health,
        http01,
        solver,
        leader,
        watch.changes,
        shutdown.clone(),
    );
    let result = within_grace(daemon, &shutdown, grace).await.unwrap_or(Ok(()));
    shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), server).await;
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            Ok(ExitCode::from(1))
        }
    }
}

async fn daemon_server(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    tlsward::serve::bind(listen, metrics, health, shutdown)
        .await
        .with_context(|| format!("binding {listen} for /metrics, /healthz, /readyz"))
}

async fn plan(path: &Path, format: PlanFormat) -> Result<ExitCode> {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let runtime = match Runtime::new(config, Arc::new(Metrics::new()), Arc::default()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(ExitCode::from(1));
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let (plan, failures) = runtime.plan(now).await?;
    for f in &failures {
        eprintln!("warning [{}] {}: {}", f.stage, f.subject, f.message);
    }
    let text = match format {
        PlanFormat::Text => tlsward::plan::text::to_text(&plan, now),
        PlanFormat::Json => serde_json::to_string_pretty(&plan)? + "\n",
        PlanFormat::Yaml => serde_saphyr::to_string(&serde_json::to_value(&plan)?)?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// One malloc arena (glibc builds; the musl image has none): the daemon allocates from
/// a few threads, and glibc's per-thread arenas keep freed memory apart, so with 10,000
/// sites the resident size stayed ~15 MiB above what one arena needs (kube_noop bench).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(config::json_schema()).expect("schema is JSON")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => match Config::load(config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} sites, {} issuers, {} DNS providers)",
                    config.display(),
                    c.file.sites.len(),
                    c.file.issuers.len(),
                    c.file.dns.providers.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{errors}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Run {
            config,
            once,
            listen,
            solver_listen,
            leader_elect,
            lease_name,
            lease_duration,
            identity,
            shutdown_grace,
        } => {
            init_logging(&cli);
            let leader = leader_elect.then(|| daemon::LeaderSettings {
                lease_name: lease_name.clone(),
                identity: identity.clone().unwrap_or_else(default_identity),
                lease_duration: std::time::Duration::from_secs(*lease_duration),
            });
            tokio_main(run(config, *once, *listen, *solver_listen, leader, *shutdown_grace))
        }
        Command::Plan { config, format } => {
            init_logging(&cli);
            tokio_main(plan(config, *format))
        }
        Command::Doctor {
            config,
            manifests,
            format,
            at,
        } => match config {
            None => Ok(doctor_manifests(manifests, *format, *at)),
            Some(path) => {
                init_logging(&cli);
                tokio_main(doctor_live(path, *format, *at))
            }
        },
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(1)
    })
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "tlsward".into());
    format!("{}-{}", host.trim(), std::process::id())
}

fn tokio_main<F: std::future::Future<Output = Result<ExitCode>>>(f: F) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(f);
    // Tasks still running (a watch, an abandoned request) end with the process.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}
