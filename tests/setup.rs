//! `muxguard setup` against the real binary, with HOME in a temp dir: it
//! shows the block and changes nothing unless told to append; appending
//! keeps the old bytes and a backup, creates the directories privately,
//! and happens once; files others could write (or links) are refused; and
//! the block it writes works in the real ssh — `ssh -G` runs its Match exec
//! and picks up the ControlPath exactly when `muxguard ensure` succeeds, and
//! against a real sshd it starts one master that later ssh runs share.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::env::{command_in, set_mode};
use common::{HOST, TestEnv, run};

const MUXGUARD: &str = env!("CARGO_BIN_EXE_muxguard");

/// A temp dir with an empty `home` and the XDG directories
/// [`command_in`] points at.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("mg")
            .tempdir()
            .expect("temp dir");
        for sub in ["home", "run", "state", "config"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        set_mode(&dir.path().join("run"), 0o700);
        Home { dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn ssh_dir(&self) -> PathBuf {
        self.home().join(".ssh")
    }

    fn config(&self) -> PathBuf {
        self.ssh_dir().join("config")
    }

    /// `~/.ssh/config` with this content and mode, in a 0700 `~/.ssh`.
    fn write_config(&self, content: &[u8], mode: u32) -> PathBuf {
        fs::create_dir_all(self.ssh_dir()).expect("mkdir .ssh");
        set_mode(&self.ssh_dir(), 0o700);
        fs::write(self.config(), content).expect("write config");
        set_mode(&self.config(), mode);
        self.config()
    }

    fn setup(&self, args: &[&str]) -> common::process::Output {
        run(command_in(self.dir.path(), MUXGUARD)
            .arg("setup")
            .args(args))
    }

    fn command(&self, program: &str) -> Command {
        command_in(self.dir.path(), program)
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").mode() & 0o7777
}

fn backup_of(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.muxguard-backup", file.display()))
}

/// The `controlpath` line of `ssh -G`, if it printed one.
fn control_path(ssh_g: &str) -> Option<String> {
    ssh_g
        .lines()
        .find_map(|l| l.strip_prefix("controlpath "))
        .map(str::to_owned)
}

#[test]
fn print_mode_shows_the_block_and_changes_nothing() {
    let home = Home::new();
    let old = b"Host a\n    User b";
    let file = home.write_config(old, 0o600);
    let out = home.setup(&[]);
    out.assert_success("muxguard setup");
    assert!(
        out.stdout.contains(&format!(
            "Match exec \"{MUXGUARD} ensure -p %p -l %r %n\"\n    ControlPath {}/%C\n    ControlMaster no\n",
            home.ssh_dir().join("muxguard").display()
        )),
        "{out:#?}"
    );
    assert!(
        out.stdout.starts_with("# added by muxguard setup"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains(&format!("end of {}", file.display())),
        "{out:#?}"
    );
    assert!(out.stderr.contains("Nothing has been changed"), "{out:#?}");
    assert_eq!(fs::read(&file).unwrap(), old);
    assert!(!backup_of(&file).exists());
    assert!(!home.ssh_dir().join("muxguard").exists());

    // Without even a ~/.ssh, nothing is created either.
    let empty = Home::new();
    let out = empty.setup(&[]);
    out.assert_success("muxguard setup without ~/.ssh");
    assert!(out.stderr.contains("would create"), "{out:#?}");
    assert!(!empty.ssh_dir().exists());
}

#[test]
fn append_keeps_the_file_adds_the_block_and_a_backup() {
    let home = Home::new();
    let old = b"Host a\n    User b";
    let file = home.write_config(old, 0o644);
    let out = home.setup(&["--append"]);
    out.assert_success("muxguard setup --append");
    let mut expected = old.to_vec();
    expected.extend_from_slice(b"\n\n");
    expected.extend_from_slice(out.stdout.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&file).unwrap()),
        String::from_utf8_lossy(&expected),
        "the old bytes, a line break, a blank line and the block shown"
    );
    assert_eq!(mode(&file), 0o644, "the file keeps its mode");
    let backup = backup_of(&file);
    assert_eq!(fs::read(&backup).unwrap(), old);
    assert_eq!(mode(&backup), 0o600);
    assert_eq!(mode(&home.ssh_dir().join("muxguard")), 0o700);
    assert!(out.stderr.contains("appended the block"), "{out:#?}");

    // From nothing: both directories, and a file of the block alone.
    let empty = Home::new();
    let out = empty.setup(&["--append"]);
    out.assert_success("muxguard setup --append without ~/.ssh");
    assert_eq!(mode(&empty.ssh_dir()), 0o700);
    assert_eq!(mode(&empty.ssh_dir().join("muxguard")), 0o700);
    assert_eq!(mode(&empty.config()), 0o600);
    assert_eq!(fs::read_to_string(empty.config()).unwrap(), out.stdout);
    assert!(!backup_of(&empty.config()).exists());
}

#[test]
fn a_second_append_refuses_and_leaves_the_file_alone() {
    let home = Home::new();
    let file = home.write_config(b"Host a\n", 0o600);
    home.setup(&["--append"]).assert_success("first --append");
    let after_first = fs::read(&file).unwrap();
    let again = home.setup(&["--append"]);
    assert!(!again.status.success(), "{again:#?}");
    assert!(again.stderr.contains("already has"), "{again:#?}");
    assert_eq!(fs::read(&file).unwrap(), after_first);
    assert!(!PathBuf::from(format!("{}.1", backup_of(&file).display())).exists());

    // A block written by hand, as the README once said, counts too.
    let hand = Home::new();
    let text =
        b"Match exec \"muxguard ensure -p %p -l %r %n\"\n    ControlPath ~/.ssh/muxguard/%C\n";
    let file = hand.write_config(text, 0o600);
    let out = hand.setup(&["--append"]);
    assert!(!out.status.success(), "{out:#?}");
    assert!(out.stderr.contains("line 1"), "{out:#?}");
    assert_eq!(fs::read(&file).unwrap(), text);
}

#[test]
fn files_others_could_write_and_links_are_refused() {
    let old = b"Host a\n";
    let refused = |home: &Home, file: &Path, expect: &str| {
        let out = home.setup(&["--append"]);
        assert!(!out.status.success(), "{out:#?}");
        assert!(out.stderr.contains(expect), "{out:#?}");
        assert_eq!(fs::read(file).unwrap(), old);
        assert!(!backup_of(file).exists());
    };

    let home = Home::new();
    let file = home.write_config(old, 0o664);
    refused(&home, &file, "writable by others");

    let home = Home::new();
    let file = home.write_config(old, 0o600);
    set_mode(&home.ssh_dir(), 0o775);
    refused(&home, &file, "writable by others");

    let home = Home::new();
    fs::create_dir(home.ssh_dir()).unwrap();
    set_mode(&home.ssh_dir(), 0o700);
    let target = home.home().join("dotfiles-ssh-config");
    fs::write(&target, old).unwrap();
    set_mode(&target, 0o600);
    std::os::unix::fs::symlink(&target, home.config()).unwrap();
    refused(&home, &target, "symbolic link");
    // Named directly once checked, the link's target is taken; since
    // ~/.ssh/config leads to it, ssh reads it without -F.
    let out = home.setup(&["--append", "--config", target.to_str().unwrap()]);
    out.assert_success("setup --append --config <the link's target>");
    assert!(!out.stdout.contains(" -F "), "{out:#?}");
    assert!(fs::read(&target).unwrap().starts_with(old));

    // The system-wide file would give every user this user's block.
    let out = Home::new().setup(&["--config", "/etc/ssh/ssh_config"]);
    assert!(!out.status.success(), "{out:#?}");
    assert!(out.stderr.contains("every user"), "{out:#?}");

    if common::accounts::running_as_root() {
        let home = Home::new();
        let file = home.write_config(old, 0o600);
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        refused(&home, &file, "owned by uid 65534");
    } else {
        eprintln!("skipped the other owner's file: needs root to chown");
    }
}

#[test]
fn ssh_runs_the_block_and_uses_it_only_when_ensure_succeeds() {
    let home = Home::new();
    // A file given to ssh with -F: ensure must read it too.
    let file = home.dir.path().join("ssh_config");
    fs::write(
        &file,
        "Host dead\n    HostName 127.0.0.1\n    Port 1\n    BatchMode yes\n",
    )
    .unwrap();
    set_mode(&file, 0o600);
    let out = home.setup(&["--append", "--config", file.to_str().unwrap()]);
    out.assert_success("setup --append --config");
    let text = fs::read_to_string(&file).unwrap();
    let match_line = format!(
        "Match exec \"{MUXGUARD} ensure -F {} -p %p -l %r %n\"",
        file.display()
    );
    assert!(text.contains(&match_line), "{text}");

    let ssh_g = |nested: bool| {
        let mut cmd = home.command("ssh");
        if nested {
            cmd.env("MUXGUARD_NESTED", "1");
        }
        let out = run(cmd.arg("-G").arg("-F").arg(&file).arg("dead"));
        out.assert_success("ssh -G with the written file");
        control_path(&out.stdout)
    };
    // A nested ensure succeeds without doing anything: the Match holds
    // and ssh takes the block's ControlPath.
    let dir = home.ssh_dir().join("muxguard");
    let path = ssh_g(true).expect("a controlpath once ensure succeeds");
    let name = path
        .strip_prefix(&format!("{}/", dir.display()))
        .unwrap_or_else(|| panic!("{path} is not in {}", dir.display()));
    assert_eq!(name.len(), 40, "%C expanded: {path}");
    // Nothing listens on port 1, so ensure cannot start a master and
    // fails; ssh then skips the block and would connect on its own.
    assert_eq!(ssh_g(false), None);
}

#[test]
fn the_written_block_starts_one_master_that_ssh_shares() {
    if !common::selected(common::MasterKind::Muxguard) {
        return;
    }
    let env = TestEnv::new();
    // The harness's client settings for the test server, without their
    // ControlPath: the block's is to take effect.
    let config = env.path().join("ssh_config_setup");
    let base: String = fs::read_to_string(env.config_path())
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("ControlPath"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&config, base).unwrap();
    set_mode(&config, 0o600);
    let _cleanup = common::master::ExitOnDrop {
        env: &env,
        config: config.clone(),
    };
    run(env
        .command(MUXGUARD)
        .args(["setup", "--append", "--config"])
        .arg(&config))
    .assert_success("setup --append");

    let ssh_g = run(env
        .command("ssh")
        .arg("-G")
        .arg("-F")
        .arg(&config)
        .arg(HOST));
    ssh_g.assert_success("ssh -G");
    let dir = env.path().join("home/.ssh/muxguard");
    let path = control_path(&ssh_g.stdout).expect("ssh -G gives the block's controlpath");
    assert!(
        Path::new(&path).starts_with(&dir),
        "{path} is not in {}",
        dir.display()
    );
    for round in 0..2 {
        let out = run(env
            .command("ssh")
            .arg("-F")
            .arg(&config)
            .args([HOST, &format!("echo round-{round}")]));
        out.assert_success("ssh through the block");
        assert_eq!(out.stdout.trim(), format!("round-{round}"));
    }
    assert!(
        Path::new(&path).exists(),
        "no master listens on {path}: {:?}",
        fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    // The one login is the master's: both ssh runs went through it.
    env.assert_connections(1);
}
