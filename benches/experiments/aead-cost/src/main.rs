//! One AEAD seal and open per iteration, by the provider named on the command line: see run.sh.

#![forbid(unsafe_code)]

use std::hint::black_box;

/// `n` rounds of a seal with `$seal` and an open with `$open` of `$buf` (ring's and aws-lc-rs's
/// keys have the same methods under different types).
macro_rules! round_trips {
    ($aead:ident, $seal:expr, $open:expr, $buf:expr, $aad:expr, $n:expr) => {{
        use $aead::aead::{Aad, Nonce};
        for i in 0..$n {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&i.to_be_bytes());
            let tag = $seal
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from($aad),
                    &mut $buf,
                )
                .unwrap();
            let mut whole = $buf.clone();
            whole.extend_from_slice(tag.as_ref());
            let plain = $open
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from($aad),
                    &mut whole,
                )
                .unwrap();
            black_box(plain);
        }
    }};
}

fn main() {
    let which = std::env::args().nth(1).unwrap();
    let len: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let n: u64 = std::env::args().nth(3).unwrap().parse().unwrap();
    let key = [7u8; 16];
    let key32 = [7u8; 32];
    let aad = [23u8, 3, 3, 0, 0];
    let mut buf = vec![1u8; len];
    match which.as_str() {
        "ring" => {
            use ring::aead::*;
            let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).unwrap());
            round_trips!(ring, k, k, buf, aad, n);
        }
        "ring-chacha" => {
            use ring::aead::*;
            let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key32).unwrap());
            round_trips!(ring, k, k, buf, aad, n);
        }
        "awslc" => {
            use aws_lc_rs::aead::*;
            let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).unwrap());
            round_trips!(aws_lc_rs, k, k, buf, aad, n);
        }
        "awslc-chacha" => {
            use aws_lc_rs::aead::*;
            let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key32).unwrap());
            round_trips!(aws_lc_rs, k, k, buf, aad, n);
        }
        "awslc-tls" => {
            use aws_lc_rs::aead::*;
            let mut s = TlsRecordSealingKey::new(&AES_128_GCM, TlsProtocolId::TLS13, &key).unwrap();
            let o = TlsRecordOpeningKey::new(&AES_128_GCM, TlsProtocolId::TLS13, &key).unwrap();
            round_trips!(aws_lc_rs, s, o, buf, aad, n);
        }
        "clone" => {
            for _ in 0..n {
                let mut whole = buf.clone();
                whole.extend_from_slice(&[0u8; 16]);
                black_box(&whole);
            }
        }
        _ => panic!(),
    }
}
