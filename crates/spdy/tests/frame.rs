//! The codec on its own: frame round trips, header compression with the SPDY/3 dictionary,
//! blocks compressed by another zlib, and malformed input.

use ingot_spdy::dictionary::{DICTIONARY, DICTIONARY_ADLER32};
use ingot_spdy::frame::{
    decode_control, decode_header_block, encode, encode_header_block, read_frame, Frame, FrameHead,
    HeaderCompressor, HeaderDecompressor, Limits, Setting,
};
use ingot_spdy::SpdyError;

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn dictionary_is_the_spdy3_one() {
    assert_eq!(DICTIONARY.len(), 1423);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in DICTIONARY {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    assert_eq!(b << 16 | a, DICTIONARY_ADLER32);
    assert_eq!(DICTIONARY_ADLER32, 0xe3c6_a7c2);
}

#[test]
fn header_blocks_round_trip_through_one_zlib_stream() {
    let mut z = HeaderCompressor::new().expect("compressor");
    let mut dz = HeaderDecompressor::new();
    let blocks = [
        h(&[("streamtype", "error"), ("requestid", "0")]),
        h(&[("streamtype", "stdin"), ("requestid", "0")]),
        h(&[]),
        h(&[("port", "8080"), ("streamtype", "data"), ("requestid", "1")]),
    ];
    let mut sizes = Vec::new();
    for b in &blocks {
        let c = z
            .compress(&encode_header_block(b).expect("encode"))
            .expect("compress");
        sizes.push(c.len());
        let raw = dz.decompress(&c, 1 << 20).expect("decompress");
        assert_eq!(&decode_header_block(&raw).expect("parse"), b);
    }
    // The first block starts a zlib stream that names the SPDY/3 dictionary (FDICT set).
    let first = z_first_block();
    assert_eq!(first[1] & 0x20, 0x20);
    assert_eq!(&first[2..6], &DICTIONARY_ADLER32.to_be_bytes());
    // Later blocks reuse the stream's history, so a repeated block shrinks.
    assert!(sizes[1] < sizes[0], "{sizes:?}");
}

fn z_first_block() -> Vec<u8> {
    let mut z = HeaderCompressor::new().expect("compressor");
    z.compress(&encode_header_block(&h(&[("a", "b")])).expect("encode"))
        .expect("compress")
}

#[test]
fn repeated_names_join_with_nul_and_split_back() {
    let block = encode_header_block(&h(&[("X-A", "1"), ("x-a", "2"), ("b", "3")])).expect("encode");
    // One entry for x-a, as spdystream rejects a block naming a header twice.
    assert_eq!(&block[..4], &2u32.to_be_bytes());
    let back = decode_header_block(&block).expect("parse");
    assert_eq!(back, h(&[("x-a", "1"), ("x-a", "2"), ("b", "3")]));
}

/// Three consecutive header blocks as a kubectl exec / port-forward client sends them, compressed
/// by CPython's zlib (C zlib 1.2.13, level 9, SPDY/3 dictionary, Z_SYNC_FLUSH after each block):
/// an independent deflate implementation, standing in for a capture from Go's compress/zlib,
/// which spdystream's own tests do not carry for SPDY/3.
#[test]
fn decodes_blocks_from_an_independent_zlib() {
    let blocks = [
        "78f9e3c6a7c202e50e703a2b294a4dcc851625aca9a0800632388b20d196094ace8c0600000000ffff",
        "c2aeb8b8049881301503000000ffff",
        "02256748c95e04ce4416061606189a41855622865e4300000000ffff",
    ];
    let want = [
        h(&[("streamtype", "error"), ("requestid", "0")]),
        h(&[("streamtype", "stdin"), ("requestid", "0")]),
        h(&[("port", "8080"), ("streamtype", "data"), ("requestid", "1")]),
    ];
    let mut dz = HeaderDecompressor::new();
    for (b, w) in blocks.iter().zip(&want) {
        let raw = dz.decompress(&hex(b), 1 << 16).expect("decompress");
        assert_eq!(&decode_header_block(&raw).expect("parse"), w);
    }
}

#[test]
fn header_block_limit_is_enforced() {
    let mut z = HeaderCompressor::new().expect("compressor");
    let big = "x".repeat(100_000);
    let c = z
        .compress(&encode_header_block(&h(&[("k", &big)])).expect("encode"))
        .expect("c");
    let mut dz = HeaderDecompressor::new();
    assert!(matches!(
        dz.decompress(&c, 4096),
        Err(SpdyError::HeaderBlockTooLarge { .. })
    ));
}

#[test]
fn garbage_header_blocks_are_errors() {
    let mut dz = HeaderDecompressor::new();
    assert!(dz.decompress(b"not zlib at all", 4096).is_err());
    // Valid zlib stream, wrong dictionary id.
    let mut dz = HeaderDecompressor::new();
    assert!(dz.decompress(&hex("78f90000000102"), 4096).is_err());
    for bad in [
        &b""[..],
        &[0, 0, 0, 1][..],
        &[0, 0, 0, 1, 0, 0, 0, 9, b'a'][..],
    ] {
        assert!(decode_header_block(bad).is_err(), "{bad:?}");
    }
    // Empty name.
    assert!(decode_header_block(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    // A count far beyond the bytes present must not allocate or loop for long.
    assert!(decode_header_block(&[0xff, 0xff, 0xff, 0xff]).is_err());
}

#[tokio::test]
async fn every_frame_type_round_trips() {
    let frames = vec![
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 3,
            flags: 0,
            headers: h(&[("streamtype", "stdin")]),
        },
        Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: h(&[]),
        },
        Frame::RstStream {
            stream_id: 3,
            status: 5,
        },
        Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 1,
                id: 7,
                value: 1 << 20,
            }],
        },
        Frame::Ping { id: 7 },
        Frame::GoAway {
            last_good: 9,
            status: 0,
        },
        Frame::Headers {
            stream_id: 1,
            flags: 1,
            headers: h(&[("a", "b")]),
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 12345,
        },
        Frame::Data {
            stream_id: 1,
            flags: 1,
            data: b"hello".to_vec(),
        },
        Frame::Data {
            stream_id: 5,
            flags: 0,
            data: Vec::new(),
        },
    ];
    let mut z = HeaderCompressor::new().expect("compressor");
    let mut wire = Vec::new();
    for f in &frames {
        encode(f, &mut z, &mut wire).expect("encode");
    }
    let mut rd = &wire[..];
    let mut dz = HeaderDecompressor::new();
    for f in &frames {
        let got = read_frame(&mut rd, &mut dz, &Limits::default())
            .await
            .expect("read");
        assert_eq!(got.as_ref(), Some(f));
    }
    assert_eq!(
        read_frame(&mut rd, &mut dz, &Limits::default())
            .await
            .expect("eof"),
        None
    );
}

