//! The tools people run over a shared connection: scp, sftp, rsync, git.
//! Each scenario ends with sshd having seen exactly one authenticated
//! connection: the master's, so everything went through it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{HOST, MasterKind, TestEnv, for_both_masters, run, write_random};

for_both_masters!(
    scp_both_ways,
    sftp_batch,
    rsync_both_ways,
    git_clone_and_push
);

fn scp_both_ways(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let work = env.work_dir();
    let local = work.join("local.bin");
    write_random(&local, 3 * 1024 * 1024 + 17);
    let config = env.config_path();

    // 9.2's default SFTP mode up, the legacy scp protocol (-O) down.
    let remote = work.join("remote.bin");
    run(env
        .command("scp")
        .arg("-q")
        .arg("-F")
        .arg(&config)
        .arg(&local)
        .arg(format!("{HOST}:{}", remote.display())))
    .assert_success("scp upload");
    assert_same_file(&local, &remote);

    let back = work.join("back.bin");
    run(env
        .command("scp")
        .args(["-q", "-O", "-F"])
        .arg(&config)
        .arg(format!("{HOST}:{}", remote.display()))
        .arg(&back))
    .assert_success("scp -O download");
    assert_same_file(&local, &back);
    env.assert_connections(1);
}

fn sftp_batch(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let work = env.work_dir();
    let local = work.join("local.bin");
    write_random(&local, 2 * 1024 * 1024 + 5);
    let remote_dir = work.join("remote");
    let back = work.join("back.bin");
    let batch = env.path().join("sftp.batch");
    fs::write(
        &batch,
        format!(
            "mkdir {dir}\nput {local} {dir}/file.bin\nls -l {dir}\nget {dir}/file.bin {back}\n",
            dir = remote_dir.display(),
            local = local.display(),
            back = back.display()
        ),
    )
    .expect("write batch file");

    let out = run(env
        .command("sftp")
        .arg("-F")
        .arg(env.config_path())
        .arg("-b")
        .arg(&batch)
        .arg(HOST));
    out.assert_success("sftp -b");
    assert!(out.stdout.contains("file.bin"), "ls output: {out:#?}");
    assert_same_file(&local, &remote_dir.join("file.bin"));
    assert_same_file(&local, &back);
    env.assert_connections(1);
}

fn rsync_both_ways(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let work = env.work_dir();
    let source = work.join("source");
    fs::create_dir_all(source.join("sub/deeper")).expect("mkdir");
    write_random(&source.join("a.bin"), 1024 * 1024);
    write_random(&source.join("sub/b.bin"), 70_000);
    fs::write(source.join("sub/deeper/c.txt"), "small text\n").expect("write");
    let rsh = format!("ssh -F {}", env.config_path().display());

    let remote = work.join("remote");
    run(env
        .command("rsync")
        .args(["-a", "-e", &rsh])
        .arg(format!("{}/", source.display()))
        .arg(format!("{HOST}:{}/", remote.display())))
    .assert_success("rsync upload");
    assert_same_tree(&source, &remote);

    let back = work.join("back");
    run(env
        .command("rsync")
        .args(["-a", "-e", &rsh])
        .arg(format!("{HOST}:{}/", remote.display()))
        .arg(format!("{}/", back.display())))
    .assert_success("rsync download");
    assert_same_tree(&source, &back);
    env.assert_connections(1);
}

fn git_clone_and_push(kind: MasterKind) {
    let env = TestEnv::new();
    let _master = env.start_master(kind);
    let work = env.work_dir();
    let git = |dir: &Path, args: &[&str]| {
        let out = run(env
            .command("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@example.invalid",
            ])
            .args(args)
            .env(
                "GIT_SSH_COMMAND",
                format!("ssh -F {}", env.config_path().display()),
            ));
        out.assert_success(&format!("git {args:?}"));
        out.stdout.trim().to_owned()
    };

    let seed = work.join("seed");
    fs::create_dir(&seed).expect("mkdir");
    git(&seed, &["init", "-q", "-b", "main"]);
    fs::write(seed.join("README"), "first version\n").expect("write");
    git(&seed, &["add", "README"]);
    git(&seed, &["commit", "-q", "-m", "first"]);
    let bare = work.join("repo.git");
    git(&work, &["clone", "-q", "--bare", "seed", "repo.git"]);

    let url = format!("{HOST}:{}", bare.display());
    git(&work, &["clone", "-q", &url, "clone"]);
    let clone = work.join("clone");
    assert_eq!(
        fs::read_to_string(clone.join("README")).expect("read"),
        "first version\n"
    );
    assert_eq!(
        git(&clone, &["rev-parse", "HEAD"]),
        git(&seed, &["rev-parse", "HEAD"])
    );

    fs::write(clone.join("README"), "second version\n").expect("write");
    git(&clone, &["commit", "-q", "-a", "-m", "second"]);
    git(&clone, &["push", "-q", "origin", "main"]);
    assert_eq!(
        git(&bare, &["rev-parse", "main"]),
        git(&clone, &["rev-parse", "HEAD"])
    );
    env.assert_connections(1);
}

#[track_caller]
fn assert_same_file(expected: &Path, actual: &Path) {
    let want = fs::read(expected).expect("read expected file");
    let got = fs::read(actual).unwrap_or_else(|e| panic!("read {}: {e}", actual.display()));
    assert!(
        want == got,
        "{} ({} bytes) differs from {} ({} bytes)",
        actual.display(),
        got.len(),
        expected.display(),
        want.len()
    );
}

#[track_caller]
fn assert_same_tree(expected: &Path, actual: &Path) {
    let (want, got) = (tree(expected), tree(actual));
    assert!(
        want == got,
        "{} differs from {}: files {:?} vs {:?}",
        actual.display(),
        expected.display(),
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
}

/// Every file below `root`, by relative path, with its contents.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("below root").to_owned();
                files.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    files
}
