//! `scripts/build-deb.sh` builds a package dpkg accepts, with everything in
//! its place, owned by root, with the modes Debian expects — and what it
//! installs works: the binary runs, the manual page is a page, the bash
//! completion is valid bash.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::run;

const MUXGUARD: &str = env!("CARGO_BIN_EXE_muxguard");

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// `dpkg-deb --contents`: path (without the leading `.`) -> (mode, owner).
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let out = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    out.assert_success("dpkg-deb --contents");
    out.stdout
        .lines()
        .map(|line| {
            // -rw-r--r-- root/root  1234 2026-12-03 10:00 ./usr/bin/muxguard
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "odd line {line:?}");
            let path = fields[5].trim_start_matches('.').to_owned();
            (path, (fields[0].to_owned(), fields[1].to_owned()))
        })
        .collect()
}

#[test]
fn the_debian_package_installs_a_working_muxguard() {
    if !have("dpkg-deb") {
        eprintln!("skipped: dpkg-deb is not installed (it comes with dpkg on Debian)");
        return;
    }
    let out_dir = tempfile::tempdir().expect("temp dir");
    let built = run(Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-deb.sh"))
        .arg(out_dir.path())
        .env("MUXGUARD_BIN", MUXGUARD)
        // xz takes over a minute on a debug binary; what is checked here is
        // the layout, not dpkg-deb's compressor.
        .env("DPKG_DEB_COMPRESSOR_TYPE", "none")
        .env("DEBFULLNAME", "Package Test")
        .env("DEBEMAIL", "package-test@example.invalid"));
    built.assert_success("scripts/build-deb.sh");
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    arch.assert_success("dpkg --print-architecture");
    let arch = arch.stdout.trim();
    let version = env!("CARGO_PKG_VERSION");
    let deb = out_dir
        .path()
        .join(format!("muxguard_{version}_{arch}.deb"));
    assert_eq!(built.stdout.trim(), deb.display().to_string(), "{built:#?}");

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    info.assert_success("dpkg-deb --info");
    for field in [
        "Package: muxguard".to_owned(),
        format!("Version: {version}"),
        format!("Architecture: {arch}"),
        "Maintainer: Package Test <package-test@example.invalid>".to_owned(),
        "Recommends: dbus".to_owned(),
        "Section: net".to_owned(),
        "Priority: optional".to_owned(),
        "Description: ".to_owned(),
        "Installed-Size: ".to_owned(),
    ] {
        assert!(
            info.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&field)),
            "no {field:?} in:\n{}",
            info.stdout
        );
    }
    let depends = info
        .stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends in:\n{}", info.stdout));
    assert!(depends.contains("openssh-client"), "{depends}");
    assert!(depends.contains("libc6 (>= 2."), "{depends}");

    let files = contents(&deb);
    let mut expected: Vec<String> = [
        "/usr/bin/muxguard",
        "/usr/share/man/man1/muxguard.1.gz",
        "/usr/share/man/man1/muxguard-connect.1.gz",
        "/usr/share/man/man1/muxguard-setup.1.gz",
        "/usr/share/bash-completion/completions/muxguard",
        "/usr/share/zsh/vendor-completions/_muxguard",
        "/usr/share/fish/vendor_completions.d/muxguard.fish",
        "/usr/share/doc/muxguard/copyright",
        "/usr/share/doc/muxguard/changelog.Debian.gz",
        "/usr/share/doc/muxguard/README.md",
        "/usr/share/doc/muxguard/SECURITY.md",
        "/usr/share/doc/muxguard/docs/architecture.md",
    ]
    .map(str::to_owned)
    .to_vec();
    let policies = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policy"))
        .expect("policy/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"));
    expected.extend(policies.map(|name| format!("/usr/share/doc/muxguard/examples/{name}")));
    for path in &expected {
        assert!(
            files.contains_key(path),
            "{path} is not in the package: {files:#?}"
        );
    }
    for (path, (mode, owner)) in &files {
        assert_eq!(owner, "root/root", "{path}");
        let want = if mode.starts_with('d') {
            "drwxr-xr-x"
        } else if path == "/usr/bin/muxguard" {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want, "{path}");
    }

    let root = tempfile::tempdir().expect("temp dir");
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&deb)
        .arg(root.path()))
    .assert_success("dpkg-deb --extract");
    let file = |path: &str| root.path().join(path.trim_start_matches('/'));

    let version_out = run(Command::new(file("/usr/bin/muxguard")).arg("--version"));
    version_out.assert_success("the packaged muxguard --version");
    assert!(
        version_out
            .stdout
            .starts_with(&format!("muxguard {version} (")),
        "{version_out:#?}"
    );

    // Stripped: the build's DWARF sections stay out of the package (the
    // build script strips when binutils is there, as it is wherever cargo
    // links; readelf comes with it).
    if have("strip") && have("readelf") {
        let sections = run(Command::new("readelf")
            .args(["-S", "-W"])
            .arg(file("/usr/bin/muxguard")));
        sections.assert_success("readelf -S on the packaged binary");
        for dwarf in [".debug_info", ".debug_line", ".debug_str"] {
            assert!(
                !sections.stdout.contains(dwarf),
                "the packaged binary keeps {dwarf}:\n{}",
                sections.stdout
            );
        }
    }

    let changelog = run(Command::new("gzip")
        .arg("-dc")
        .arg(file("/usr/share/doc/muxguard/changelog.Debian.gz")));
    changelog.assert_success("gzip -dc changelog.Debian.gz");
    assert!(
        changelog
            .stdout
            .starts_with(&format!("muxguard ({version}) unstable; urgency=medium\n")),
        "{}",
        changelog.stdout
    );
    assert!(changelog.stdout.contains("\n -- "), "{}", changelog.stdout);

    let page = run(Command::new("gzip")
        .arg("-dc")
        .arg(file("/usr/share/man/man1/muxguard.1.gz")));
    page.assert_success("gzip -dc muxguard.1.gz");
    // clap_mangen opens with the `Aq` string definition (.ie/.el), then
    // the title: the first request after those must be .TH.
    let first = page
        .stdout
        .lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap_or_default();
    assert!(first.starts_with(".TH muxguard 1"), "{}", page.stdout);

    run(Command::new("bash")
        .arg("-n")
        .arg(file("/usr/share/bash-completion/completions/muxguard")))
    .assert_success("bash -n on the packaged completion");
}
