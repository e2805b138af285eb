//! Responses on the wire. Each is encoded straight from the snapshot's resources into one
//! gRPC message buffer of exactly its size (no intermediate copy of the resources), and counts
//! against meshd's [`Budget`] of response bytes in flight until HTTP/2 has sent it and dropped it.

use std::sync::LazyLock;

use bytes::Bytes;
use mesh_proto::envoy::config::core::v3::ControlPlane;
use mesh_proto::google::protobuf::Any;
use mesh_proto::prost::Message;
use mesh_proto::prost::encoding::{self, WireType, encoded_len_varint, key_len};

use super::budget::{Budget, Held, Place};

/// The gRPC message header: a compressed flag and a 4-byte length.
pub(crate) const HEADER_LEN: usize = 5;

/// One framed message and the budget it holds until HTTP/2 drops it.
struct Framed {
    buf: Vec<u8>,
    _budget: Option<Held>,
}

impl AsRef<[u8]> for Framed {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// A message under construction: the gRPC header, then the fields.
struct Writer {
    buf: Vec<u8>,
    /// What the header says the fields take.
    len: usize,
}

impl Writer {
    fn new(len: usize) -> Writer {
        let mut buf = Vec::with_capacity(HEADER_LEN + len);
        buf.push(0);
        // Responses are far below gRPC's 4 GiB: `frame` refuses larger ones first.
        buf.extend_from_slice(&(len as u32).to_be_bytes());
        Writer { buf, len }
    }

    /// A string field; proto3 leaves out an empty one unless it is an element of a list.
    fn string(&mut self, tag: u32, value: &str, repeated: bool) {
        if repeated || !value.is_empty() {
            encoding::encode_key(tag, WireType::LengthDelimited, &mut self.buf);
            encoding::encode_varint(value.len() as u64, &mut self.buf);
            self.buf.extend_from_slice(value.as_bytes());
        }
    }

    fn message(&mut self, tag: u32, value: &impl Message) {
        encoding::message::encode(tag, value, &mut self.buf);
    }

    fn finish(self, budget: Option<Held>) -> Bytes {
        debug_assert_eq!(
            self.buf.len(),
            HEADER_LEN + self.len,
            "the fields fill exactly the length computed"
        );
        Bytes::from_owner(Framed {
            buf: self.buf,
            _budget: budget,
        })
    }
}

fn string_len(tag: u32, value: &str, repeated: bool) -> usize {
    if repeated || !value.is_empty() {
        key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    } else {
        0
    }
}

fn message_len(tag: u32, value: &impl Message) -> usize {
    encoding::message::encoded_len(tag, value)
}

/// Who sent the response, in every response.
static CONTROL_PLANE: LazyLock<ControlPlane> = LazyLock::new(|| ControlPlane {
    identifier: "meshd".into(),
});

/// Why a response cannot be sent.
#[derive(Debug, thiserror::Error)]
#[error("a response of {0} bytes is over gRPC's 4 GiB")]
pub struct TooLarge(usize);

/// Waits at `place` for budget for a message of `len` bytes, then frames what `fields` writes.
async fn frame(
    budget: &Budget,
    place: Place,
    len: usize,
    fields: impl FnOnce(&mut Writer),
) -> Result<Bytes, TooLarge> {
    u32::try_from(len).map_err(|_| TooLarge(len))?;
    let permit = budget.reserve(HEADER_LEN + len, place).await;
    let mut w = Writer::new(len);
    fields(&mut w);
    Ok(w.finish(permit))
}

/// The fields of a state-of-the-world `DiscoveryResponse`; the resources are walked twice, to
/// size the response and to encode it, so that nothing is collected while it waits for budget.
pub(crate) struct Sotw<'a, I> {
    pub version_info: &'a str,
    pub type_url: &'a str,
    pub nonce: &'a str,
    pub resources: I,
}

impl<'a, I: Iterator<Item = &'a Any> + Clone> Sotw<'a, I> {
    fn encoded_len(&self) -> usize {
        let resources: usize = self.resources.clone().map(|any| message_len(2, any)).sum();
        string_len(1, self.version_info, false)
            + resources
            + string_len(4, self.type_url, false)
            + string_len(5, self.nonce, false)
            + message_len(6, &*CONTROL_PLANE)
    }

    /// The framed `DiscoveryResponse`, once there is budget for it.
    pub async fn encode(&self, budget: &Budget, place: Place) -> Result<Bytes, TooLarge> {
        frame(budget, place, self.encoded_len(), |w| {
            w.string(1, self.version_info, false);
            for any in self.resources.clone() {
                w.message(2, any);
            }
            w.string(4, self.type_url, false);
            w.string(5, self.nonce, false);
            w.message(6, &*CONTROL_PLANE);
        })
        .await
    }
}

/// One resource of a delta response; its version is its content hash, in hex.
#[derive(Clone, Copy)]
pub(crate) struct DeltaResource<'a> {
    pub name: &'a str,
    pub hash: u64,
    pub any: &'a Any,
}

/// The width of a resource version: a `u64` in hex.
const VERSION_LEN: usize = 16;

impl DeltaResource<'_> {
    /// The length of the `Resource` message: name (3), version (1), resource (2).
    fn body_len(&self) -> usize {
        string_len(3, self.name, false)
            + key_len(1)
            + encoded_len_varint(VERSION_LEN as u64)
            + VERSION_LEN
            + message_len(2, self.any)
    }

    /// The version as it is sent: 16 lowercase hex digits.
    fn version(&self) -> [u8; VERSION_LEN] {
        let mut out = [0u8; VERSION_LEN];
        for (i, b) in out.iter_mut().enumerate() {
            let nibble = (self.hash >> (4 * (VERSION_LEN - 1 - i))) & 0xf;
            *b = b"0123456789abcdef"[nibble as usize];
        }
        out
    }
}

