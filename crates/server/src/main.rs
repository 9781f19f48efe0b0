//! The `rhizome` command: `serve`, `admin …` and `config example`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use rhizome::{
    DataDirLock, admin, build_services, default_config_path, load_config, open_store, start,
};
use tracing_subscriber::EnvFilter;

/// mimalloc returns freed memory to the system far better than the platform allocator under
/// Rhizome's load (many threads, bursts of large short-lived buffers such as password hashes),
/// which keeps the resident size of a small server small. It is built without asking for
/// transparent huge pages, and `main` turns them off for the process: with them, each 2 MiB
/// region the allocator touched was resident whole (an idle server held 20 MiB of them).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rhizome, a Matrix homeserver for communities that run their own.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file (TOML). Defaults to ./rhizome.toml if it exists.
    #[arg(long, short, global = true, env = "RHIZOME_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve,
    /// Administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Copy the database (SQLite), signing key and media into a directory, while the server
    /// runs. The copy is a data directory: to restore, start Rhizome with it as `data_dir`.
    /// Backing up into the same directory again copies only new media. Media in an S3 bucket
    /// (`media.s3`) is not copied: it stays in the bucket, and the report says so.
    Backup {
        /// Where the copy goes (outside the data directory).
        destination: PathBuf,
    },
    /// Registration (invite) tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Stored media.
    Media {
        #[command(subcommand)]
        command: MediaCommand,
    },
    /// Accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Rooms.
    Room {
        #[command(subcommand)]
        command: RoomCommand,
    },
    /// Reports users made of rooms and messages.
    Reports {
        #[command(subcommand)]
        command: ReportsCommand,
    },
    /// The server's signing key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Sending to other servers.
    Federation {
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// Copy the SQLite database into a new PostgreSQL database (the server stopped), with
    /// progress; run it again if it stops half-way. Then set `database.url` and start Rhizome,
    /// as one process or several.
    MigrateDb {
        /// The PostgreSQL database: postgres://user:password@host/dbname.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Replace the signing key with a new one; the old one stays published as old, so what
    /// it signed stays verifiable. Needs the server stopped.
    Rotate,
}

#[derive(Subcommand)]
enum FederationCommand {
    /// List the servers this one sends to: last success, failures, backoff, queue lengths.
    Destinations,
    /// End a server's backoff: a running server tries it again within a minute.
    Retry {
        /// The server name.
        server: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// List accounts: user ID, display name, admin, deactivated, created.
    List,
    /// Create an account and print its password (generated unless --password-stdin).
    Create {
        /// The user name (or full user ID of this server).
        name: String,
        /// Make it a server administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Deactivate an account: it leaves its rooms and its sessions end, for good. Needs the
    /// server stopped.
    Deactivate {
        /// The user.
        user: String,
    },
    /// Set a new password (printed, generated unless --password-stdin) and end the account's
    /// sessions. Needs the server stopped.
    ResetPassword {
        /// The user.
        user: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Grant or withdraw server administration.
    SetAdmin {
        /// The user.
        user: String,
        /// `true` or `false`.
        #[arg(action = clap::ArgAction::Set)]
        admin: bool,
    },
}

#[derive(Subcommand)]
enum RoomCommand {
    /// List rooms: room ID, name, members, version, published or shut down.
    List,
    /// Shut a room down: close it to this server's users, remove it from the directory and
    /// its aliases, and make every local member leave. Needs the server stopped.
    Shutdown {
        /// The room ID or a local alias.
        room: String,
        /// Tell the members who were joined, in a new room from the server's notices account.
        #[arg(long)]
        message: Option<String>,
    },
}

#[derive(Subcommand)]
enum ReportsCommand {
    /// List open reports (all with --all), oldest first.
    List {
        /// Include resolved reports.
        #[arg(long)]
        all: bool,
    },
    /// Mark a report resolved.
    Resolve {
        /// The report number.
        id: String,
    },
}

#[derive(Subcommand)]
enum MediaCommand {
    /// Delete a media item of this server, its thumbnails and (when unshared) its files.
    Delete {
        /// The item: mxc://<server>/<media ID>.
        mxc_uri: String,
    },
    /// Delete media of this server not downloaded or thumbnailed for a while.
    Purge {
        /// How long unused: 30d, 12h, 2w.
        #[arg(long)]
        older_than: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it.
    Create {
        /// How many accounts it may create (unlimited if left out).
        #[arg(long)]
        uses: Option<i64>,
        /// How long it is valid: 30m, 12h, 7d, 2w (forever if left out).
        #[arg(long)]
        expires: Option<String>,
        /// The token itself (random if left out).
        #[arg(long)]
        token: Option<String>,
    },
    /// List tokens.
    List,
    /// Revoke a token.
    Revoke {
        /// The token.
        token: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the documented example configuration.
    Example,
    /// Check the configuration and print it with every default filled in.
    Check,
}

/// Libraries whose `info` lines describe each event rather than the server's life: quiet
/// unless a filter names them.
const QUIET_LIBRARIES: &[&str] = &["ruma_state_res"];

fn init_logging(level: &str) {
    let mut filter = EnvFilter::try_from_env("RHIZOME_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(level));
    let named = std::env::var("RHIZOME_LOG").unwrap_or_else(|_| level.to_owned());
    for library in QUIET_LIBRARIES {
        if !named.contains(library)
            && let Ok(directive) = format!("{library}=warn").parse()
        {
            filter = filter.add_directive(directive);
        }
    }
    // Colours for a terminal only: a log file or journal gets plain lines to read and grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
}

#[tokio::main]
async fn main() -> Result<()> {
    // Best effort: a kernel without the setting keeps its default.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    if let Command::Config { command: ConfigCommand::Example } = &cli.command {
        print!("{}", rhizome_core::Config::example_toml());
        return Ok(());
    }
    let config_path = cli.config.clone().or_else(default_config_path);
    let config = load_config(config_path.as_deref())?;
    match cli.command {
        Command::Serve => {
            init_logging(&config.logging.level);
            let server = start(config).await?;
            serve_until_shutdown(&server).await;
            tracing::info!("shutting down");
            server.stop().await;
        }
        Command::Admin { command: AdminCommand::Backup { destination } } => {
            init_logging("warn");
            let store = open_store(&config).await?;
            let s3 = &config.media.s3;
            let bucket = s3.enabled.then_some(s3.bucket.as_str());
            let result =
                admin::backup::backup(&store, &config.data_dir, bucket, &destination).await;
            store.close().await;
            print_lines(result?.lines(&destination));
        }
        Command::Admin { command: AdminCommand::MigrateDb { to } } => {
            init_logging("warn");
            print_lines(admin::migrate::migrate_db(&config, &to).await?);
        }
        Command::Admin { command: AdminCommand::Key { command: KeyCommand::Rotate } } => {
            init_logging("warn");
            let _lock = DataDirLock::acquire_for(&config, "cannot rotate the key")?;
            let data_dir = config.data_dir.clone();
            let store = open_store(&config).await?;
            let services = build_services(config, store.clone()).await?;
            let result = admin::federation::rotate_key(&services, &data_dir).await;
            store.close().await;
            println!("{}", result?);
        }
        Command::Admin { command: AdminCommand::Federation { command } } => {
            init_logging("warn");
            let store = open_store(&config).await?;
            let services = build_services(config, store.clone()).await?;
            let result = match command {
                FederationCommand::Destinations => {
                    admin::federation::destinations(&services).await.map(|lines| lines.join("\n"))
                }
                FederationCommand::Retry { server } => {
                    admin::federation::retry(&services, &server).await
                }
            };
            store.close().await;
            println!("{}", result?);
        }
        Command::Admin { command: AdminCommand::Token { command } } => {
            init_logging("warn");
            let store = open_store(&config).await?;
            let services = build_services(config, store.clone()).await?;
            match command {
                TokenCommand::Create { uses, expires, token } => {
                    println!(
                        "{}",
                        admin::create_token(&services, token, uses, expires.as_deref()).await?
                    );
                }
                TokenCommand::List => {
                    for line in admin::list_tokens(&services).await? {
                        println!("{line}");
                    }
                }
                TokenCommand::Revoke { token } => {
                    admin::revoke_token(&services, &token).await?;
                    println!("revoked {token}");
                }
            }
            store.close().await;
        }
        Command::Admin { command: AdminCommand::Media { command } } => {
            init_logging("warn");
            let store = open_store(&config).await?;
            let services = build_services(config, store.clone()).await?;
            let result = match command {
                MediaCommand::Delete { mxc_uri } => admin::delete_media(&services, &mxc_uri).await,
                MediaCommand::Purge { older_than } => {
                    admin::purge_media(&services, &older_than).await
                }
            };
            store.close().await;
            println!("{}", result?);
        }
        Command::Admin { command: AdminCommand::User { command } } => {
            init_logging("warn");
            // Commands that change rooms or sessions must not run beside a server.
            let exclusive = matches!(
                command,
                UserCommand::Deactivate { .. } | UserCommand::ResetPassword { .. }
            );
            let _lock = if exclusive {
                Some(DataDirLock::acquire_for(&config, "cannot change the account")?)
            } else {
                None
            };
            let store = open_store(&config).await?;
            let services = build_services(config, store.clone()).await?;
            let stdin_password = |wanted: bool| -> Result<Option<String>> {
                if wanted {
                    Ok(Some(admin::users::read_password(std::io::stdin().lock())?))
                } else {
                    Ok(None)
                }
            };
            let result = match command {
                UserCommand::List => admin::users::list(&services).await,
                UserCommand::Create { name, admin: is_admin, password_stdin } => {
                    match stdin_password(password_stdin) {
                        Ok(password) => admin::users::create(&services, &name, password, is_admin)
                            .await
                            .map(|created| created.lines("created")),
                        Err(error) => Err(error),
                    }
                }
                UserCommand::Deactivate { user } => {
                    admin::users::deactivate(&services, &user).await.map(|line| vec![line])
                }
                UserCommand::ResetPassword { user, password_stdin } => {
                    match stdin_password(password_stdin) {
                        Ok(password) => admin::users::reset_password(&services, &user, password)
                            .await
                            .map(|created| created.lines("new password set for")),
                        Err(error) => Err(error),
                    }
                }
                UserCommand::SetAdmin { user, admin: is_admin } => {
                    admin::users::set_admin(&services, &user, is_admin).await.map(|line| vec![line])
                }
            };
            store.close().await;
            print_lines(result?);
        }
        Command::Admin { command: AdminCommand::Room { command } } => {
            init_logging("warn");
            let _lock = match &command {
                RoomCommand::Shutdown { .. } => {
                    Some(DataDirLock::acquire_for(&config, "cannot shut the room down")?)
                }
                RoomCommand::List => None,
            };
            let store = open_store(&config).await?;
            let services = build_services(config, store.clone()).await?;
            let result = match command {
                RoomCommand::List => admin::rooms::list(&services).await,
                RoomCommand::Shutdown { room, message } => {
                    admin::rooms::shutdown(&services, &room, message.as_deref()).await
                }
            };
            store.close().await;
            print_lines(result?);
        }
        Command::Admin { command: AdminCommand::Reports { command } } => {
            init_logging("warn");
            let store = open_store(&config).await?;
            let services = build_services(config, store.clone()).await?;
            let result = match command {
                ReportsCommand::List { all } => admin::reports::list(&services, all).await,
                ReportsCommand::Resolve { id } => {
                    admin::reports::resolve(&services, &id).await.map(|line| vec![line])
                }
            };
            store.close().await;
            print_lines(result?);
        }
        Command::Config { command: ConfigCommand::Check } => {
            print!("{}", toml_of(&config)?);
        }
        Command::Config { command: ConfigCommand::Example } => {}
    }
    Ok(())
}

fn print_lines(lines: Vec<String>) {
    for line in lines {
        println!("{line}");
    }
}

/// The effective configuration as TOML, the object store's secret key hidden.
fn toml_of(config: &rhizome_core::Config) -> Result<String> {
    let mut shown = config.clone();
    if shown.media.s3.secret_access_key.is_some() {
        shown.media.s3.secret_access_key = Some("(hidden)".to_owned());
    }
    Ok(rhizome_core::config::to_toml(&shown)?)
}

/// Waits for SIGINT or SIGTERM, reloading the TLS certificate on every SIGHUP meanwhile.
async fn serve_until_shutdown(server: &rhizome::RunningServer) {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => loop {
                tokio::select! {
                    () = &mut shutdown => return,
                    _ = hangup.recv() => {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        // A failure is logged, and the old certificate stays in service.
                        let _ = server.reload_tls_certificate();
                    }
                }
            },
            Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    let _ = server;
    shutdown.await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
