//! Durations and money: the two value types every spec uses, parsed and
//! validated in one place.
//!
//! Both travel as strings so that YAML and JSON say exactly what the user
//! wrote: durations like `250ms`, `5s`, `1m30s` (Go's notation, which CEL's
//! `duration()` also reads, so admission rules can compare them) and money as
//! a decimal string of US dollars (`"2.50"`), never a float.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern every duration field carries in the CRD schema.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";
/// The pattern every money field carries in the CRD schema.
pub const MONEY_PATTERN: &str = "^[0-9]{1,12}(\\.[0-9]{1,9})?$";

/// Why a duration or an amount of money was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("duration {0:?} is not of the form 250ms, 5s, 1m30s or 2h")]
    BadDuration(String),
    #[error("duration {0:?} is too long (at most 24h)")]
    DurationTooLong(String),
    #[error("amount {0:?} is not a decimal number of US dollars such as \"2.50\"")]
    BadMoney(String),
}

/// The longest duration any setting accepts; anything longer is a typo.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A duration written as a string (`250ms`, `5s`, `1m30s`, `2h`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UnitError::BadDuration(s.to_owned());
        if s.is_empty() {
            return Err(bad());
        }
        let bytes = s.as_bytes();
        let mut total_ms: u64 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i || i - start > 9 {
                return Err(bad());
            }
            let n: u64 = s[start..i].parse().map_err(|_| bad())?;
            let unit_ms = if s[i..].starts_with("ms") {
                i += 2;
                1
            } else {
                let unit = match bytes.get(i) {
                    Some(b's') => 1_000,
                    Some(b'm') => 60_000,
                    Some(b'h') => 3_600_000,
                    _ => return Err(bad()),
                };
                i += 1;
                unit
            };
            total_ms = total_ms
                .checked_add(n.checked_mul(unit_ms).ok_or_else(bad)?)
                .ok_or_else(bad)?;
        }
        let d = std::time::Duration::from_millis(total_ms);
        if d > MAX_DURATION {
            return Err(UnitError::DurationTooLong(s.to_owned()));
        }
        Ok(Self(d))
    }
}

impl fmt::Display for Duration {
    /// The shortest exact spelling: `1m30s`, `250ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
            "description": "A duration such as 250ms, 5s, 1m30s or 2h."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// An amount of US dollars, exact to the nano-dollar, written as a decimal
/// string. Never negative.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Amounts are rounded to nine decimal places; per-token prices of even
    /// the cheapest models stay exact at that scale.
    pub const SCALE: u32 = 9;

    pub fn new(d: Decimal) -> Option<Self> {
        (!d.is_sign_negative()).then(|| Self(d.round_dp(Self::SCALE).normalize()))
    }

    pub fn get(self) -> Decimal {
        self.0
    }

    pub fn saturating_sub(self, other: Money) -> Money {
        Money((self.0 - other.0).max(Decimal::ZERO))
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// The price of `tokens` at `per_million` dollars per million tokens.
    pub fn per_million(per_million: Money, tokens: u64) -> Money {
        // Most calls have no cached tokens: skip the decimal arithmetic.
        if tokens == 0 {
            return Money::ZERO;
        }
        Self::per_million_in_nanos(per_million, tokens)
            .unwrap_or_else(|| Self::per_million_in_decimals(per_million, tokens))
    }

    /// [`Money::per_million`] in integer nano-dollars, rounded half to
    /// even as `round_dp` does: the same amount for a fifth of the work
    /// (it runs for every request). `None` when the numbers do not fit.
    fn per_million_in_nanos(per_million: Money, tokens: u64) -> Option<Money> {
        let scale = per_million.0.scale();
        let price = u128::try_from(per_million.0.mantissa())
            .ok()?
            .checked_mul(10u128.checked_pow(Self::SCALE.checked_sub(scale)?)?)?;
        let exact = price.checked_mul(u128::from(tokens))?;
        let (mut nanos, rest) = (exact / 1_000_000, exact % 1_000_000);
        if rest > 500_000 || (rest == 500_000 && nanos % 2 == 1) {
            nanos += 1;
        }
        let d = Decimal::try_from_i128_with_scale(i128::try_from(nanos).ok()?, Self::SCALE).ok()?;
        Some(Money(d.normalize()))
    }

    fn per_million_in_decimals(per_million: Money, tokens: u64) -> Money {
        let cost = per_million
            .0
            .checked_mul(Decimal::from(tokens))
            .map_or(Decimal::MAX, |c| c / Decimal::from(1_000_000u32));
        Money(cost.round_dp(Self::SCALE).normalize())
    }

    /// The amount as a float, for metrics (exact sums use the decimal).
    pub fn as_f64(self) -> f64 {
        self.0.mantissa() as f64 / 10f64.powi(self.0.scale() as i32)
    }
}

impl std::ops::Add for Money {
    type Output = Money;

