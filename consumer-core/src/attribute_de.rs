//! Decoding images straight from the SDK's `AttributeValue`s, borrowed: no copy of the
//! item is made before serde sees it (the shape of `serde_dynamo`'s deserializer, without
//! its owned input).
//!
//! Its errors never carry item values: serde's "invalid type"/"invalid value" messages
//! describe the kind of value found (`a string`), not the value itself.

use std::collections::HashMap;
use std::fmt;

use aws_sdk_dynamodbstreams::types::AttributeValue;
use serde::de::value::{BorrowedBytesDeserializer, BorrowedStrDeserializer, MapAccessDeserializer};
use serde::de::{self, DeserializeSeed, Expected, IntoDeserializer, Unexpected, Visitor};

/// Why an image did not decode; names the expected type and the kind of value found.
#[derive(Debug)]
pub(crate) struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self(format!("invalid type: {}, expected {exp}", kind_of(&unexp)))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self(format!(
            "invalid value: {}, expected {exp}",
            kind_of(&unexp)
        ))
    }

    fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
        Self(format!("invalid length {len}, expected {exp}"))
    }
}

/// What kind of value `unexp` is, without the value.
fn kind_of(unexp: &Unexpected<'_>) -> &'static str {
    match unexp {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "an integer",
        Unexpected::Float(_) => "a floating point number",
        Unexpected::Char(_) => "a character",
        Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "binary",
        Unexpected::Unit => "null",
        Unexpected::Option => "an optional value",
        Unexpected::NewtypeStruct => "a newtype struct",
        Unexpected::Seq => "a list",
        Unexpected::Map => "a map",
        Unexpected::Enum => "an enum",
        Unexpected::UnitVariant | Unexpected::NewtypeVariant => "an enum variant",
        Unexpected::TupleVariant | Unexpected::StructVariant => "an enum variant",
        Unexpected::Other(_) => "a value",
    }
}

/// An item (an image or keys) as a serde map, borrowed.
pub(crate) struct ItemDeserializer<'a>(pub(crate) &'a HashMap<String, AttributeValue>);

impl<'de> de::Deserializer<'de> for ItemDeserializer<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_map(MapDe {
            entries: self.0.iter(),
            value: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

/// One attribute value, borrowed.
struct ValueDeserializer<'a>(&'a AttributeValue);

/// A number attribute (`N`, or an element of `NS`): its decimal text.
struct NumberDeserializer<'a>(&'a str);

impl<'de> NumberDeserializer<'de> {
    fn visit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let text = self.0;
        if !text.contains(['.', 'e', 'E']) {
            if let Ok(n) = text.parse::<u64>() {
                return visitor.visit_u64(n);
            }
            if let Ok(n) = text.parse::<i64>() {
                return visitor.visit_i64(n);
            }
            if let Ok(n) = text.parse::<u128>() {
                return visitor.visit_u128(n);
            }
            if let Ok(n) = text.parse::<i128>() {
                return visitor.visit_i128(n);
            }
        }
        match text.parse::<f64>() {
            Ok(n) => visitor.visit_f64(n),
            Err(_) => Err(de::Error::custom("a number attribute that is not a number")),
        }
    }
}

