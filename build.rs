//! Names the build in `muxguard --version`: the git commit it was built
//! from (with `-dirty` for uncommitted changes), or `unknown` outside a
//! git checkout (a crate tarball).

use std::process::Command;

fn main() {
    let described = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MUXGUARD_BUILD={described}");
    // A checkout changes HEAD, a commit the ref it names, an edit the index.
    for path in [".git/HEAD", ".git/index", ".git/refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