#[test]
fn frame_heads_parse() {
    assert_eq!(
        FrameHead::parse([0x80, 3, 0, 6, 0, 0, 0, 4]),
        FrameHead::Control {
            version: 3,
            frame_type: 6,
            flags: 0,
            len: 4
        }
    );
    assert_eq!(
        FrameHead::parse([0, 0, 0, 5, 1, 0xff, 0xff, 0xff]),
        FrameHead::Data {
            stream_id: 5,
            flags: 1,
            len: 0xff_ffff
        }
    );
}

#[test]
fn malformed_control_payloads_are_errors_not_panics() {
    let limits = Limits::default();
    let mut dz = HeaderDecompressor::new();
    // Wrong fixed lengths.
    assert!(decode_control(6, 0, &[0, 0, 1], &mut dz, &limits).is_err());
    assert!(decode_control(3, 0, &[0; 7], &mut dz, &limits).is_err());
    assert!(decode_control(7, 0, &[0; 9], &mut dz, &limits).is_err());
    assert!(decode_control(9, 0, &[0; 4], &mut dz, &limits).is_err());
    assert!(decode_control(
        4,
        0,
        &[0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1],
        &mut dz,
        &limits
    )
    .is_err());
    assert!(decode_control(1, 0, &[0; 9], &mut dz, &limits).is_err());
    // Unknown types are reported, not rejected.
    assert_eq!(
        decode_control(42, 0, &[1, 2, 3], &mut dz, &limits).expect("unknown"),
        Frame::Unknown { frame_type: 42 }
    );
    // Deterministic noise through every type.
    let mut seed = 0x1234_5678u32;
    for ty in 0..12u16 {
        for len in 0..64usize {
            let p: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    seed.to_be_bytes()[0]
                })
                .collect();
            let mut dz = HeaderDecompressor::new();
            let _ = decode_control(ty, 0, &p, &mut dz, &limits);
        }
    }
}