    fn add(self, rhs: Money) -> Money {
        Money(self.0.saturating_add(rhs.0))
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, |a, b| a + b)
    }
}

impl FromStr for Money {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UnitError::BadMoney(s.to_owned());
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty()
            || int.len() > 12
            || !digits(int)
            || !digits(frac)
            || frac.len() > 9
            || (s.contains('.') && frac.is_empty())
        {
            return Err(bad());
        }
        let d = Decimal::from_str(s).map_err(|_| bad())?;
        Money::new(d).ok_or_else(bad)
    }
}

impl fmt::Display for Money {
    /// Always at least cents ("2.5" reads "2.50"), no trailing zeros past
    /// them. Written from the integer mantissa: it runs for every access
    /// log line, where `Decimal`'s own formatting cost ≈0.7 k instructions
    /// (callgrind) and a `String`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        f.write_str(self.write_digits(&mut buf))
    }
}

impl Money {
    /// The amount as [`Display`](fmt::Display) prints it, written into
    /// `buf` (the mantissa has at most 29 digits and the scale is at most
    /// 28, so 64 bytes are always enough).
    pub fn write_digits(self, buf: &mut [u8; 64]) -> &str {
        let scale = self.0.scale() as usize;
        let mut m = self.0.mantissa().unsigned_abs();
        // Trailing zeros of the fraction are not printed past the cents.
        let mut frac_digits = scale;
        while frac_digits > 2 && m.is_multiple_of(10) {
            m /= 10;
            frac_digits -= 1;
        }
        let mut at = buf.len();
        let mut push = |buf: &mut [u8; 64], d: u8| {
            at -= 1;
            buf[at] = d;
        };
        // Cents the value does not have are zeros.
        for _ in frac_digits..2 {
            push(buf, b'0');
        }
        for _ in 0..frac_digits {
            push(buf, b'0' + (m % 10) as u8);
            m /= 10;
        }
        push(buf, b'.');
        loop {
            push(buf, b'0' + (m % 10) as u8);
            m /= 10;
            if m == 0 {
                break;
            }
        }
        // Only ASCII digits and a dot were written.
        std::str::from_utf8(&buf[at..]).unwrap_or("0.00")
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${self}")
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Money {
    fn schema_name() -> Cow<'static, str> {
        "Money".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": MONEY_PATTERN,
            "description": "An amount of US dollars as a decimal string, such as \"2.50\"."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Integer nano-dollars and decimals agree to the last digit and
        /// in how they print, wherever the decimal product is exact (up to
        /// a trillion tokens; past 28 digits decimals round, nanos not).
        #[test]
        fn per_million_in_nanos_is_the_decimal_amount(
            mantissa in 0u64..10_000_000_000_000,
            scale in 0u32..=9,
            tokens in prop_oneof![0u64..10_000, 0u64..1_000_000_000_000],
        ) {
            let price = Money::new(Decimal::from_i128_with_scale(i128::from(mantissa), scale))
                .expect("non-negative");
            let fast = Money::per_million(price, tokens);
            let slow = Money::per_million_in_decimals(price, tokens);
            prop_assert_eq!(fast, slow);
            prop_assert_eq!(fast.to_string(), slow.to_string());
            let f = fast.as_f64();
            let reference = slow.get().to_string().parse::<f64>().expect("number");
            prop_assert!((f - reference).abs() <= reference.abs() * 1e-12);
        }
    }

    proptest! {
        /// The integer formatting prints what the decimal's own did:
        /// at least cents, no trailing zeros past them.
        #[test]
        fn money_prints_as_its_decimal_does(
            mantissa in prop_oneof![0u64..1_000, 0u64..u64::MAX],
            scale in 0u32..=9,
            zeros in 0u32..=3,
        ) {
            // Unnormalized amounts too: sums keep the larger scale.
            let d = Decimal::from_i128_with_scale(
                i128::from(mantissa) * 10i128.pow(zeros),
                scale + zeros,
            );
            let money = Money(d);
            let n = d.normalize();
            let reference = if n.scale() < 2 { format!("{n:.2}") } else { n.to_string() };
            prop_assert_eq!(money.to_string(), reference);
        }
    }

    #[test]
    fn durations_parse_in_go_notation() {
        let ms = |s: &str| s.parse::<Duration>().map(Duration::as_millis);
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("5s"), Ok(5_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("2h"), Ok(7_200_000));
        assert_eq!(ms("0s"), Ok(0));
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "-5s",
            "1.5s",
            "5sec",
            "5S",
            "1d",
            "ms",
            "10000000000s",
        ] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(
            "25h".parse::<Duration>(),
            Err(UnitError::DurationTooLong("25h".into()))
        );
    }

