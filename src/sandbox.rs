//! Hardening the master once start-up is done, so that a master taken over
//! through a bug in its protocol code cannot reach the user's keys and files:
//!
//! - no new privileges, not dumpable (other processes of the same user can
//!   no longer ptrace it — the "sshjack" hijack — or read its /proc memory,
//!   environment and fds), no core files, a private umask;
//! - a Landlock ruleset ([`Plan`]): read the policy files, /proc (peer
//!   identity) and the few /etc files name lookups need; write only the
//!   state directory (spill files, log), the audit log's directory and the
//!   `ls` registry; make and remove sockets only in the control socket's
//!   directory; execute nothing; bind and connect only the TCP ports the
//!   policy can allow forwards on; no signals to, and no abstract-socket
//!   connections with, processes outside the sandbox.
//!
//! Everything is applied while the process still has one thread: Landlock
//! before ABI 8 restricts only the calling thread and the threads it starts
//! afterwards. What the kernel could not enforce is said in the [`Report`],
//! never silently dropped.
//!
//! The rule set is computed by [`Plan::for_master`] from [`Inputs`] alone,
//! so `muxguard sandbox` can apply exactly the master's rules in a
//! short-lived process and show what they allow.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, NetPort,
    PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use rustix::process::{DumpableBehavior, Resource, Rlimit};

use crate::access::policy::{ForwardPorts, Ports};

/// The newest Landlock ABI whose rights this code chooses deliberately.
/// Later ABIs add rights (e.g. connecting to pathname Unix sockets, which
/// the master needs for the D-Bus and journal sockets) that would need new
/// rules; they are left unhandled until this is raised on purpose.
const TARGET_ABI: ABI = ABI::V6;

/// What the master's sandbox depends on. Built once, by
/// [`Inputs::for_master`], for both the master and `muxguard sandbox`.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub control_path: PathBuf,
    pub state_dir: PathBuf,
    pub spool_dir: PathBuf,
    pub registry_dir: PathBuf,
    pub audit_path: PathBuf,
    pub policy_files: Vec<PathBuf>,
    pub forward_ports: ForwardPorts,
    /// The session bus lives at an abstract address, so abstract Unix
    /// sockets cannot be scoped without breaking a reconnect to it.
    pub session_bus_is_abstract: bool,
}

impl Inputs {
    /// Gathers the inputs and creates the directories the master writes to
    /// later (a rule can only name a directory that exists).
    pub fn for_master(
        control_path: &Path,
        audit_path: &Path,
        policy_files: Vec<PathBuf>,
        forward_ports: ForwardPorts,
    ) -> Inputs {
        let state_dir = crate::paths::state_dir();
        let inputs = Inputs {
            control_path: control_path.to_owned(),
            spool_dir: state_dir.join("spool"),
            registry_dir: crate::paths::registry_dir(),
            state_dir,
            audit_path: audit_path.to_owned(),
            policy_files,
            forward_ports,
            session_bus_is_abstract: std::env::var("DBUS_SESSION_BUS_ADDRESS")
                .is_ok_and(|a| a.contains("abstract=")),
        };
        let mut dirs: Vec<&Path> = vec![&inputs.spool_dir, &inputs.registry_dir];
        dirs.extend(inputs.audit_path.parent());
        for dir in dirs {
            // Failures surface later, where the directory is used (an
            // unwritable audit directory fails closed there).
            let _ = crate::paths::ensure_private_dir(dir);
        }
        inputs
    }
}

/// One filesystem grant: `access` beneath `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
    pub why: &'static str,
}

/// The master's Landlock rule set, before it meets the kernel.
#[derive(Debug, Clone)]
pub struct Plan {
    pub grants: Vec<Grant>,
    pub bind: Ports,
    pub connect: Ports,
    pub scope_abstract_sockets: bool,
}

/// Files name lookups read (getaddrinfo for forward targets, getpwuid and
/// getgrgid for peers' names). None of them is secret.
const NAME_SERVICE_FILES: [&str; 9] = [
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/etc/services",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
];

