//! `thanos.Label` encoded and decoded straight from and into the model's [`Label`] (the
//! generated code names `crate::Label` for it): names and values of up to 24 bytes are
//! copied inline, so a series' labels cost no allocation beyond their `Vec` on either
//! side of the StoreAPI.

use compact_str::CompactString;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_varint, encode_key, encode_varint,
    encoded_len_varint, key_len, skip_field,
};
use prost::{DecodeError, Message};

use crate::Label;

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

#[allow(deprecated)]
fn invalid(what: &'static str) -> DecodeError {
    DecodeError::new(what)
}

/// Reads one length-delimited UTF-8 string into `out` (replacing it).
fn merge_str(
    wire_type: WireType,
    out: &mut CompactString,
    buf: &mut impl Buf,
) -> Result<(), DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = decode_varint(buf)?;
    if len > buf.remaining() as u64 {
        return Err(invalid("buffer underflow"));
    }
    let len = len as usize;
    let chunk = buf.chunk();
    let s = if chunk.len() >= len {
        let s = std::str::from_utf8(&chunk[..len])
            .map_err(|_| invalid("invalid string value: data is not UTF-8 encoded"))?;
        CompactString::new(s)
    } else {
        // A string split across buffer segments (not seen from tonic, which decodes from
        // one contiguous buffer).
        let bytes = buf.copy_to_bytes(len);
        let s = std::str::from_utf8(&bytes)
            .map_err(|_| invalid("invalid string value: data is not UTF-8 encoded"))?;
        *out = CompactString::new(s);
        return Ok(());
    };
    buf.advance(len);
    *out = s;
    Ok(())
}

impl Message for Label {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, &self.name, buf);
        put_str(2, &self.value, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => merge_str(wire_type, &mut self.name, buf),
            2 => merge_str(wire_type, &mut self.value, buf),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        str_len(1, &self.name) + str_len(2, &self.value)
    }

    fn clear(&mut self) {
        self.name.clear();
        self.value.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What prost generates for `message Label { string name = 1; string value = 2; }`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        value: String,
    }

    #[test]
    fn same_bytes_as_generated_code_both_ways() {
        let long = "x".repeat(300);
        for (n, v) in [
            ("__name__", "up"),
            ("", "v"),
            ("n", ""),
            ("instance", long.as_str()),
        ] {
            let ours = Label::new(n, v);
            let gen_ = Generated {
                name: n.into(),
                value: v.into(),
            };
            assert_eq!(ours.encode_to_vec(), gen_.encode_to_vec());
            assert_eq!(ours.encoded_len(), gen_.encoded_len());
            let back = Label::decode(gen_.encode_to_vec().as_slice()).unwrap();
            assert_eq!(back, ours);
        }
    }

    #[test]
    fn unknown_fields_skipped_and_bad_input_refused() {
        // field 3 (varint 7), then name "a".
        let buf = [0x18, 0x07, 0x0a, 0x01, b'a'];
        assert_eq!(Label::decode(&buf[..]).unwrap(), Label::new("a", ""));
        // name claims 5 bytes, 1 present.
        assert!(Label::decode(&[0x0a, 0x05, b'a'][..]).is_err());
        // invalid UTF-8.
        assert!(Label::decode(&[0x0a, 0x01, 0xff][..]).is_err());
        // wrong wire type for name (varint).
        assert!(Label::decode(&[0x08, 0x01][..]).is_err());
    }

    #[test]
    fn split_buffers_decode() {
        let bytes = Label::new("name", "value").encode_to_vec();
        let (a, b) = bytes.split_at(4);
        let mut chain = Buf::chain(a, b);
        let l = Label::decode(&mut chain).unwrap();
        assert_eq!(l, Label::new("name", "value"));
    }
}
