//! `wshub`: the standalone server. Parses the command line, merges the config (flags >
//! env > file > defaults), starts logging, binds, and runs `wshub::serve` until SIGINT or
//! SIGTERM (fast: 1001), or until a drain (SIGUSR1 or `POST /api/drain`: 1012 over
//! `drain_period`) is over. All hub behaviour lives in the `wshub` library; this file only
//! wires it up.

use wshub_server::{settings, sinks};

/// jemalloc rather than glibc malloc: it hands freed pages back to the OS, so after 10k
/// connections close RSS falls back near its baseline instead of staying at the peak
/// (glibc: stays at the peak; mimalloc: stays too and costs more per connection). Its
/// background thread purges while the server is idle, not only on the next allocation.
/// Measured in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Arg, ArgAction, ArgMatches, Command};
use settings::{KEYS, Settings};
use wshub::{Broadcast, Hub, Site};

/// The settings flags, shared by `serve` and `check`.
fn with_settings_flags(command: Command) -> Command {
    command
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help("TOML config file (see `wshub config`); also WSHUB_CONFIG"),
        )
        .args(KEYS.iter().map(|key| {
            Arg::new(key.name)
                .long(key.flag())
                .value_name("VALUE")
                .action(ArgAction::Set)
                .help(format!(
                    "{} [default: {}] [env: {}]",
                    key.doc,
                    key.default,
                    key.env()
                ))
        }))
}