impl Plan {
    pub fn for_master(inputs: &Inputs) -> Plan {
        let read = AccessFs::ReadFile | AccessFs::ReadDir;
        let mut grants = Vec::new();
        let mut grant = |path: &Path, access: BitFlags<AccessFs>, why: &'static str| {
            grants.push(Grant {
                path: path.to_owned(),
                access,
                why,
            });
        };
        // The directory, not the file: editors replace a file with a new
        // one, and a rule follows the inode it was made for.
        for file in &inputs.policy_files {
            if let Some(dir) = file.parent() {
                grant(dir, AccessFs::ReadFile.into(), "policy file (live reload)");
            }
        }
        grant(Path::new("/proc"), read, "peer identity");
        for file in NAME_SERVICE_FILES {
            grant(Path::new(file), AccessFs::ReadFile.into(), "name lookups");
        }
        grant(
            Path::new("/dev/null"),
            AccessFs::ReadFile | AccessFs::WriteFile,
            "/dev/null",
        );
        grant(
            &inputs.spool_dir,
            AccessFs::ReadFile
                | AccessFs::WriteFile
                | AccessFs::MakeReg
                | AccessFs::RemoveFile
                | AccessFs::Truncate,
            "spill files",
        );
        grant(
            &inputs.state_dir,
            AccessFs::WriteFile | AccessFs::MakeReg,
            "the master's log",
        );
        if let Some(dir) = inputs.audit_path.parent() {
            grant(
                dir,
                AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::MakeReg,
                "audit log",
            );
        }
        grant(
            &inputs.registry_dir,
            AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::RemoveFile,
            "`muxguard ls` registry",
        );
        if let Some(dir) = inputs.control_path.parent() {
            grant(
                dir,
                AccessFs::MakeSock | AccessFs::RemoveFile,
                "control socket and Unix-socket forwards",
            );
        }
        Plan {
            grants,
            bind: inputs.forward_ports.bind.clone(),
            connect: inputs.forward_ports.connect.clone(),
            scope_abstract_sockets: !inputs.session_bus_is_abstract,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "filesystem (everything else denied, nothing executable):"
        )?;
        for g in &self.grants {
            let rights: Vec<String> = g
                .access
                .iter()
                .map(|a| format!("{a:?}").to_lowercase())
                .collect();
            writeln!(
                f,
                "  {}: {} ({})",
                g.path.display(),
                rights.join(" "),
                g.why
            )?;
        }
        writeln!(f, "tcp bind ports: {}", self.bind)?;
        writeln!(f, "tcp connect ports: {}", self.connect)?;
        write!(
            f,
            "scoped: signals{}",
            if self.scope_abstract_sockets {
                ", abstract unix sockets"
            } else {
                " (abstract unix sockets not scoped: the session bus address is abstract)"
            }
        )
    }
}

/// Whether one part of the Landlock sandbox is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Enforced,
    /// In force for some of what it covers; says which.
    Partly(String),
    /// Why not (the kernel's ABI is too old, the policy allows any port…).
    NotEnforced(String),
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Enforced => f.write_str("enforced"),
            Part::Partly(what) => write!(f, "partly enforced ({what})"),
            Part::NotEnforced(why) => write!(f, "NOT enforced ({why})"),
        }
    }
}

/// What Landlock enforced.
#[derive(Debug, Clone)]
pub enum Landlock {
    Applied {
        abi: ABI,
        fs: Part,
        net: Part,
        scope: Part,
    },
    /// The kernel has no Landlock, or it failed; nothing is enforced.
    Unavailable(String),
    /// `--no-sandbox`.
    Disabled,
}

impl fmt::Display for Landlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Landlock::Applied {
                abi,
                fs,
                net,
                scope,
            } => write!(f, "landlock ABI {abi}: fs {fs}, net {net}, scope {scope}"),
            Landlock::Unavailable(why) => write!(f, "landlock NOT enforced ({why})"),
            Landlock::Disabled => {
                f.write_str("SANDBOX DISABLED by --no-sandbox (debugging only): landlock off")
            }
        }
    }
}

/// What was enforced, in words for the log, the audit record and status.
#[derive(Debug, Clone)]
pub struct Report {
    pub landlock: Landlock,
    pub no_new_privs: bool,
    pub not_dumpable: bool,
    pub no_core_files: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on_off = |b: bool| if b { "on" } else { "FAILED" };
        write!(
            f,
            "{}; ptrace: {}; no_new_privs: {}; core dumps: {}",
            self.landlock,
            if self.not_dumpable {
                "blocked"
            } else {
                "NOT blocked"
            },
            on_off(self.no_new_privs),
            if self.no_core_files { "off" } else { "NOT off" },
        )
    }
}