    #[test]
    fn durations_print_their_shortest_spelling() {
        assert_eq!(Duration::from_millis(90_000).to_string(), "1m30s");
        assert_eq!(Duration::from_millis(250).to_string(), "250ms");
        assert_eq!(Duration::from_millis(0).to_string(), "0s");
        assert_eq!(Duration::from_millis(3_601_001).to_string(), "1h1s1ms");
    }

    #[test]
    fn money_parses_decimal_dollars_only() {
        assert_eq!(
            "2.50".parse::<Money>().map(|m| m.to_string()),
            Ok("2.50".into())
        );
        assert_eq!(
            "100".parse::<Money>().map(|m| m.to_string()),
            Ok("100.00".into())
        );
        assert_eq!(
            "0.000000150".parse::<Money>().map(|m| m.to_string()),
            Ok("0.00000015".into())
        );
        for bad in [
            "",
            "-1",
            "1e3",
            "1,50",
            "$2",
            "2.",
            ".5",
            "1.0000000001",
            " 1",
            "NaN",
        ] {
            assert!(bad.parse::<Money>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn token_prices_are_exact() {
        let price: Money = "2.50".parse().expect("valid");
        assert_eq!(Money::per_million(price, 1).to_string(), "0.0000025");
        assert_eq!(Money::per_million(price, 1_000_000).to_string(), "2.50");
        // A million one-token requests cost exactly what one million-token request costs.
        let many: Money = std::iter::repeat_n(Money::per_million(price, 1), 1_000_000).sum();
        assert_eq!(many, Money::per_million(price, 1_000_000));
    }

    proptest! {
        #[test]
        fn duration_display_round_trips(ms in 0u64..86_400_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(d.to_string().parse::<Duration>(), Ok(d));
        }

        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<Duration>();
        }

        #[test]
        fn money_round_trips_and_adds_exactly(a in 0u64..10_000_000_000, b in 0u64..10_000_000_000) {
            let ma: Money = format!("{}.{:09}", a / 1_000_000_000, a % 1_000_000_000).parse().expect("valid");
            let mb: Money = format!("{}.{:09}", b / 1_000_000_000, b % 1_000_000_000).parse().expect("valid");
            prop_assert_eq!(ma.to_string().parse::<Money>(), Ok(ma));
            let sum = ma + mb;
            prop_assert_eq!(sum.saturating_sub(mb), ma);
        }

        #[test]
        fn money_parser_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<Money>();
        }
    }
}
