//! `muxguard sandbox DEST`: shows the Landlock rules a master for DEST
//! would get and, with `--try-*`, applies exactly those rules to this
//! process and reports what the kernel then allows. The rules come from the
//! same functions the master uses ([`master::sandbox_inputs`],
//! [`sandbox::Plan::for_master`]), so what this shows is what the master
//! enforces.

use std::io::Read;
use std::process::ExitCode;

use crate::cli::SandboxArgs;
use crate::master;
use crate::sandbox::{self, Plan};

pub fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    let master::Resolved {
        host,
        policy,
        control_path,
    } = master::resolve(&args.ssh, &args.policy, args.control_path.clone())?;
    let audit_path = master::audit_path(args.audit_log.clone(), &policy);
    let plan = Plan::for_master(&master::sandbox_inputs(
        &host,
        &control_path,
        &audit_path,
        &policy,
    ));
    println!("The sandbox of a master for {}:\n{plan}", host.alias);
    if args.try_read.is_empty() && args.try_write.is_empty() && args.try_connect.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let applied = sandbox::restrict(&plan)?;
    println!("applied: {applied}");
    let verdict = |result: std::io::Result<()>| match result {
        Ok(()) => "allowed".to_string(),
        Err(e) => format!("denied ({e})"),
    };
    for path in &args.try_read {
        let result = std::fs::File::open(path).and_then(|mut f| f.read(&mut [0; 1]).map(drop));
        println!("read {}: {}", path.display(), verdict(result));
    }
    for path in &args.try_write {
        let result = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map(drop);
        println!("write {}: {}", path.display(), verdict(result));
    }
    for port in &args.try_connect {
        let result = std::net::TcpStream::connect(("127.0.0.1", *port)).map(drop);
        println!("connect 127.0.0.1:{port}: {}", verdict(result));
    }
    Ok(ExitCode::SUCCESS)
}
