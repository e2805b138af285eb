//! `meshctl`: the mesh's command-line client. Parses flags and runs [`mesh_control_plane::meshctl`].

use clap::{Parser, Subcommand};
use mesh_control_plane::client::ApiClient;
use mesh_control_plane::meshctl::{Command, Output, run};

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Apply and inspect the mesh's configuration"
)]
struct Args {
    /// meshd's management API.
    #[arg(
        long,
        env = "MESH_SERVER",
        default_value = "http://127.0.0.1:15080",
        global = true
    )]
    server: String,
    /// Bearer token for the API.
    #[arg(long, env = "MESH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Apply resources from a file (or - for stdin); all or nothing.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Return when every affected proxy has ACKed the change; fail if one NACKs or is silent.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "10s")]
        timeout: String,
    },
    /// List resources of a kind, or show one.
    Get {
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete one resource.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Connected proxies and the configuration each has ACKed or NACKed.
    Proxies {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Applied revisions, newest first.
    History {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Workload tokens: what a sidecar shows meshd's CA to get its certificate.
    Token {
        #[command(subcommand)]
        action: TokenCmd,
    },
    /// The mesh's certificate authority.
    Ca {
        #[command(subcommand)]
        action: CaCmd,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TokenCmd {
    /// Prints a token proving NAMESPACE and SERVICE-ACCOUNT (give it to the sidecar as
    /// MESH_CA_TOKEN or --ca-token-file).
    Create {
        #[arg(long, short = 'n')]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// How long the token is good for: e.g. 1h, 24h, 30d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// `json` prints the identity and expiry too.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, clap::Subcommand)]
enum CaCmd {
    /// Prints the trust bundle (PEM) sidecars verify meshd and each other with.
    Bundle,
}

fn main() {
    let args = Args::parse();
    let command = match args.command {
        Cmd::Apply {
            file,
            wait,
            timeout,
        } => Command::Apply {
            file,
            wait,
            timeout,
        },
        Cmd::Get {
            kind,
            name,
            namespace,
            output,
        } => Command::Get {
            kind,
            name,
            namespace,
            output,
        },
        Cmd::Delete {
            kind,
            name,
            namespace,
        } => Command::Delete {
            kind,
            name,
            namespace,
        },
        Cmd::Proxies { output } => Command::Proxies { output },
        Cmd::History { output } => Command::History { output },
        Cmd::Token {
            action:
                TokenCmd::Create {
                    namespace,
                    service_account,
                    ttl,
                    output,
                },
        } => Command::TokenCreate {
            namespace,
            service_account,
            ttl,
            output,
        },
        Cmd::Ca {
            action: CaCmd::Bundle,
        } => Command::CaBundle,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            let client = ApiClient::new(&args.server, args.token)?;
            rt.block_on(run(&client, command))
        });
    match result {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("meshctl: error: {e:#}");
            std::process::exit(1);
        }
    }
}