fn cli() -> Command {
    let serve = with_settings_flags(
        Command::new("serve")
            .about("Run the hub (a chat demo on http://127.0.0.1:8080 with no arguments)"),
    );
    let check = with_settings_flags(Command::new("check").about(
        "Validate the config (file + env + flags) and print the effective settings, without serving",
    ));
    Command::new("wshub")
        .about("A WebSocket hub: holds many connections and fans messages out to them")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .subcommand(serve)
        .subcommand(check)
        .subcommand(
            Command::new("config").about("Print the default config file, with a comment per key"),
        )
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    match matches.subcommand() {
        Some(("config", _)) => {
            print!("{}", settings::default_file());
            ExitCode::SUCCESS
        }
        Some(("check", args)) => {
            let checked = load_settings(args)
                .map_err(anyhow::Error::from)
                .and_then(|settings| plan(&settings).map(|_| settings));
            match checked {
                Ok(settings) => {
                    print!("{}", settings.render());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("wshub: config error: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
        Some(("serve", args)) => {
            let settings = match load_settings(args) {
                Ok(settings) => settings,
                Err(error) => {
                    eprintln!("wshub: config error: {error}");
                    return ExitCode::from(2);
                }
            };
            init_logging(settings.text("log_format"));
            for warning in settings::unknown_env(std::env::vars().map(|(name, _)| name)) {
                tracing::warn!("{warning}");
            }
            match run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(Failure::Config(error)) => {
                    eprintln!("wshub: config error: {error:#}");
                    ExitCode::from(2)
                }
                Err(Failure::Runtime(error)) => {
                    eprintln!("wshub: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => ExitCode::from(2),
    }
}

/// defaults < file < env < flags.
fn load_settings(args: &ArgMatches) -> Result<Settings, settings::SettingError> {
    let mut settings = Settings::defaults();
    let file = args
        .get_one::<String>("config")
        .cloned()
        .or_else(|| std::env::var("WSHUB_CONFIG").ok().filter(|s| !s.is_empty()));
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            settings::SettingError(format!("cannot read config file `{path}`: {e}"))
        })?;
        settings.apply_toml(&text, &path)?;
    }
    settings.apply_env(|var| std::env::var(var).ok())?;
    for key in KEYS {
        if let Some(raw) = args.get_one::<String>(key.name) {
            settings.set_text(key, raw, &format!("--{}", key.flag()))?;
        }
    }
    Ok(settings)
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

enum Failure {
    /// A bad setting or a path that cannot be used: exit 2.
    Config(anyhow::Error),
    /// Anything else (e.g. the port is taken): exit 1.
    Runtime(anyhow::Error),
}

/// Everything `serve` needs, checked before anything listens.
struct Plan {
    config: wshub::Config,
    site: Site,
    sink: Sink,
    bind: String,
    /// `internal_bind`: where the operators' routes go, when not on `bind`.
    internal_bind: Option<String>,
    broker: BrokerPlan,
    tls: Option<Arc<wshub::Tls>>,
}

/// `tls_cert` and `tls_key`: both or neither, read and matched now.
fn tls_plan(settings: &Settings) -> anyhow::Result<Option<Arc<wshub::Tls>>> {
    match (settings.path("tls_cert"), settings.path("tls_key")) {
        (None, None) => Ok(None),
        (Some(_), None) => anyhow::bail!("invalid config `tls_key`: required with `tls_cert`"),
        (None, Some(_)) => anyhow::bail!("invalid config `tls_cert`: required with `tls_key`"),
        (Some(cert), Some(key)) => wshub::Tls::from_pem_files(cert, key)
            .map(|tls| Some(Arc::new(tls)))
            .map_err(|error| {
                let key = match error {
                    wshub::TlsError::Cert(_) => "tls_cert",
                    wshub::TlsError::Key(_) => "tls_key",
                    wshub::TlsError::Mismatch(_) => "tls_key",
                };
                anyhow::anyhow!("invalid config `{key}`: {error}")
            }),
    }
}

/// Where channels live (`broker`).
enum BrokerPlan {
    Memory,
    Redis(wshub::RedisOptions),
}

/// Checks `broker`, `node_name`, `presence_ttl` and `broker_prefix`.
fn broker_plan(settings: &Settings, config: &wshub::Config) -> anyhow::Result<BrokerPlan> {
    let url = settings.text("broker");
    if url == "memory" {
        return Ok(BrokerPlan::Memory);
    }
    anyhow::ensure!(
        url.starts_with("redis://") || url.starts_with("redis+cluster://"),
        "invalid config `broker`: `{url}` is neither `memory`, a redis://HOST:PORT[/DB] URL nor redis+cluster://HOST:PORT[,HOST:PORT...]"
    );
    let node_name = match settings.optional("node_name") {
        Some(name) => name.to_owned(),
        None => default_node_name(),
    };
    wshub::check_node_name(&node_name)
        .map_err(|why| anyhow::anyhow!("invalid config `node_name`: {why}"))?;
    let presence_ttl = settings.duration("presence_ttl");
    anyhow::ensure!(
        presence_ttl >= std::time::Duration::from_millis(300),
        "invalid config `presence_ttl`: at least 300ms (it is refreshed every third of it)"
    );
    let prefix = settings.text("broker_prefix");
    anyhow::ensure!(
        !prefix.is_empty()
            && !prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '{' || c == '}'),
        "invalid config `broker_prefix`: `{prefix}` must be non-empty, without spaces, control characters or braces"
    );
    Ok(BrokerPlan::Redis(wshub::RedisOptions {
        url: url.to_owned(),
        node_name,
        prefix: prefix.to_owned(),
        presence_ttl,
        history: wshub::HistoryLimits {
            size: config.history_size,
            ttl: config.history_ttl,
        },
    }))
}

/// The host name and the process id: unique on a host, readable in `/api/info`.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .replace(|c: char| c.is_whitespace() || c == '@', "-")
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wshub".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Where inbound messages go (`on_message`).
enum Sink {
    Chat,
    Webhook(sinks::WebhookConfig),
    Stdio,
}

/// Checks every setting and path; any error names its config key.
fn plan(settings: &Settings) -> anyhow::Result<Plan> {
    let mut config = settings.hub_config();
    let read = |key: &str| -> anyhow::Result<Option<String>> {
        settings
            .path(key)
            .map(|path| {
                std::fs::read_to_string(&path).with_context(|| {
                    format!("invalid config `{key}`: cannot read `{}`", path.display())
                })
            })
            .transpose()
    };
    config.jwt_public_key_pem = read("jwt_public_key")?;
    config.jwt_jwks = read("jwt_jwks_file")?;
    config.validate()?;
    let sink = match settings.text("on_message") {
        "webhook" => {
            let url = settings.optional("webhook_url").ok_or_else(|| {
                anyhow::anyhow!(
                    "invalid config `webhook_url`: required when on_message = \"webhook\""
                )
            })?;
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "invalid config `webhook_url`: `{url}` is not an http:// or https:// URL"
            );
            Sink::Webhook(sinks::WebhookConfig {
                url: url.to_owned(),
                timeout: settings.duration("webhook_timeout"),
                retries: settings.count("webhook_retries"),
                queue: settings.count("webhook_queue"),
            })
        }
        "stdio" => Sink::Stdio,
        _ => Sink::Chat,
    };
    check_address(settings, "bind")?;
    let internal_bind = settings.optional("internal_bind").map(str::to_owned);
    if internal_bind.is_some() {
        check_address(settings, "internal_bind")?;
    }
    Ok(Plan {
        internal_bind,
        tls: tls_plan(settings)?,
        broker: broker_plan(settings, &config)?,
        config,
        site: site(settings)?,
        sink,
        bind: settings.text("bind").to_owned(),
    })
}

/// A port in use is a runtime failure (exit 1); an address that cannot be one is a
/// config error like any other (exit 2).
fn check_address(settings: &Settings, key: &str) -> anyhow::Result<()> {
    let address = settings.text(key);
    std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(|_| ())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "invalid config `{key}`: `{address}` is not HOST:PORT (e.g. 127.0.0.1:8080, [::]:8080, localhost:0)"
            )
        })
}

