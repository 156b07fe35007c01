//! Generated protobuf and gRPC code for `beacon.v1` (from `proto/`), and the
//! one message written by hand: [`Delivery`](v1::Delivery).
//!
//! Used by the codec of what is signed and stored (`bulletin::codec`) and
//! by the gRPC edge (`api`, `client`, `federation`).

#![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]

pub mod v1 {
    tonic::include_proto!("beacon.v1");
    pub use super::delivery::Delivery;
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("beacon_descriptor");

pub mod delivery {
    //! `beacon.v1.Delivery` with its envelope kept as bytes.
    //!
    //! On the wire an embedded message is a length-delimited field, exactly
    //! like `bytes`, so this type reads and writes the same encoding as the
    //! generated code would (any protobuf client sees a `Delivery` with an
    //! `Envelope`). What changes is that the node serves the envelope as the
    //! very bytes it stored and digested, without decoding and re-encoding
    //! it, and a reader can check `envelope_digest` over the bytes it
    //! received before it decodes anything.
    //!
    //! One protobuf rule is not followed: if field 5 appeared twice, a parser
    //! would merge the two envelopes; this type keeps the last one. Nodes
    //! never send it twice, and the digest check refuses such a delivery.

    use bytes::{Buf, BufMut, Bytes};
    use prost::encoding::{self, DecodeContext, WireType};
    use prost::{DecodeError, Message};

    #[derive(Clone, PartialEq, Default, Debug)]
    pub struct Delivery {
        /// This node's log sequence: starts at 1, gapless, monotonic.
        pub sequence: u64,
        /// When this node made it durable.
        pub accepted_at: Option<prost_types::Timestamp>,
        /// The SPIFFE id of the node that first accepted it, and its sequence there.
        pub origin_node: String,
        pub origin_sequence: u64,
        /// The serialized `Envelope`, exactly as stored (`None`: absent).
        pub envelope: Option<Bytes>,
        /// SHA-256 of `envelope`.
        pub envelope_digest: Vec<u8>,
        /// The later bulletin that superseded or retracted this one.
        pub replaced_by: Option<super::v1::Replacement>,
        /// Past its `expires_at` when served.
        pub expired: bool,
    }

    impl Delivery {
        /// The envelope, decoded.
        pub fn decode_envelope(&self) -> Result<super::v1::Envelope, DecodeError> {
            super::v1::Envelope::decode(self.envelope.clone().unwrap_or_default())
        }
    }

    impl Message for Delivery {
        fn encode_raw(&self, buf: &mut impl BufMut) {
            if self.sequence != 0 {
                encoding::uint64::encode(1, &self.sequence, buf);
            }
            if let Some(t) = &self.accepted_at {
                encoding::message::encode(2, t, buf);
            }
            if !self.origin_node.is_empty() {
                encoding::string::encode(3, &self.origin_node, buf);
            }
            if self.origin_sequence != 0 {
                encoding::uint64::encode(4, &self.origin_sequence, buf);
            }
            if let Some(e) = &self.envelope {
                encoding::bytes::encode(5, e, buf);
            }
            if !self.envelope_digest.is_empty() {
                encoding::bytes::encode(6, &self.envelope_digest, buf);
            }
            if let Some(r) = &self.replaced_by {
                encoding::message::encode(7, r, buf);
            }
            if self.expired {
                encoding::bool::encode(8, &self.expired, buf);
            }
        }

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            match tag {
                1 => encoding::uint64::merge(wire_type, &mut self.sequence, buf, ctx),
                2 => encoding::message::merge(
                    wire_type,
                    self.accepted_at.get_or_insert_with(Default::default),
                    buf,
                    ctx,
                ),
                3 => encoding::string::merge(wire_type, &mut self.origin_node, buf, ctx),
                4 => encoding::uint64::merge(wire_type, &mut self.origin_sequence, buf, ctx),
                5 => encoding::bytes::merge(
                    wire_type,
                    self.envelope.get_or_insert_with(Bytes::new),
                    buf,
                    ctx,
                ),
                6 => encoding::bytes::merge(wire_type, &mut self.envelope_digest, buf, ctx),
                7 => encoding::message::merge(
                    wire_type,
                    self.replaced_by.get_or_insert_with(Default::default),
                    buf,
                    ctx,
                ),
                8 => encoding::bool::merge(wire_type, &mut self.expired, buf, ctx),
                _ => encoding::skip_field(wire_type, tag, buf, ctx),
            }
        }

