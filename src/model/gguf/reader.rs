//! A bounds-checked little-endian cursor over a GGUF file's bytes.
//!
//! Every read checks that the bytes exist before it takes them, and every count read from the file
//! is checked against the bytes left before anything is allocated for it, so a corrupt or hostile
//! file costs at most its own size in memory and ends in an error that names the offset.

/// Reads values from `bytes`, front to back.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Offset of the next byte to read.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the cursor.
    pub(super) fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes; `what` names them in the error.
    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file ends at {}",
                self.pos,
                self.bytes.len()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(super) fn u16(&mut self, what: &str) -> Result<u16, String> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items of at least `min_item` bytes each, refused when the file cannot hold
    /// that many (so nothing is allocated for a count a corrupt file made up).
    pub(super) fn count(&mut self, min_item: usize, what: &str) -> Result<usize, String> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_item.max(1)) <= self.left());
        fits.ok_or_else(|| {
            format!(
                "{what} at offset {at} is {n}, more than the {} bytes left can hold \
                 (the file is truncated or corrupt)",
                self.left()
            )
        })
    }

    /// A GGUF string: u64 length, then UTF-8 bytes.
    pub(super) fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.count(1, &format!("length of {what}"))?;
        let at = self.pos;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|e| format!("{what} at offset {at} is not UTF-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_refuses_past_the_end() {
        let bytes = [1u8, 0, 2, 0, 0, 0, 9];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u16("a").unwrap(), 1);
        assert_eq!(r.u32("b").unwrap(), 2);
        assert_eq!(r.left(), 1);
        let e = r.u16("c").unwrap_err();
        assert!(e.contains("truncated") && e.contains("offset 6"), "{e}");
    }

    #[test]
    fn a_count_larger_than_the_file_is_refused_before_allocating() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend([0u8; 8]);
        let e = Reader::new(&bytes).count(1, "tensor count").unwrap_err();
        assert!(
            e.contains("tensor count") && e.contains("8 bytes left"),
            "{e}"
        );
        let mut ok = 2u64.to_le_bytes().to_vec();
        ok.extend([0u8; 8]);
        assert_eq!(Reader::new(&ok).count(4, "n").unwrap(), 2);
        assert!(Reader::new(&ok).count(5, "n").is_err());
    }

    #[test]
    fn strings_must_be_utf8() {
        let mut bytes = 2u64.to_le_bytes().to_vec();
        bytes.extend([0xC3, 0x28]);
        let e = Reader::new(&bytes).string("key").unwrap_err();
        assert!(e.contains("key at offset 8 is not UTF-8"), "{e}");
    }
}