fn run(settings: Settings) -> Result<(), Failure> {
    let plan = plan(&settings).map_err(Failure::Config)?;
    // Workers write what they corked when they run out of work: one write per recipient
    // for everything published since (see wshub::flush_corked).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(wshub::flush_corked)
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::Runtime)?;
    runtime.block_on(serve(plan, settings.text("on_message")))
}

async fn serve(plan: Plan, on_message: &str) -> Result<(), Failure> {
    let Plan {
        config,
        site,
        sink,
        bind,
        internal_bind,
        broker,
        tls,
    } = plan;
    // Redis must answer before anything listens: a node that cannot reach it would
    // serve a hub of its own.
    let broker: Arc<dyn wshub::Broker> = match broker {
        BrokerPlan::Memory => Arc::new(wshub::MemoryBroker::new(wshub::HistoryLimits {
            size: config.history_size,
            ttl: config.history_ttl,
        })),
        BrokerPlan::Redis(options) => {
            let node = options.node_name.clone();
            let broker = wshub::RedisBroker::connect(options)
                .await
                .map_err(|e| Failure::Config(anyhow::anyhow!("invalid config `broker`: {e}")))?;
            tracing::info!(node, "channels shared through Redis");
            Arc::new(broker)
        }
    };
    let hub = match sink {
        Sink::Chat => Hub::with_shared_broker(config, Broadcast, broker),
        Sink::Webhook(webhook) => {
            let webhook = sinks::Webhook::start(webhook).map_err(Failure::Runtime)?;
            Hub::with_shared_broker(config, webhook.clone(), broker)
                .inspect(|hub| webhook.register_metrics(hub))
        }
        Sink::Stdio => Hub::with_shared_broker(config, sinks::Stdio::start(), broker)
            .inspect(|hub| sinks::Stdio::read_stdin(hub.clone())),
    }
    .map_err(|e| Failure::Config(e.into()))?;

    let shutdown = shutdown_signal()
        .context("cannot install signal handlers")
        .map_err(Failure::Runtime)?;
    drain_on_sigusr1(hub.clone()).map_err(Failure::Runtime)?;
    reload_on_sighup(tls.clone()).map_err(Failure::Runtime)?;
    let (listener, addr) = listen_on(&bind, "bind").await?;
    let (router, internal) = match internal_bind {
        Some(internal_bind) => {
            let internal = wshub::internal_router(hub.clone(), site.clone());
            let internal = serve_internal(&internal_bind, internal).await?;
            (wshub::public_router(hub.clone(), site), Some(internal))
        }
        None => (wshub::router(hub.clone(), site), None),
    };
    let drain_timeout = hub.config().drain_timeout;
    let served = match tls {
        Some(tls) => {
            tracing::info!(on_message, "wshub listening on https://{addr}");
            wshub::serve_tls(listener, hub, router, shutdown, tls).await
        }
        None => {
            tracing::info!(on_message, "wshub listening on http://{addr}");
            wshub::serve(listener, hub, router, shutdown).await
        }
    };
    if let Some((stop, task)) = internal {
        // Its requests are short (the dashboard's feed ends with the hub): a second, not
        // another drain_timeout.
        let _ = stop.send(());
        let _ = tokio::time::timeout(drain_timeout.min(INTERNAL_GRACE), task).await;
    }
    served.context("server failed").map_err(Failure::Runtime)
}

