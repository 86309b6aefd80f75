//! Wildcard patterns: `*` (any run) and `?` (any one), as ssh_config,
//! known_hosts and the policy files write them. One matcher for all three;
//! they differ only in [`Rules`] and in what a unit is (ssh compares bytes,
//! as OpenSSH's `match_pattern` does; the policy compares characters).
//!
//! The matcher keeps the set of text prefixes the pattern read so far can
//! match, one token at a time: linear in pattern length times text length,
//! with none of the exponential backtracking a naive recursive matcher has
//! on hostile patterns like `*a*a*a*a*b`.
//!
//! Pure: no I/O.

/// What a pattern is made of: bytes or characters.
pub trait Unit: Copy + Eq + 'static {
    const STAR: Self;
    const ONE: Self;
    fn eq_ignore_ascii_case(self, other: Self) -> bool;
}

impl Unit for u8 {
    const STAR: u8 = b'*';
    const ONE: u8 = b'?';
    fn eq_ignore_ascii_case(self, other: u8) -> bool {
        u8::eq_ignore_ascii_case(&self, &other)
    }
}

impl Unit for char {
    const STAR: char = '*';
    const ONE: char = '?';
    fn eq_ignore_ascii_case(self, other: char) -> bool {
        char::eq_ignore_ascii_case(&self, &other)
    }
}

/// How one kind of pattern is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules<T: 'static> {
    /// Host names: ASCII case does not matter, as in DNS.
    pub ignore_ascii_case: bool,
    /// Paths: `*` and `?` never match this unit and `**` does, so
    /// "/usr/bin/*" means the programs in /usr/bin only.
    pub separator: Option<T>,
    /// Units neither wildcard stands for (the policy's shell control
    /// characters); a literal in the pattern still matches them.
    pub wildcards_skip: &'static [T],
}

impl<T> Rules<T> {
    /// ssh's rules: case-sensitive, `*` crosses everything.
    pub const PLAIN: Rules<T> = Rules {
        ignore_ascii_case: false,
        separator: None,
        wildcards_skip: &[],
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<T> {
    Literal(T),
    /// `?`
    One,
    /// `*`; within one path component when there is a separator.
    Star,
    /// `**` when there is a separator: across components.
    DeepStar,
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob<T: 'static> {
    tokens: Vec<Token<T>>,
    rules: Rules<T>,
}

impl<T: Unit> Glob<T> {
    pub fn new(pattern: &[T], rules: Rules<T>) -> Glob<T> {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut units = pattern.iter().copied().peekable();
        while let Some(unit) = units.next() {
            let token = if unit == T::STAR {
                let mut run = 1;
                while units.next_if_eq(&T::STAR).is_some() {
                    run += 1;
                }
                if run > 1 && rules.separator.is_some() {
                    Token::DeepStar
                } else {
                    Token::Star
                }
            } else if unit == T::ONE {
                Token::One
            } else {
                Token::Literal(unit)
            };
            tokens.push(token);
        }
        Glob { tokens, rules }
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &[T]) -> bool {
        let rules = &self.rules;
        let same = |p: T, t: T| {
            if rules.ignore_ascii_case {
                p.eq_ignore_ascii_case(t)
            } else {
                p == t
            }
        };
        let is_separator = |t: T| rules.separator == Some(t);
        let wild = |t: T| !rules.wildcards_skip.contains(&t);
        let mut reach = vec![false; text.len() + 1];
        reach[0] = true;
        // Two rows, swapped after each token; every cell of `next` is
        // written below before it is read.
        let mut next = vec![false; text.len() + 1];
        for token in &self.tokens {
            match *token {
                Token::Literal(p) => {
                    next[0] = false;
                    for (i, &t) in text.iter().enumerate() {
                        next[i + 1] = reach[i] && same(p, t);
                    }
                }
                Token::One => {
                    next[0] = false;
                    for (i, &t) in text.iter().enumerate() {
                        next[i + 1] = reach[i] && !is_separator(t) && wild(t);
                    }
                }
                Token::Star | Token::DeepStar => {
                    let crosses = *token == Token::DeepStar;
                    let mut open = false;
                    for i in 0..=text.len() {
                        open = reach[i]
                            || (open
                                && i > 0
                                && (crosses || !is_separator(text[i - 1]))
                                && wild(text[i - 1]));
                        next[i] = open;
                    }
                }
            }
            std::mem::swap(&mut reach, &mut next);
        }
        reach[text.len()]
    }
}

/// OpenSSH's `match_pattern`: bytes, case-sensitive, `*` and `?` anything.
pub fn ssh_match(pattern: &[u8], text: &[u8]) -> bool {
    Glob::new(pattern, Rules::PLAIN).matches(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious recursive matcher, exponential but plainly right, to
    /// check the fast one against.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..])),
            (Some(b'?'), Some(_)) => reference(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => reference(&p[1..], &t[1..]),
            _ => false,
        }
    }

    #[test]
    fn ssh_match_agrees_with_the_reference_on_every_short_case() {
        let alphabet = [b'a', b'b', b'*', b'?'];
        let strings = |max: usize, units: &[u8]| {
            let mut all = vec![Vec::new()];
            let mut frontier = vec![Vec::new()];
            for _ in 0..max {
                let mut grown = Vec::new();
                for s in &frontier {
                    for &u in units {
                        let mut longer: Vec<u8> = s.clone();
                        longer.push(u);
                        grown.push(longer);
                    }
                }
                all.extend(grown.iter().cloned());
                frontier = grown;
            }
            all
        };
        for p in strings(4, &alphabet) {
            for t in strings(4, &alphabet[..2]) {
                assert_eq!(ssh_match(&p, &t), reference(&p, &t), "{p:?} {t:?}");
            }
        }
    }

    #[test]
    fn hostile_patterns_stay_fast() {
        let text = vec![b'a'; 5000];
        let pattern = b"*a"
            .repeat(40)
            .into_iter()
            .chain(*b"*b")
            .collect::<Vec<_>>();
        assert!(!ssh_match(&pattern, &text));
    }

    #[test]
    fn rules_apply() {
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        let path = Rules {
            separator: Some('/'),
            ..Rules::PLAIN
        };
        let glob = |p: &str, rules| Glob::new(&chars(p), rules);
        assert!(glob("/usr/bin/*", path).matches(&chars("/usr/bin/git")));
        assert!(!glob("/usr/bin/*", path).matches(&chars("/usr/bin/x/git")));
        assert!(glob("/usr/**", path).matches(&chars("/usr/bin/x/git")));
        assert!(!glob("/usr/bin/g?t", path).matches(&chars("/usr/bin/g/t")));
        let host = Rules {
            ignore_ascii_case: true,
            ..Rules::PLAIN
        };
        assert!(glob("build-*", host).matches(&chars("BUILD-1")));
        let shell = Rules {
            wildcards_skip: &[';'],
            ..Rules::PLAIN
        };
        assert!(!glob("a *", shell).matches(&chars("a x;y")));
        assert!(glob("a *;*", shell).matches(&chars("a x;y")));
        // Without a separator, `**` is just a star.
        assert!(glob("a**", Rules::PLAIN).matches(&chars("a/b")));
    }
}
