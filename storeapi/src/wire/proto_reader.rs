//! A bounds-checked protobuf reader over a borrowed buffer, shared by the hand-written
//! decoders of hot messages (remote-write bodies, StoreAPI `Series` frames): malformed
//! input is an error, never a panic.

/// Why a protobuf message (a remote-write body, a StoreAPI frame) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated protobuf: {0}")]
    Truncated(&'static str),
    #[error("invalid varint")]
    BadVarint,
    #[error("invalid protobuf field tag {0}")]
    BadTag(u64),
    #[error("unsupported protobuf wire type {wire_type} (field {field})")]
    BadWireType { field: u32, wire_type: u8 },
    #[error("label {0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("snappy: {0}")]
    Snappy(String),
    #[error("decompressed body would be {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// A count the client controls (histogram buckets, spans) is over the decoder's limit.
    #[error("{what}: {count} is over the limit of {limit}")]
    Limit {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    /// Remote write 2.0: a reference past the end of the request's symbol table.
    #[error("{what} refers to symbol {index}, but the request has only {symbols} symbols")]
    BadSymbolRef {
        what: &'static str,
        index: u64,
        symbols: usize,
    },
    /// Remote write 2.0: `labels_refs` must hold (name, value) pairs.
    #[error(
        "{what} has an odd number of label references ({count}); they must be name/value pairs"
    )]
    OddLabelRefs { what: &'static str, count: usize },
    /// Remote write 2.0: the symbol table must start with the empty string.
    #[error("the first symbol of the request must be the empty string")]
    FirstSymbolNotEmpty,
}

pub(crate) const WT_VARINT: u8 = 0;
pub(crate) const WT_I64: u8 = 1;
pub(crate) const WT_LEN: u8 = 2;
pub(crate) const WT_I32: u8 = 5;

pub(crate) struct Cursor<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

/// What [`Cursor::repeated_sized`] hands its callback.
pub(crate) enum Elem<T> {
    /// The most elements that follow (a packed field's bound).
    AtMost(usize),
    Value(T),
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Tags, lengths and small numbers are one byte, and histogram bucket deltas
    /// mostly one or two: those cases stay inline.
    #[inline(always)]
    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
            if let Some(&b2) = self.buf.get(self.pos + 1)
                && b2 < 0x80
            {
                self.pos += 2;
                return Ok(u64::from(b & 0x7f) | u64::from(b2) << 7);
            }
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, DecodeError> {
        // With ten bytes left (all but a body's last few varints) the loop runs over a
        // fixed array: unrolled, no bounds check per byte. Timestamps and histogram
        // bucket deltas are multi-byte: a fifth of decoding a histogram request went
        // to the byte-at-a-time loop below (issue #20).
        let window = self
            .pos
            .checked_add(10)
            .and_then(|end| self.buf.get(self.pos..end));
        if let Some(Ok(b)) = window.map(<&[u8; 10]>::try_from) {
            let mut v: u64 = 0;
            for (i, &x) in b.iter().enumerate() {
                v |= u64::from(x & 0x7f) << (7 * i);
                if x < 0x80 {
                    if i == 9 && x > 1 {
                        return Err(DecodeError::BadVarint);
                    }
                    self.pos += i + 1;
                    return Ok(v);
                }
            }
            return Err(DecodeError::BadVarint);
        }
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(DecodeError::Truncated("varint"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(DecodeError::BadVarint);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint)
    }

    /// Reads a tag: (field number, wire type).
    #[inline]
    pub(crate) fn tag(&mut self) -> Result<(u32, u8), DecodeError> {
        let t = self.varint()?;
        if t > u64::from(u32::MAX) {
            return Err(DecodeError::BadTag(t));
        }
        let field = (t >> 3) as u32;
        if field == 0 {
            return Err(DecodeError::BadTag(t));
        }
        Ok((field, (t & 7) as u8))
    }

    #[inline]
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let remaining = self.buf.len() - self.pos;
        if len > remaining as u64 {
            return Err(DecodeError::Truncated(what));
        }
        let len = len as usize;
        let s = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }

    /// Steps over the label fields (field 1, length-delimited) that follow, as long
    /// as each is laid out as every client sends it: a one-byte tag, a one-byte length
    /// and its bytes. A series' labels are one run of such fields, which a reader
    /// deferring them only needs the extent of; anything else is left to the general
    /// path (the first of a run, and a longer or truncated field, go through it).
    #[inline]
    pub(crate) fn skip_label_run(&mut self) {
        while let Some(&[0x0a, len]) = self.buf.get(self.pos..self.pos + 2)
            && len < 0x80
            && usize::from(len) + 2 <= self.buf.len() - self.pos
        {
            self.pos += usize::from(len) + 2;
        }
    }