/// How long the internal listener's last requests get once the public one has stopped.
const INTERNAL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The internal listener's stop signal and task.
type Internal = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// `internal_bind`: the operators' routes on their own listener, plain HTTP (hyper through
/// axum: no WebSocket fast path here, `/ws` is not routed). It is stopped after the
/// public listener's drain, so `/readyz` answers 503 throughout it.
async fn serve_internal(bind: &str, router: axum::Router) -> Result<Internal, Failure> {
    let (listener, addr) = listen_on(bind, "internal_bind").await?;
    tracing::info!("internal routes (metrics, health, admin, api) on http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .await;
        if let Err(error) = served {
            tracing::error!(%error, "internal listener failed");
        }
    });
    Ok((stop, task))
}

/// SIGUSR1 starts a drain: upgrades get 503, clients are closed with 1012 over
/// `drain_period`, and `serve` returns (exit 0) once the last one is gone. Installed before
/// we announce the address, like the other handlers, so an early signal is never lost.
fn drain_on_sigusr1(hub: Hub) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 =
        signal(SignalKind::user_defined1()).context("cannot install the SIGUSR1 handler")?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            let connections = hub.connection_count();
            if hub.drain() {
                tracing::info!(connections, "SIGUSR1 received: draining");
            } else {
                tracing::info!("SIGUSR1 received: already draining or shutting down");
            }
        }
    });
    Ok(())
}

/// The listen queue: connections the kernel has completed and we have not accepted yet.
/// std (and so tokio's `bind`) asks for 128, which a burst of reconnects (a drained node's
/// clients, a restart) overflows: SYNs are dropped and those clients wait a second or more
/// to retry. The kernel caps it at `net.core.somaxconn` (4096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 4096;

/// [`listen`] on the address of config `key`, and the address it got (port 0: the one
/// the kernel chose). A port in use is a runtime failure (exit 1), naming the key.
async fn listen_on(
    address: &str,
    key: &str,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), Failure> {
    let listener = listen(address)
        .await
        .with_context(|| format!("cannot listen on `{address}` (config `{key}`)"))
        .map_err(Failure::Runtime)?;
    let addr = listener
        .local_addr()
        .context("listener has no address")
        .map_err(Failure::Runtime)?;
    Ok((listener, addr))
}

/// Binds `address` (HOST:PORT, the first address it resolves to that binds) with
/// [`LISTEN_BACKLOG`] and `SO_REUSEADDR`, as std does apart from the backlog.
async fn listen(address: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
    }))
}

/// SIGHUP reads the certificate and key again: new handshakes use them, open connections
/// stay; a bad pair is logged and the old one kept. Without TLS it is logged and ignored,
/// so a reload sent to every node (`systemctl reload`) never ends one.
fn reload_on_sighup(tls: Option<Arc<wshub::Tls>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let Some(tls) = &tls else {
                tracing::info!("SIGHUP: nothing to reload (no tls_cert)");
                continue;
            };
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate and key read again"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: new TLS pair refused, keeping the old one")
                }
            }
        }
    });
    Ok(())
}

/// The HTTP surface's settings; checks the paths now, before anything listens.
fn site(settings: &Settings) -> anyhow::Result<Site> {
    let home_template = match settings.path("html") {
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("invalid config `html`: cannot read `{}`", path.display()))?,
        None => wshub::DEFAULT_HOME_TEMPLATE.to_owned(),
    };
    wshub::check_home_template(&home_template).map_err(|error| {
        anyhow::anyhow!("invalid config `html`: {}: {error}", settings.text("html"))
    })?;
    let static_dir = match settings.path("static") {
        Some(path) => {
            let meta = std::fs::metadata(&path).with_context(|| {
                format!("invalid config `static`: cannot open `{}`", path.display())
            })?;
            anyhow::ensure!(
                meta.is_dir(),
                "invalid config `static`: `{}` is not a directory",
                path.display()
            );
            std::fs::read_dir(&path).with_context(|| {
                format!("invalid config `static`: cannot read `{}`", path.display())
            })?;
            Some(path)
        }
        None => None,
    };
    Ok(Site {
        home_template,
        static_dir,
        api_key: settings.optional("api_key").map(str::to_owned),
        api_max_body_size: settings.count("api_max_body_size"),
        metrics: settings.text("metrics") == "true",
    })
}

/// SIGINT or SIGTERM. The handlers are installed now, before we announce the address, so
/// a signal sent right after startup is never lost to the default action.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