impl<'de> de::Deserializer<'de> for NumberDeserializer<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.visit(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            AttributeValue::S(text) => visitor.visit_borrowed_str(text),
            AttributeValue::N(text) => NumberDeserializer(text).visit(visitor),
            AttributeValue::Bool(b) => visitor.visit_bool(*b),
            AttributeValue::Null(_) => visitor.visit_unit(),
            AttributeValue::B(blob) => visitor.visit_borrowed_bytes(blob.as_ref()),
            AttributeValue::M(map) => visitor.visit_map(MapDe {
                entries: map.iter(),
                value: None,
            }),
            AttributeValue::L(list) => {
                visitor.visit_seq(SeqDe(list.iter().map(ValueDeserializer as fn(_) -> _)))
            }
            AttributeValue::Ss(texts) => visitor.visit_seq(SeqDe(
                texts
                    .iter()
                    .map((|t| BorrowedStrDeserializer::new(t)) as fn(&'de String) -> _),
            )),
            AttributeValue::Ns(numbers) => visitor.visit_seq(SeqDe(
                numbers
                    .iter()
                    .map((|n| NumberDeserializer(n)) as fn(&'de String) -> _),
            )),
            AttributeValue::Bs(blobs) => visitor.visit_seq(SeqDe(blobs.iter().map(
                (|b: &'de aws_smithy_types::Blob| BorrowedBytesDeserializer::new(b.as_ref()))
                    as fn(&'de _) -> _,
            ))),
            _ => Err(de::Error::custom(
                "an attribute type this SDK version does not know",
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            AttributeValue::Null(_) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        match self.0 {
            // A unit variant as its name; any other variant as a map of one entry.
            AttributeValue::S(text) => visitor.visit_enum(text.as_str().into_deserializer()),
            AttributeValue::M(map) => visitor.visit_enum(MapAccessDeserializer::new(MapDe {
                entries: map.iter(),
                value: None,
            })),
            _ => Err(de::Error::invalid_type(
                Unexpected::Other("value"),
                &"an enum",
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct MapDe<'a> {
    entries: std::collections::hash_map::Iter<'a, String, AttributeValue>,
    value: Option<&'a AttributeValue>,
}

impl<'de> de::MapAccess<'de> for MapDe<'de> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        match self.entries.next() {
            Some((name, value)) => {
                self.value = Some(value);
                seed.deserialize(BorrowedStrDeserializer::new(name))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        match self.value.take() {
            Some(value) => seed.deserialize(ValueDeserializer(value)),
            None => Err(de::Error::custom("a map value without its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct SeqDe<I>(I);

impl<'de, I, D> de::SeqAccess<'de> for SeqDe<I>
where
    I: ExactSizeIterator<Item = D>,
    D: de::Deserializer<'de, Error = DecodeError>,
{
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        self.0.next().map(|d| seed.deserialize(d)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_smithy_types::Blob;
    use serde::Deserialize;
    use std::collections::BTreeSet;

    #[derive(Debug, Deserialize, PartialEq)]
    enum Colour {
        Red,
        Rgb(u8, u8, u8),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Everything {
        s: String,
        n: u32,
        neg: i64,
        f: f64,
        b: bool,
        bin: serde_bytes_like::Bytes,
        list: Vec<u8>,
        map: HashMap<String, String>,
        ss: BTreeSet<String>,
        ns: Vec<u64>,
        missing: Option<String>,
        null: Option<String>,
        colour: Colour,
        rgb: Colour,
    }

    /// `Vec<u8>` from bytes (serde's `Vec<u8>` wants a sequence).
    mod serde_bytes_like {
        #[derive(Debug, PartialEq)]
        pub struct Bytes(pub Vec<u8>);
        impl<'de> serde::Deserialize<'de> for Bytes {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }
    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.to_owned())
    }

    #[test]
    fn decodes_every_attribute_type_from_borrowed_values() {
        let item = HashMap::from([
            ("s".to_owned(), s("text")),
            ("n".to_owned(), n("42")),
            ("neg".to_owned(), n("-7")),
            ("f".to_owned(), n("1.5")),
            ("b".to_owned(), AttributeValue::Bool(true)),
            ("bin".to_owned(), AttributeValue::B(Blob::new(vec![1, 2]))),
            ("list".to_owned(), AttributeValue::L(vec![n("1"), n("2")])),
            (
                "map".to_owned(),
                AttributeValue::M(HashMap::from([("k".to_owned(), s("v"))])),
            ),
            (
                "ss".to_owned(),
                AttributeValue::Ss(vec!["a".into(), "b".into()]),
            ),
            (
                "ns".to_owned(),
                AttributeValue::Ns(vec!["3".into(), "4".into()]),
            ),
            ("null".to_owned(), AttributeValue::Null(true)),
            ("colour".to_owned(), s("Red")),
            (
                "rgb".to_owned(),
                AttributeValue::M(HashMap::from([(
                    "Rgb".to_owned(),
                    AttributeValue::L(vec![n("1"), n("2"), n("3")]),
                )])),
            ),
        ]);
        let decoded = Everything::deserialize(ItemDeserializer(&item)).unwrap();
        assert_eq!(decoded.s, "text");
        assert_eq!((decoded.n, decoded.neg, decoded.f), (42, -7, 1.5));
        assert!(decoded.b);
        assert_eq!(decoded.bin.0, vec![1, 2]);
        assert_eq!(decoded.list, vec![1, 2]);
        assert_eq!(decoded.map["k"], "v");
        assert_eq!(decoded.ss.len(), 2);
        assert_eq!(decoded.ns, vec![3, 4]);
        assert_eq!((decoded.missing, decoded.null), (None, None));
        assert_eq!(decoded.colour, Colour::Red);
        assert_eq!(decoded.rgb, Colour::Rgb(1, 2, 3));
    }

    #[test]
    fn errors_name_the_kind_of_value_never_the_value() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Counter {
            count: u32,
        }
        let item = HashMap::from([("count".to_owned(), s("alice@example.com"))]);
        let err = Counter::deserialize(ItemDeserializer(&item)).unwrap_err();
        assert_eq!(err.to_string(), "invalid type: a string, expected u32");
        let item = HashMap::from([("count".to_owned(), n("-5"))]);
        let err = Counter::deserialize(ItemDeserializer(&item)).unwrap_err();
        assert!(!err.to_string().contains("-5"), "{err}");
    }
}