/// The fields of a `DeltaDiscoveryResponse`; like [`Sotw`], the resources and the removed names
/// are walked twice (to size, then to encode), never collected.
pub(crate) struct Delta<'a, R, N> {
    pub system_version_info: &'a str,
    pub type_url: &'a str,
    pub nonce: &'a str,
    pub resources: R,
    pub removed_resources: N,
}

impl<'a, 'n, R, N> Delta<'a, R, N>
where
    R: Iterator<Item = DeltaResource<'a>> + Clone,
    N: Iterator<Item = &'n String> + Clone,
{
    fn encoded_len(&self) -> usize {
        let resources: usize = self
            .resources
            .clone()
            .map(|r| {
                let body = r.body_len();
                key_len(2) + encoded_len_varint(body as u64) + body
            })
            .sum();
        let removed: usize = self
            .removed_resources
            .clone()
            .map(|n| string_len(6, n, true))
            .sum();
        string_len(1, self.system_version_info, false)
            + resources
            + string_len(4, self.type_url, false)
            + string_len(5, self.nonce, false)
            + removed
            + message_len(7, &*CONTROL_PLANE)
    }

    /// The framed `DeltaDiscoveryResponse`, once there is budget for it.
    pub async fn encode(&self, budget: &Budget, place: Place) -> Result<Bytes, TooLarge> {
        frame(budget, place, self.encoded_len(), |w| {
            w.string(1, self.system_version_info, false);
            for r in self.resources.clone() {
                encoding::encode_key(2, WireType::LengthDelimited, &mut w.buf);
                encoding::encode_varint(r.body_len() as u64, &mut w.buf);
                w.string(3, r.name, false);
                encoding::encode_key(1, WireType::LengthDelimited, &mut w.buf);
                encoding::encode_varint(VERSION_LEN as u64, &mut w.buf);
                w.buf.extend_from_slice(&r.version());
                w.message(2, r.any);
            }
            w.string(4, self.type_url, false);
            w.string(5, self.nonce, false);
            for name in self.removed_resources.clone() {
                w.string(6, name, true);
            }
            w.message(7, &*CONTROL_PLANE);
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::{DeltaDiscoveryResponse, DiscoveryResponse, Resource};

    fn any(type_url: &str, value: &[u8]) -> Any {
        Any {
            type_url: type_url.into(),
            value: value.to_vec(),
        }
    }

    /// The message of a frame, after checking its header.
    fn message(frame: &Bytes) -> &[u8] {
        assert_eq!(frame[0], 0, "uncompressed");
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(frame.len(), HEADER_LEN + len, "the header gives the length");
        &frame[HEADER_LEN..]
    }

    #[tokio::test]
    async fn sotw_is_what_prost_encodes() {
        let budget = Budget::new(1 << 20);
        let (a, b) = (any("t/a", b"alpha"), any("t/b", &[0u8; 300]));
        let (version, type_url, nonce) = ("7".to_string(), "t".to_string(), "3".to_string());
        let frame = Sotw {
            version_info: &version,
            type_url: &type_url,
            nonce: &nonce,
            resources: [&a, &b].into_iter(),
        }
        .encode(&budget, budget.place())
        .await
        .expect("encodes");
        let expected = DiscoveryResponse {
            version_info: version,
            resources: vec![a, b],
            type_url,
            nonce,
            control_plane: Some(CONTROL_PLANE.clone()),
            ..Default::default()
        };
        assert_eq!(message(&frame), expected.encode_to_vec().as_slice());
    }

    #[tokio::test]
    async fn delta_is_what_prost_encodes() {
        let budget = Budget::new(1 << 20);
        let a = any("t/a", &[1u8; 200]);
        let (version, type_url, nonce, name) = (
            "9".to_string(),
            "t".to_string(),
            "4".to_string(),
            "a".to_string(),
        );
        let removed = vec!["gone".to_string(), String::new()];
        let frame = Delta {
            system_version_info: &version,
            type_url: &type_url,
            nonce: &nonce,
            resources: [DeltaResource {
                name: &name,
                hash: 0x1f,
                any: &a,
            }]
            .into_iter(),
            removed_resources: removed.iter(),
        }
        .encode(&budget, budget.place())
        .await
        .expect("encodes");
        let decoded = DeltaDiscoveryResponse::decode(message(&frame)).expect("decodes");
        let expected = DeltaDiscoveryResponse {
            system_version_info: version,
            resources: vec![Resource {
                name,
                version: "000000000000001f".into(),
                resource: Some(a),
                ..Default::default()
            }],
            type_url,
            removed_resources: removed,
            nonce,
            control_plane: Some(CONTROL_PLANE.clone()),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
    }

    #[tokio::test]
    async fn a_response_holds_its_budget_until_it_is_dropped() {
        let budget = Budget::new(64 * 1024);
        let payload = any("t/a", &[7u8; 20 * 1024]);
        let response = |any| Sotw {
            version_info: "1",
            type_url: "t",
            nonce: "1",
            resources: std::iter::once(any),
        };
        let first = response(&payload)
            .encode(&budget, budget.place())
            .await
            .expect("encodes");
        assert_eq!(budget.free_kib(), 64 - 21, "20 KiB and the fields, in KiB");
        let shared = first.clone();
        drop(first);
        assert_eq!(budget.free_kib(), 64 - 21, "a clone still holds it");
        drop(shared);
        assert_eq!(budget.free_kib(), 64);
        let small = any("t/a", &[7u8; 100]);
        let _small = response(&small)
            .encode(&budget, budget.place())
            .await
            .expect("encodes");
        assert_eq!(budget.free_kib(), 64, "a small response takes none");
    }
}
