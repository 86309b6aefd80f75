//! Local accounts for tests that need a second user: as root, a test sees
//! nothing of what file modes, SO_PEERCRED and ptrace rules do to others.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// The unprivileged account of the tests.
pub const TEST_USER: &str = "muxguard-test";

/// A user and its primary group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Whether the tests run as root (needed to act as anyone else).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// [`TEST_USER`], created if missing (CI creates it in advance).
pub fn test_user() -> Account {
    let id = |flag: &str| {
        let out = Command::new("id")
            .args([flag, TEST_USER])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .ok()
    };
    if id("-u").is_none() {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                TEST_USER,
            ])
            .status()
            .expect("useradd");
        assert!(made.success() || id("-u").is_some(), "useradd {TEST_USER}");
    }
    Account {
        uid: id("-u").expect("uid"),
        gid: id("-g").expect("gid"),
    }
}

/// The name of `account`'s primary group.
pub fn group_name(account: Account) -> String {
    let out = Command::new("getent")
        .args(["group", &account.gid.to_string()])
        .output()
        .expect("getent group");
    let line = String::from_utf8_lossy(&out.stdout);
    let name = line.split(':').next().unwrap_or_default().trim();
    assert!(!name.is_empty(), "gid {} has no group name", account.gid);
    name.to_owned()
}

/// Makes `cmd` run as `account` (with no supplementary groups: std drops
/// them when root changes uid).
pub fn as_user(cmd: &mut Command, account: Account) -> &mut Command {
    cmd.uid(account.uid).gid(account.gid)
}
