//! The ssh_config block `muxguard setup` writes, without any I/O: its text,
//! whether a file already has one, and the file's new content. Kept apart
//! from the file handling so every rule about what goes into a user's
//! ssh_config is checked by unit tests.

use std::path::Path;

use anyhow::bail;

use crate::paths::{SUN_PATH_MAX, TEMP_SUFFIX_LEN};

/// The first line of every block. A file holding it already has the block,
/// which makes a second `--append` refuse instead of adding another.
pub const MARKER: &str = "# added by muxguard setup";

/// `%C` is the hex SHA-1 of the connection's endpoints: always 40 bytes.
const PERCENT_C_LEN: usize = 40;

/// What goes into the block.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec<'a> {
    /// The muxguard binary ssh runs (an absolute path).
    pub muxguard: &'a Path,
    /// `-F FILE` for ensure, when the block goes into a file ssh is given
    /// with `-F` rather than the one it reads by itself: the `ssh -G` that
    /// ensure runs must see the same configuration as the ssh that ran it.
    pub config_flag: Option<&'a Path>,
    /// The directory of the control sockets (an absolute path).
    pub control_dir: &'a Path,
}

/// The block, ready to append: comment lines, then the Match.
pub fn block(spec: &BlockSpec<'_>) -> anyhow::Result<String> {
    let muxguard = plain(spec.muxguard, "the muxguard binary")?;
    let control_dir = plain(spec.control_dir, "the control socket directory")?;
    let longest = control_dir.len() + 1 + PERCENT_C_LEN;
    if longest + TEMP_SUFFIX_LEN > SUN_PATH_MAX {
        bail!(
            "the control sockets would be {control_dir}/<40 hex digits>, {longest} bytes, and Unix \
             socket paths allow at most {} here; write the block by hand with a shorter \
             ControlPath (for example in /run/user/UID)",
            SUN_PATH_MAX - TEMP_SUFFIX_LEN
        );
    }
    let config = match spec.config_flag {
        Some(file) => format!("-F {} ", plain(file, "the ssh_config file")?),
        None => String::new(),
    };
    Ok(format!(
        "{MARKER}: before each connection ssh runs muxguard ensure,\n\
         # which starts a shared master if none is running; if that fails, ssh\n\
         # skips this block and connects on its own. Keep it last: lines after\n\
         # it apply only when the Match does. To undo, delete these lines.\n\
         Match exec \"{muxguard} ensure {config}-p %p -l %r %n\"\n\
         \x20   ControlPath {control_dir}/%C\n\
         \x20   ControlMaster no\n"
    ))
}

/// A path written into the block as is. It ends up inside a quoted
/// ssh_config word, then in a `sh -c` command line, and ssh expands `%`
/// tokens in both ControlPath and the command: rather than quote for all
/// three, only paths that need no quoting anywhere are accepted.
fn plain<'p>(path: &'p Path, what: &str) -> anyhow::Result<&'p str> {
    let Some(text) = path.to_str() else {
        bail!(
            "{what} ({}) is not valid UTF-8; write the block by hand",
            path.display()
        );
    };
    if !text.starts_with('/') {
        bail!("{what} ({text}) is not an absolute path");
    }
    if let Some(bad) = text
        .chars()
        .find(|&c| !(c.is_alphanumeric() || "/._-+@,".contains(c)))
    {
        bail!(
            "{what} ({text}) contains {bad:?}, which ssh_config or the shell would read \
             specially; move it to a plainer path, or write the block by hand"
        );
    }
    Ok(text)
}

/// Where a file already has a muxguard block.
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    /// The marker of an earlier `muxguard setup`, on this line (from 1).
    Marker { line: usize },
    /// A `Match exec` running `muxguard ensure` written by hand (as the
    /// README once told), on this line.
    HandWritten { line: usize },
}

/// The first muxguard block in `content`, if any.
pub fn existing(content: &[u8]) -> Option<Existing> {
    content
        .split(|&b| b == b'\n')
        .enumerate()
        .find_map(|(index, raw)| {
            let line = raw.trim_ascii();
            if line.starts_with(MARKER.as_bytes()) {
                return Some(Existing::Marker { line: index + 1 });
            }
            let lower = line.to_ascii_lowercase();
            let has = |w: &[u8]| lower.windows(w.len()).any(|x| x == w);
            (lower.starts_with(b"match") && has(b"exec") && has(b"muxguard") && has(b"ensure"))
                .then_some(Existing::HandWritten { line: index + 1 })
        })
}

