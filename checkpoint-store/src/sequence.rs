//! DynamoDB Streams sequence numbers.
//!
//! They are decimal strings of 21 to 40 digits: too long for `u64`, possibly too long for
//! `u128`, and wrong when compared as plain strings ("9" > "10"). [`SequenceNumber`] keeps
//! the text exactly as DynamoDB sent it (it goes back verbatim in iterator requests) and
//! orders by numeric value.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The longest sequence number we accept. DynamoDB documents 21-40 digits; the margin lets
/// simulated streams and future formats through while still bounding the input.
pub const MAX_DIGITS: usize = 64;

/// A stream record's position in its shard, ordered numerically.
#[derive(Clone)]
pub struct SequenceNumber(String);

impl SequenceNumber {
    /// A sequence number from `text` if it is one; else `text` back and why not. The
    /// public parsers (`parse`, `FromStr`, `TryFrom`) are in `parse.rs`, with the error.
    pub(crate) fn checked(text: String) -> std::result::Result<Self, (String, &'static str)> {
        let reason = if text.is_empty() {
            Some("it is empty")
        } else if text.len() > MAX_DIGITS {
            Some("it has more than 64 digits")
        } else if !text.bytes().all(|b| b.is_ascii_digit()) {
            Some("it contains a character that is not a decimal digit")
        } else {
            None
        };
        match reason {
            Some(reason) => Err((text, reason)),
            None => Ok(Self(text)),
        }
    }

    /// The text exactly as DynamoDB sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without leading zeros ("0" for zero): the canonical numeric form.
    fn significant(&self) -> &str {
        let trimmed = self.0.trim_start_matches('0');
        if trimmed.is_empty() { "0" } else { trimmed }
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SequenceNumber {
    fn eq(&self, other: &Self) -> bool {
        self.significant() == other.significant()
    }
}

impl Eq for SequenceNumber {}

impl Hash for SequenceNumber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).unwrap()
    }

    #[test]
    fn orders_numerically_not_lexically() {
        assert!(seq("9") < seq("10"));
        assert!(seq("000000000000000000009") < seq("100000000000000000000"));
        assert!(seq("4000000000000000000000000000000000000001") > seq("399999999999999999999"));
    }

    #[test]
    fn leading_zeros_do_not_change_value_but_text_is_kept() {
        let a = seq("000123");
        assert_eq!(a, seq("123"));
        assert_eq!(a.as_str(), "000123");
        assert_eq!(seq("0000"), seq("0"));
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        for bad in ["", "12a", "-1", " 1", "1.0", &"9".repeat(65)] {
            let err = SequenceNumber::parse(bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("sequence number"), "{msg}");
        }
    }

    proptest! {
        #[test]
        fn matches_u128_ordering(a in any::<u128>(), b in any::<u128>(), za in 0usize..5, zb in 0usize..5) {
            let sa = seq(&format!("{}{a}", "0".repeat(za)));
            let sb = seq(&format!("{}{b}", "0".repeat(zb)));
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
            prop_assert_eq!(sa == sb, a == b);
        }

        #[test]
        fn ordering_is_total_and_consistent_for_long_numbers(a in "[0-9]{1,40}", b in "[0-9]{1,40}", c in "[0-9]{1,40}") {
            let (a, b, c) = (seq(&a), seq(&b), seq(&c));
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            if a <= b && b <= c { prop_assert!(a <= c); }
        }

        #[test]
        fn adding_one_digit_in_front_makes_it_larger(a in "[1-9][0-9]{20,38}", d in 1u8..=9) {
            let bigger = seq(&format!("{d}{a}"));
            prop_assert!(bigger > seq(&a));
        }
    }
}