/// Closes every descriptor above stderr that this process inherited, so a
/// launcher's pipes, sockets or files do not stay reachable from the master.
/// Must be called first thing (`muxguard::run` does), before this program opens any
/// descriptor of its own.
#[allow(unsafe_code)] // see the SAFETY comment inside
pub fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; it touches no memory. It
    // runs before this program has created any descriptor above 2 (first
    // thing in `muxguard::run`, after only argument parsing, one thread), so no Rust object owns one of the
    // descriptors closed, and none is used afterwards.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed != 0 {
        // Kernels before 5.9: walk the list instead. Collect first, as the
        // directory being read has a descriptor of its own.
        let inherited: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .filter(|&fd| fd > 2)
                    .collect()
            })
            .unwrap_or_default();
        for fd in inherited {
            // SAFETY: as above; the read_dir descriptor is already closed,
            // so closing its old number is a harmless EBADF.
            unsafe { libc::close(fd) };
        }
    }
}

/// The plan in force, once Landlock has applied it: lets the places where
/// the kernel says EACCES explain which rule said no.
static ACTIVE: OnceLock<Plan> = OnceLock::new();

/// Something the kernel refused with EACCES.
pub enum Refused<'a> {
    Bind(u16),
    Connect(u16),
    MakeSocket(&'a Path),
}

/// Why the sandbox refused `what`, in words for the client and the audit
/// log; `None` if no sandbox is in force or its rules allow `what` (then
/// something else refused it).
pub fn explain(what: Refused<'_>) -> Option<String> {
    let plan = ACTIVE.get()?;
    let ports = |ports: &Ports, verb: &str, port: u16| match ports {
        Ports::Only(set) if !set.contains(port) => Some(format!(
            "blocked by the sandbox: the master may {verb} only TCP ports {set} (what the \
             policy allowed forwards on when the master started; restart it after widening \
             the policy)"
        )),
        _ => None,
    };
    match what {
        Refused::Bind(port) => ports(&plan.bind, "listen on", port),
        Refused::Connect(port) => ports(&plan.connect, "connect to", port),
        Refused::MakeSocket(path) => {
            let allowed: Vec<&Path> = plan
                .grants
                .iter()
                .filter(|g| g.access.contains(AccessFs::MakeSock))
                .map(|g| g.path.as_path())
                .collect();
            (!allowed.iter().any(|dir| path.starts_with(dir))).then(|| {
                let dirs: Vec<String> = allowed.iter().map(|d| d.display().to_string()).collect();
                format!(
                    "blocked by the sandbox: the master may create sockets only in {}",
                    dirs.join(", ")
                )
            })
        }
    }
}

/// Whether to apply the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// `--no-sandbox`: no Landlock, and dumpable so a debugger can attach.
    Disabled,
}

/// Applies the hardening and the plan. Each step is reported and none is
/// fatal (a kernel that refuses one still gets the others); failures are
/// logged. Must run while the process has a single thread.
pub fn harden(plan: &Plan, mode: Mode) -> Report {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let no_new_privs = rustix::thread::set_no_new_privs(true)
        .inspect_err(|e| tracing::error!("PR_SET_NO_NEW_PRIVS failed: {e}"))
        .is_ok();
    let not_dumpable = mode == Mode::Enforce
        && rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)
            .inspect_err(|e| tracing::error!("PR_SET_DUMPABLE 0 failed: {e}"))
            .is_ok();
    let no_core_files = rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .inspect_err(|e| tracing::error!("RLIMIT_CORE 0 failed: {e}"))
    .is_ok();
    let landlock = match mode {
        Mode::Enforce => restrict(plan)
            .inspect(|applied| {
                if matches!(applied, Landlock::Applied { .. }) {
                    let _ = ACTIVE.set(plan.clone());
                }
            })
            .unwrap_or_else(|e| {
                tracing::error!("landlock: {e}");
                Landlock::Unavailable(e.to_string())
            }),
        Mode::Disabled => Landlock::Disabled,
    };
    Report {
        landlock,
        no_new_privs,
        not_dumpable,
        no_core_files,
    }
}