/// `content` followed by the block: the old bytes unchanged, then a line
/// break if the last line had none, a blank line to set the block apart,
/// and the block.
pub fn appended(content: &[u8], block: &str) -> Vec<u8> {
    let mut new = content.to_vec();
    if !new.is_empty() {
        if !new.ends_with(b"\n") {
            new.push(b'\n');
        }
        if !new.ends_with(b"\n\n") && new != b"\n" {
            new.push(b'\n');
        }
    }
    new.extend_from_slice(block.as_bytes());
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(muxguard: &'a str, config: Option<&'a str>, dir: &'a str) -> BlockSpec<'a> {
        BlockSpec {
            muxguard: Path::new(muxguard),
            config_flag: config.map(Path::new),
            control_dir: Path::new(dir),
        }
    }

    #[test]
    fn the_block_runs_ensure_with_ssh_tokens() {
        let text = block(&spec("/usr/bin/muxguard", None, "/home/al/.ssh/muxguard")).unwrap();
        assert!(text.starts_with(MARKER), "{text}");
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "Match exec \"/usr/bin/muxguard ensure -p %p -l %r %n\"",
                "    ControlPath /home/al/.ssh/muxguard/%C",
                "    ControlMaster no",
            ]
        );
        assert!(text.ends_with('\n'));
        assert_eq!(
            existing(text.as_bytes()),
            Some(Existing::Marker { line: 1 })
        );
    }

    #[test]
    fn another_file_is_passed_on_to_ensure() {
        let text = block(&spec(
            "/opt/mg/muxguard",
            Some("/home/al/work.conf"),
            "/home/al/.ssh/muxguard",
        ))
        .unwrap();
        assert!(
            text.contains(
                "Match exec \"/opt/mg/muxguard ensure -F /home/al/work.conf -p %p -l %r %n\"\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn paths_that_would_need_quoting_are_refused() {
        for bad in [
            "/home/a b/muxguard",
            "/home/100%/muxguard",
            "/home/x\"y/muxguard",
            "/home/$USER/muxguard",
            "/home/x;y/muxguard",
            "relative/muxguard",
        ] {
            let error = block(&spec(bad, None, "/home/al/.ssh/muxguard")).unwrap_err();
            assert!(
                error.to_string().contains("muxguard binary"),
                "{bad}: {error}"
            );
        }
        let error = block(&spec(
            "/usr/bin/muxguard",
            Some("/home/al/my config"),
            "/home/al/.ssh/muxguard",
        ))
        .unwrap_err();
        assert!(error.to_string().contains("ssh_config file"), "{error}");
        assert!(
            block(&spec(
                "/home/jos\u{e9}/bin/muxguard",
                None,
                "/home/al/.ssh/muxguard"
            ))
            .is_ok()
        );
    }

    #[test]
    fn a_control_dir_too_long_for_sockets_is_refused() {
        let dir = format!("/home/{}/.ssh/muxguard", "x".repeat(40));
        let error = block(&spec("/usr/bin/muxguard", None, &dir)).unwrap_err();
        assert!(error.to_string().contains("shorter"), "{error}");
        // The longest that fits: the socket's name and the temporary suffix
        // just reach sun_path's limit.
        let fits = format!("/{}", "x".repeat(SUN_PATH_MAX - TEMP_SUFFIX_LEN - 42));
        assert!(block(&spec("/usr/bin/muxguard", None, &fits)).is_ok());
        let one_more = format!("{fits}x");
        assert!(block(&spec("/usr/bin/muxguard", None, &one_more)).is_err());
    }

    #[test]
    fn earlier_blocks_are_found_by_marker_or_by_their_match() {
        assert_eq!(existing(b""), None);
        assert_eq!(
            existing(b"Host a\n  User b\n\n  # added by muxguard setup: x\nMatch exec \"x\"\n"),
            Some(Existing::Marker { line: 4 })
        );
        assert_eq!(
            existing(b"Host a\nMATCH Exec \"muxguard ensure -p %p -l %r %n\"\n"),
            Some(Existing::HandWritten { line: 2 })
        );
        assert_eq!(
            existing(b"# Match exec \"muxguard ensure\" (commented out)\nHost muxguard-ensure\n"),
            None
        );
        assert_eq!(existing(b"\xff\xfe binary\nHost x\n"), None);
    }

    #[test]
    fn the_old_content_is_kept_byte_for_byte() {
        let block = "B\n";
        assert_eq!(appended(b"", block), b"B\n");
        assert_eq!(appended(b"\n", block), b"\nB\n");
        assert_eq!(appended(b"Host a", block), b"Host a\n\nB\n");
        assert_eq!(appended(b"Host a\n", block), b"Host a\n\nB\n");
        assert_eq!(appended(b"Host a\n\n", block), b"Host a\n\nB\n");
        assert_eq!(appended(b"Host a\r\n", block), b"Host a\r\n\nB\n");
        let odd = b"Host \xff\n\tUser x  \n";
        assert!(appended(odd, block).starts_with(odd));
    }
}