    #[inline]
    pub(crate) fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let end = self.pos + 8;
        let Some(b) = self.buf.get(self.pos..end) else {
            return Err(DecodeError::Truncated("fixed64"));
        };
        self.pos = end;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads one value of a repeated scalar field, or all values of its packed form,
    /// calling `each` on every element. `one` reads a single element from a cursor.
    pub(crate) fn repeated<T>(
        &mut self,
        field: u32,
        wire_type: u8,
        elem_wt: u8,
        one: impl FnMut(&mut Cursor<'a>) -> Result<T, DecodeError>,
        mut each: impl FnMut(T) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        self.repeated_sized(field, wire_type, elem_wt, one, |x| match x {
            Elem::Value(v) => each(v),
            Elem::AtMost(_) => Ok(()),
        })
    }

    /// [`Cursor::repeated`] that first tells `each` (with [`Elem::AtMost`]) how many
    /// elements a packed form can hold at most (its bytes for varints, an eighth of them
    /// for fixed64s), so a caller sizes its vector once instead of growing it element by
    /// element (within its own limit).
    pub(crate) fn repeated_sized<T>(
        &mut self,
        field: u32,
        wire_type: u8,
        elem_wt: u8,
        mut one: impl FnMut(&mut Cursor<'a>) -> Result<T, DecodeError>,
        mut each: impl FnMut(Elem<T>) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        if wire_type == WT_LEN {
            let bytes = self.bytes("packed repeated field")?;
            each(Elem::AtMost(match elem_wt {
                WT_I64 => bytes.len() / 8,
                WT_I32 => bytes.len() / 4,
                _ => bytes.len(),
            }))?;
            let mut packed = Cursor::new(bytes);
            while !packed.done() {
                each(Elem::Value(one(&mut packed)?))?;
            }
            Ok(())
        } else {
            self.expect(field, wire_type, elem_wt)?;
            each(Elem::Value(one(self)?))
        }
    }

    pub(crate) fn skip(&mut self, field: u32, wire_type: u8) -> Result<(), DecodeError> {
        match wire_type {
            WT_VARINT => {
                self.varint()?;
            }
            WT_I64 => {
                self.fixed64()?;
            }
            WT_LEN => {
                self.bytes("length-delimited field")?;
            }
            WT_I32 => {
                let end = self.pos + 4;
                if end > self.buf.len() {
                    return Err(DecodeError::Truncated("fixed32"));
                }
                self.pos = end;
            }
            _ => return Err(DecodeError::BadWireType { field, wire_type }),
        }
        Ok(())
    }

    pub(crate) fn expect(&self, field: u32, got: u8, want: u8) -> Result<(), DecodeError> {
        if got == want {
            Ok(())
        } else {
            Err(DecodeError::BadWireType {
                field,
                wire_type: got,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-at-a-time decoder: the model both varint paths must match.
    fn model(buf: &[u8]) -> Option<(u64, usize)> {
        let mut v = 0u64;
        for (i, &b) in buf.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some((v, i + 1));
            }
        }
        None
    }

    fn encode(mut x: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while x >= 0x80 {
            out.push(x as u8 | 0x80);
            x >>= 7;
        }
        out.push(x as u8);
        out
    }

    proptest::proptest! {
        #[test]
        fn varint_matches_a_byte_at_a_time_decoder(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..14)
        ) {
            let mut c = Cursor::new(&bytes);
            let got = c.varint().ok().map(|v| (v, c.pos));
            proptest::prop_assert_eq!(got, model(&bytes));
        }

        #[test]
        fn varint_reads_back_every_width(x in proptest::prelude::any::<u64>(), shift in 0u32..64, tail in 0usize..10) {
            let x = x >> shift;
            let mut bytes = encode(x);
            let len = bytes.len();
            bytes.extend(std::iter::repeat_n(0xffu8, tail));
            let mut c = Cursor::new(&bytes);
            proptest::prop_assert_eq!(c.varint().ok(), Some(x));
            proptest::prop_assert_eq!(c.pos, len);
        }
    }

    /// The run ends at the first field that is not a short label field as clients
    /// send it, and never steps past the buffer.
    #[test]
    fn a_label_run_ends_where_its_fields_stop_being_short_labels() {
        let short = |n: u8| -> Vec<u8> {
            let mut f = vec![0x0a, n];
            f.extend(std::iter::repeat_n(b'x', usize::from(n)));
            f
        };
        let run: Vec<u8> = [short(3), short(0), short(127)].concat();
        for (tail, stop) in [
            (vec![0x12, 0x01, 0x00], 0),          // a sample (field 2)
            (vec![0x0a, 0x80, 0x01], 0),          // a label of 128 bytes: two-byte length
            (vec![0x0a, 0x05, b'a'], 0),          // truncated
            (vec![0x0a], 0),                      // a tag alone
            (vec![], 0),                          // the end
            ([short(2), vec![0x0b]].concat(), 4), // field 1 of another wire type after one more
        ] {
            let buf = [run.clone(), tail].concat();
            let mut c = Cursor { buf: &buf, pos: 0 };
            c.skip_label_run();
            assert_eq!(c.pos, run.len() + stop, "{buf:?}");
        }
        // From the middle of a buffer, and at its end.
        let mut c = Cursor { buf: &run, pos: 5 };
        c.skip_label_run();
        assert_eq!(c.pos, run.len());
        c.skip_label_run();
        assert_eq!(c.pos, run.len());
    }
}