/// Applies the Landlock part of `plan` to this thread and its future
/// threads and children.
pub fn restrict(plan: &Plan) -> anyhow::Result<Landlock> {
    let fs_all = AccessFs::from_all(TARGET_ABI);
    let mut net_handled = BitFlags::<AccessNet>::empty();
    if matches!(plan.bind, Ports::Only(_)) {
        net_handled |= AccessNet::BindTcp;
    }
    if matches!(plan.connect, Ports::Only(_)) {
        net_handled |= AccessNet::ConnectTcp;
    }
    let mut scopes = BitFlags::from(Scope::Signal);
    if plan.scope_abstract_sockets {
        scopes |= Scope::AbstractUnixSocket;
    }
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(fs_all)?;
    if !net_handled.is_empty() {
        ruleset = ruleset.handle_access(net_handled)?;
    }
    let mut created = ruleset.scope(scopes)?.create()?;
    for g in &plan.grants {
        // A path that does not exist (no /etc/gai.conf) needs no rule.
        let Ok(fd) = PathFd::new(&g.path) else {
            continue;
        };
        // Directory-only rights on a file are an error for the kernel.
        let is_dir = g.path.is_dir();
        let access = if is_dir {
            g.access
        } else {
            g.access & AccessFs::from_file(TARGET_ABI)
        };
        created = created.add_rule(PathBeneath::new(fd, access))?;
    }
    for (ports, right) in [
        (&plan.bind, AccessNet::BindTcp),
        (&plan.connect, AccessNet::ConnectTcp),
    ] {
        if let Ports::Only(set) = ports {
            for port in set.ports() {
                created = created.add_rule(NetPort::new(port, right))?;
            }
        }
    }
    let status = created.restrict_self()?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi,
        LandlockStatus::NotEnabled => {
            return Ok(Landlock::Unavailable(
                "Landlock is built into this kernel but not enabled (boot with lsm=…,landlock)"
                    .into(),
            ));
        }
        LandlockStatus::NotImplemented => {
            return Ok(Landlock::Unavailable(
                "this kernel has no Landlock (Linux 5.13 or later is needed)".into(),
            ));
        }
    };
    if status.ruleset == RulesetStatus::NotEnforced {
        return Ok(Landlock::Unavailable(format!(
            "the kernel (ABI {abi}) enforced none of the rules"
        )));
    }
    let needs = |min: ABI, what: &str| {
        Part::NotEnforced(format!(
            "{what} needs Landlock ABI {min}, this kernel has {abi}"
        ))
    };
    let net = if abi < ABI::V4 {
        needs(ABI::V4, "TCP port control")
    } else {
        match (&plan.bind, &plan.connect) {
            (Ports::Any, Ports::Any) => Part::NotEnforced(
                "the policy can allow forwards on any port; name `ports` in its forward rules"
                    .into(),
            ),
            (Ports::Any, _) => Part::Partly(
                "connect limited; bind unlimited: the policy can allow -L/-D on any port".into(),
            ),
            (_, Ports::Any) => Part::Partly(
                "bind limited; connect unlimited: the policy can allow -R to any port".into(),
            ),
            _ => Part::Enforced,
        }
    };
    let scope = if abi < ABI::V6 {
        needs(ABI::V6, "signal and abstract-socket scoping")
    } else if plan.scope_abstract_sockets {
        Part::Enforced
    } else {
        Part::Partly("signals scoped; abstract sockets not: the session bus uses one".into())
    };
    Ok(Landlock::Applied {
        abi,
        fs: fs_part(abi),
        net,
        scope,
    })
}

/// What of the file-system rules an ABI enforces: truncation is covered
/// from ABI 3, ioctl on device files from ABI 5 (the rest from ABI 1).
fn fs_part(abi: ABI) -> Part {
    if abi < ABI::V3 {
        Part::Partly(format!(
            "truncating files and ioctl on devices are not restricted: they need Landlock ABI 3 and 5, this kernel has {abi}"
        ))
    } else if abi < ABI::V5 {
        Part::Partly(format!(
            "ioctl on devices is not restricted: it needs Landlock ABI 5, this kernel has {abi}"
        ))
    } else {
        Part::Enforced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fs_report_says_what_an_old_abi_leaves_open() {
        for (abi, expected) in [
            (ABI::V1, Some("truncating files")),
            (ABI::V2, Some("truncating files")),
            (ABI::V3, Some("ioctl on devices is not")),
            (ABI::V4, Some("ioctl on devices is not")),
            (ABI::V5, None),
            (ABI::V6, None),
        ] {
            let text = fs_part(abi).to_string();
            match expected {
                Some(gap) => assert!(
                    text.starts_with("partly enforced") && text.contains(gap),
                    "{abi}: {text}"
                ),
                None => assert_eq!(text, "enforced", "{abi}"),
            }
        }
    }
}
