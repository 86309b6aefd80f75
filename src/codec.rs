//! The few big-endian primitives the helpers' replies are built from:
//! `u32`, `u64`, length-prefixed bytes, and optional bytes (`u32::MAX` for
//! none). Pure; a [`Reader`] never panics on short or hostile input.

pub fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Length-prefixed bytes. A length of `u32::MAX` is reserved for "none".
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l != u32::MAX)
        .expect("helper fields are far below 4 GiB");
    put_u32(out, len);
    out.extend_from_slice(bytes);
}

pub fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => put_bytes(out, b),
        None => put_u32(out, u32::MAX),
    }
}

/// Reads what the `put_*` functions wrote; every method returns `None`
/// once the input does not hold what is asked for.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(head)
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        match self.u32()? {
            u32::MAX => None,
            len => self.take(len as usize),
        }
    }

    pub fn optional(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u32()? {
            u32::MAX => Some(None),
            len => self.take(len as usize).map(Some),
        }
    }

    /// A count of items each at least `item_size` bytes long: refused if
    /// the rest of the input cannot hold that many (so a hostile count
    /// never makes a large allocation).
    pub fn count(&mut self, item_size: usize) -> Option<usize> {
        let count = self.u32()? as usize;
        (count.checked_mul(item_size.max(1))? <= self.rest.len()).then_some(count)
    }

    /// `Some(())` if everything was read: trailing bytes are an error.
    pub fn finished(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_and_short_input_is_refused() {
        let mut out = Vec::new();
        put_u32(&mut out, 7);
        put_u64(&mut out, 1 << 40);
        put_bytes(&mut out, b"abc");
        put_optional(&mut out, None);
        put_optional(&mut out, Some(b""));
        let mut r = Reader::new(&out);
        assert_eq!(r.u32(), Some(7));
        assert_eq!(r.u64(), Some(1 << 40));
        assert_eq!(r.bytes(), Some(&b"abc"[..]));
        assert_eq!(r.optional(), Some(None));
        assert_eq!(r.optional(), Some(Some(&b""[..])));
        assert_eq!(r.finished(), Some(()));
        assert_eq!(r.u32(), None);
        // A length past the end, and a count the rest cannot hold.
        assert_eq!(Reader::new(&[0, 0, 0, 9, 1]).bytes(), None);
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0xfe]).count(4), None);
        assert_eq!(Reader::new(&[0, 0, 0, 1, 0, 0, 0, 0]).count(4), Some(1));
    }
}
