//! `muxguard policy check` and `muxguard policy explain`: validate policy
//! files, and show which rule in which file decides a given request.

use std::process::ExitCode;

use crate::access::decide::{PeerIdentity, PolicyPaths};
use crate::access::policy::{Destination, PeerAccount, Request, RequestKind};
use crate::access::policy_file;
use crate::cli::{ExplainArgs, PolicyCommand};

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check { file, files } => {
            let targets = match file {
                Some(file) => vec![file],
                None => {
                    let paths = PolicyPaths::resolve(files.system_policy, files.user_policy);
                    vec![paths.system, paths.user]
                }
            };
            let mut ok = true;
            for target in targets {
                match policy_file::load_optional(&target) {
                    Ok(Some(loaded)) => {
                        println!(
                            "{}: valid ({} rules)",
                            target.display(),
                            loaded.rules().len()
                        )
                    }
                    Ok(None) => println!("{}: no such file (nothing to check)", target.display()),
                    Err(e) => {
                        eprintln!("{e}");
                        ok = false;
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCommand::Explain(args) => explain(args),
    }
}

fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let paths = PolicyPaths::resolve(
        args.files.system_policy.clone(),
        args.files.user_policy.clone(),
    );
    let set = match paths.load() {
        Ok(set) => set,
        Err(e) => {
            eprintln!("muxguard: invalid policy: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let kind = match &args.kind {
        Some(kind) => kind
            .parse::<RequestKind>()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        None if args.command.is_some() => RequestKind::Exec,
        None => RequestKind::Shell,
    };
    let me = rustix::process::getuid().as_raw();
    let identity = PeerIdentity {
        uid: me,
        user: crate::access::decide::accounts::user_name(me),
        gids: vec![rustix::process::getgid().as_raw()],
        groups: Vec::new(),
    };
    let remote_user = args
        .user
        .clone()
        .or_else(|| identity.user.clone())
        .unwrap_or_default();
    let request = Request {
        host_alias: &args.host,
        hostname: args.hostname.as_deref().unwrap_or(&args.host),
        remote_user: &remote_user,
        program: args.program.as_deref(),
        kind,
        command: args.command.as_deref(),
        local_port: args.port,
        peer: PeerAccount {
            uid: identity.uid,
            user: identity.user.as_deref(),
            gids: &identity.gids,
            groups: &identity.groups,
        },
    };
    println!("{}", set.explain(&request));
    let ports = set.forward_ports(&Destination {
        alias: request.host_alias,
        hostname: request.hostname,
        user: request.remote_user,
    });
    println!(
        "The sandbox of a master for this destination may bind TCP ports: {}; connect to TCP ports: {}.",
        ports.bind, ports.connect
    );
    Ok(ExitCode::SUCCESS)
}
