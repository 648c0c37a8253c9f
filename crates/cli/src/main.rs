//! The `opentrail` binary. Thin: parses flags, sets up tracing, binds, and calls the library.

mod alerts;
mod client;
mod decrypt;
mod generate;
mod iam;
mod logs;
mod tail;
mod validate;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use opentrail_server::Settings;

#[derive(Parser)]
#[command(
    name = "opentrail",
    version,
    about = "A self-hosted, CloudTrail-compatible audit trail"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text", env = "OPENTRAIL_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server with embedded storage.
    Serve {
        /// Data directory [default: ./opentrail-data; env OPENTRAIL_DATA_DIR].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7433; env OPENTRAIL_LISTEN].
        #[arg(long)]
        listen: Option<String>,
        /// TOML settings file; environment variables and flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage buckets of the local bucket store (`<data_dir>/buckets/NAME/` by default).
    Buckets {
        /// Data directory [default: ./opentrail-data; env OPENTRAIL_DATA_DIR].
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// TOML settings file.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: BucketAction,
    },
    /// Validate a trail's digest and log files (the AWS CLI's `cloudtrail validate-logs`, plus
    /// `--local-dir`, parallel hashing and extra checks). Exit status 1 if anything is invalid.
    ValidateLogs {
        /// Data directory (for buckets on the local store) [default: ./opentrail-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// TOML settings file (where buckets live).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: validate::ValidateArgs,
    },
    /// Manage users, groups, access keys and policies of a running server (IAM's commands and
    /// flags; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    Iam {
        #[command(flatten)]
        args: iam::IamArgs,
    },
    /// Alert topics: create, subscribe (webhook, email, NATS), publish, delivery state, dead
    /// letters.
    Topics {
        #[command(flatten)]
        args: alerts::TopicsArgs,
    },
    /// Event rules: the starter rules, enabling one by name, listing (the rest through
    /// `aws events ... --endpoint-url`).
    Rules {
        #[command(flatten)]
        args: alerts::RulesArgs,
    },
    /// Follow events as they are recorded (the server's live tail), filtered by lookup
    /// attributes or an event pattern; resumes by itself after a dropped connection.
    Tail {
        #[command(flatten)]
        args: tail::TailArgs,
    },
    /// Print realistic synthetic CloudTrail events (JSON lines, or ingest bodies with
    /// `--batch`), deterministic from `--seed`: the benchmarks' event generator.
    Gen {
        #[command(flatten)]
        args: generate::GenArgs,
    },
    /// List or fetch a trail's delivered log files for a time range (local or S3 buckets).
    Logs {
        /// Data directory [default: ./opentrail-data; env OPENTRAIL_DATA_DIR].
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// TOML settings file (where buckets live: `buckets_dir`, `s3_endpoint`, ...).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: LogsAction,
    },
}

#[derive(Subcommand)]
enum LogsAction {
    /// Print the matching files (size and key).
    List {
        #[command(flatten)]
        selection: logs::Selection,
    },
    /// Download the matching files into a directory, keeping their keys as paths.
    Get {
        #[command(flatten)]
        selection: logs::Selection,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// The server whose key service decrypts encrypted files (credentials from
        /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) [default: $AWS_ENDPOINT_URL, else
        /// http://127.0.0.1:7433].
        #[arg(long)]
        endpoint_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum BucketAction {
    /// Create a bucket (S3 bucket naming rules apply).
    Create { name: String },
    /// List the buckets.
    List,
}

fn load_settings(
    config: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<Settings> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut settings = Settings::load(config, &env)?;
    if let Some(d) = data_dir {
        settings.data_dir = d;
    }
    Ok(settings)
}

fn buckets(settings: &Settings, action: BucketAction) -> anyhow::Result<()> {
    let root = settings.bucket_path("");
    match action {
        BucketAction::Create { name } => {
            opentrail_model::names::check_bucket_name(&name).map_err(anyhow::Error::msg)?;
            let (default, overrides) = settings.bucket_targets();
            let Some(path) = opentrail_delivery::Buckets::new(default, overrides).local_dir(&name)
            else {
                anyhow::bail!(
                    "bucket {name} is on an S3-compatible server (s3_endpoint); create it there"
                );
            };
            if path.is_dir() {
                anyhow::bail!("bucket {name} already exists at {}", path.display());
            }
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            println!("created bucket {name} at {}", path.display());
        }
        BucketAction::List => {
            let mut names: Vec<String> = match std::fs::read_dir(&root) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", root.display())),
            };
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
    }
    Ok(())
}

fn init_tracing(format: &str) {
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

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("opentrail: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    if let Command::ValidateLogs {
        data_dir,
        config,
        args,
    } = &cli.command
    {
        let settings = load_settings(config.as_deref(), data_dir.clone())?;
        let code = validate::run(&settings, args)?;
        return Ok(std::process::ExitCode::from(
            u8::try_from(code).unwrap_or(1),
        ));
    }
    run_other(cli).map(|()| std::process::ExitCode::SUCCESS)
}

fn run_other(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ValidateLogs { .. } => Ok(()),
        Command::Iam { args } => iam::run(args),
        Command::Topics { args } => alerts::run_topics(args),
        Command::Rules { args } => alerts::run_rules(args),
        Command::Tail { args } => tail::run(args),
        Command::Gen { args } => generate::run(args),
        Command::Buckets {
            data_dir,
            config,
            action,
        } => buckets(&load_settings(config.as_deref(), data_dir)?, action),
        Command::Logs {
            data_dir,
            config,
            action,
        } => {
            let settings = load_settings(config.as_deref(), data_dir)?;
            match action {
                LogsAction::List { selection } => logs::list(&settings, &selection),
                LogsAction::Get {
                    selection,
                    out,
                    endpoint_url,
                } => logs::get(&settings, &selection, &out, endpoint_url),
            }
        }
        Command::Serve {
            data_dir,
            listen,
            config,
        } => {
            let mut settings = load_settings(config.as_deref(), data_dir)?;
            if let Some(l) = listen {
                settings.listen = l;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&settings.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", settings.listen))?;
                opentrail_server::run(listener, settings, shutdown_signal()).await?;
                Ok(())
            })
        }
    }
}