        fn encoded_len(&self) -> usize {
            let mut n = 0;
            if self.sequence != 0 {
                n += encoding::uint64::encoded_len(1, &self.sequence);
            }
            if let Some(t) = &self.accepted_at {
                n += encoding::message::encoded_len(2, t);
            }
            if !self.origin_node.is_empty() {
                n += encoding::string::encoded_len(3, &self.origin_node);
            }
            if self.origin_sequence != 0 {
                n += encoding::uint64::encoded_len(4, &self.origin_sequence);
            }
            if let Some(e) = &self.envelope {
                n += encoding::bytes::encoded_len(5, e);
            }
            if !self.envelope_digest.is_empty() {
                n += encoding::bytes::encoded_len(6, &self.envelope_digest);
            }
            if let Some(r) = &self.replaced_by {
                n += encoding::message::encoded_len(7, r);
            }
            if self.expired {
                n += encoding::bool::encoded_len(8, &self.expired);
            }
            n
        }

        fn clear(&mut self) {
            *self = Delivery::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1;
    use proptest::prelude::*;
    use prost::Message;

    /// `beacon.v1.Delivery` as protoc-generated code would have it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(uint64, tag = "1")]
        sequence: u64,
        #[prost(message, optional, tag = "2")]
        accepted_at: Option<prost_types::Timestamp>,
        #[prost(string, tag = "3")]
        origin_node: String,
        #[prost(uint64, tag = "4")]
        origin_sequence: u64,
        #[prost(message, optional, tag = "5")]
        envelope: Option<v1::Envelope>,
        #[prost(bytes = "vec", tag = "6")]
        envelope_digest: Vec<u8>,
        #[prost(message, optional, tag = "7")]
        replaced_by: Option<v1::Replacement>,
        #[prost(bool, tag = "8")]
        expired: bool,
    }

    fn envelope() -> impl Strategy<Value = v1::Envelope> {
        (
            "[a-z/.+]{0,40}",
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(
                (
                    "[a-f0-9]{0,16}",
                    prop::collection::vec(any::<u8>(), 0..80),
                    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..3),
                ),
                0..3,
            ),
        )
            .prop_map(|(payload_type, payload, sigs)| v1::Envelope {
                payload_type,
                payload,
                signatures: sigs
                    .into_iter()
                    .map(|(keyid, sig, cert_chain)| v1::Signature {
                        keyid,
                        sig,
                        cert_chain,
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn encodes_exactly_as_the_generated_message(
            sequence in any::<u64>(),
            seconds in any::<Option<i64>>(),
            origin_node in "\\PC{0,30}",
            origin_sequence in any::<u64>(),
            envelope in prop::option::of(envelope()),
            envelope_digest in prop::collection::vec(any::<u8>(), 0..40),
            replaced_by in prop::option::of((0i32..3, any::<u64>(), "[a-f0-9-]{0,36}")),
            expired in any::<bool>(),
        ) {
            let replaced_by = replaced_by.map(|(how, sequence, id)| v1::Replacement { how, sequence, id });
            let accepted_at = seconds.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 });
            let generated = Generated {
                sequence,
                accepted_at,
                origin_node: origin_node.clone(),
                origin_sequence,
                envelope: envelope.clone(),
                envelope_digest: envelope_digest.clone(),
                replaced_by: replaced_by.clone(),
                expired,
            };
            let ours = v1::Delivery {
                sequence,
                accepted_at,
                origin_node,
                origin_sequence,
                envelope: envelope.as_ref().map(|e| e.encode_to_vec().into()),
                envelope_digest,
                replaced_by,
                expired,
            };
            let bytes = generated.encode_to_vec();
            prop_assert_eq!(ours.encode_to_vec(), bytes.clone());
            prop_assert_eq!(ours.encoded_len(), bytes.len());
            let read = v1::Delivery::decode(bytes.as_slice()).unwrap();
            prop_assert_eq!(&read, &ours);
            if let Some(e) = envelope {
                prop_assert_eq!(read.decode_envelope().unwrap(), e);
            }
            prop_assert_eq!(Generated::decode(ours.encode_to_vec().as_slice()).unwrap(), generated);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(d) = v1::Delivery::decode(bytes.as_slice()) {
                let _ = d.decode_envelope();
                let again = v1::Delivery::decode(d.encode_to_vec().as_slice()).unwrap();
                prop_assert_eq!(again, d);
            }
        }
    }
}
