//! cty numbers: arbitrary precision, with go-cty's rules for which msgpack form each one takes.

use std::fmt;

use crate::shortest::go_shortest;

/// Digits plus exponent beyond which a number is refused: its plain decimal text (the only form
/// go-cty writes) would be over 10 000 characters.
const MAX_TEXT_LEN: usize = 10_000;

/// A cty number: an `i64`, an `f64`, or a decimal of any length.
///
/// Numbers compare by value. Where the value came from still matters on the wire, as it does in
/// go-cty: a number decoded from a msgpack float64 prints as that float's shortest decimal
/// (`0.1`), and a decimal parsed from text keeps its digits, so `0.1` parsed from text is not
/// the float64 nearest to it and encodes as the string `"0.1"`.
///
/// ```
/// use rpcplugin_cty::Number;
/// assert_eq!(Number::parse("1e3")?, Number::from(1000));
/// assert_eq!(Number::parse("123456789012345678901234567890")?.to_string(), "123456789012345678901234567890");
/// assert_eq!(Number::from_f64(0.25).unwrap(), Number::parse("0.25")?);
/// assert!(Number::parse("1.5.2").is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Debug)]
pub struct Number(Repr);

#[derive(Clone, Debug)]
enum Repr {
    /// Every integer that fits, whatever its source.
    Int(i64),
    /// A float64 that is not an integer, or an infinity.
    Float(f64),
    /// Anything else: integers beyond `i64`, and fractions parsed from text.
    Decimal(Decimal),
}

/// `digits × 10^exponent`, normalized: `digits` has no leading or trailing zeros and is not empty.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

/// How a number is written in msgpack, by go-cty's rule: an integer that fits `i64` as an
/// integer, any other value a float64 holds exactly as a float64, everything else as text.
pub(crate) enum Wire<'a> {
    Int(i64),
    Float(f64),
    Text(std::borrow::Cow<'a, str>),
}

impl Number {
    /// Positive infinity (msgpack only: JSON cannot carry it).
    pub const INFINITY: Number = Number(Repr::Float(f64::INFINITY));
    /// Negative infinity.
    pub const NEG_INFINITY: Number = Number(Repr::Float(f64::NEG_INFINITY));

    /// The number a float64 holds exactly; `None` for NaN, which cty has no value for.
    pub fn from_f64(f: f64) -> Option<Number> {
        if f.is_nan() {
            return None;
        }
        if f.is_infinite() || f.fract() != 0.0 {
            return Some(Number(Repr::Float(f)));
        }
        // An integral float: an `i64` if it fits, else the decimal of the shortest digits
        // go-cty prints for it (which it also writes to msgpack, as text).
        if (i64::MIN as f64..-(i64::MIN as f64)).contains(&f) {
            return Some(Number(Repr::Int(f as i64)));
        }
        Some(Number(Repr::Decimal(Decimal::go_shortest(f))))
    }

    /// Parses decimal text: `[+-]digits[.digits][e[+-]digits]`, as go-cty's `ParseNumberVal`.
    pub fn parse(text: &str) -> Result<Number, String> {
        let bad = |why: &str| format!("{text:?} is not a number: {why}");
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(at) => {
                let e = &rest[at + 1..];
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("the exponent must be digits"));
                }
                let exp: i64 = e.parse().map_err(|_| bad("the exponent is too large"))?;
                (&rest[..at], exp)
            }
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() {
            return Err(bad("digits are required"));
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad("only digits, one '.' and an exponent are allowed"));
        }
        let all = format!("{int}{frac}");
        let trimmed = all.trim_start_matches('0');
        let digits = trimmed.trim_end_matches('0');
        if digits.is_empty() {
            return Ok(Number(Repr::Int(0)));
        }
        let exponent = exp
            .checked_sub(frac.len() as i64)
            .and_then(|e| e.checked_add((trimmed.len() - digits.len()) as i64))
            .ok_or_else(|| bad("the exponent is too large"))?;
        if exponent.unsigned_abs() as usize + digits.len() > MAX_TEXT_LEN {
            return Err(bad("its decimal form would be over 10000 digits long"));
        }
        Ok(Number::from_decimal(Decimal {
            negative,
            digits: digits.to_owned(),
            exponent,
        }))
    }

    fn from_decimal(d: Decimal) -> Number {
        if d.exponent >= 0 && d.digits.len() as i64 + d.exponent <= 19 {
            let text = format!(
                "{}{}{}",
                if d.negative { "-" } else { "" },
                d.digits,
                "0".repeat(d.exponent as usize)
            );
            if let Ok(i) = text.parse::<i64>() {
                return Number(Repr::Int(i));
            }
        }
        Number(Repr::Decimal(d))
    }

    /// The value as an `i64`, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self.0 {
            Repr::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The nearest float64 (an infinity beyond its range).
    pub fn as_f64(&self) -> f64 {
        match &self.0 {
            Repr::Int(i) => *i as f64,
            Repr::Float(f) => *f,
            Repr::Decimal(d) => d.to_string().parse().unwrap_or(f64::NAN),
        }
    }

    /// Whether the number is an integer (infinities are not).
    pub fn is_integer(&self) -> bool {
        match &self.0 {
            Repr::Int(_) => true,
            Repr::Float(_) => false,
            Repr::Decimal(d) => d.exponent >= 0,
        }
    }

    /// Whether the number is an infinity.
    pub fn is_infinite(&self) -> bool {
        matches!(self.0, Repr::Float(f) if f.is_infinite())
    }

    pub(crate) fn wire(&self) -> Wire<'_> {
        match &self.0 {
            Repr::Int(i) => Wire::Int(*i),
            Repr::Float(f) => Wire::Float(*f),
            Repr::Decimal(d) => match d.exact_f64() {
                Some(f) if d.exponent < 0 => Wire::Float(f),
                _ => Wire::Text(d.to_string().into()),
            },
        }
    }
}

impl Decimal {
    /// The decimal Go prints for a finite, non-zero float64.
    fn go_shortest(f: f64) -> Decimal {
        let d = go_shortest(f);
        Decimal {
            negative: f < 0.0,
            exponent: d.point - d.digits.len() as i64,
            digits: String::from_utf8(d.digits).expect("ASCII digits"),
        }
    }

    /// The float64 that is exactly this decimal, if there is one.
    fn exact_f64(&self) -> Option<f64> {
        let text = self.to_string();
        let f: f64 = text.parse().ok()?;
        if !f.is_finite() || f == 0.0 {
            return None;
        }
        // Rust prints a float to 1100 places exactly (every float64 has at most 1074).
        let exact = Number::parse(&format!("{f:.1100}")).ok()?;
        matches!(&exact.0, Repr::Decimal(d) if d == self).then_some(f)
    }
}

/// Plain decimal text, never an exponent: what go-cty writes (`Text('f', -1)`) and JSON carries.
/// Infinities print as `+Inf` and `-Inf`, as Go does.
impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Int(i) => write!(f, "{i}"),
            Repr::Float(x) if x.is_infinite() => {
                f.write_str(if *x > 0.0 { "+Inf" } else { "-Inf" })
            }
            // Go's shortest digits at 53 bits (see `shortest`), in plain form.
            Repr::Float(x) => Decimal::go_shortest(*x).fmt(f),
            Repr::Decimal(d) => d.fmt(f),
        }
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        let n = self.digits.len() as i64;
        if self.exponent >= 0 {
            write!(f, "{}{}", self.digits, "0".repeat(self.exponent as usize))
        } else if -self.exponent < n {
            let (int, frac) = self.digits.split_at((n + self.exponent) as usize);
            write!(f, "{int}.{frac}")
        } else {
            write!(
                f,
                "0.{}{}",
                "0".repeat((-self.exponent - n) as usize),
                self.digits
            )
        }
    }
}

impl PartialEq for Number {
    fn eq(&self, other: &Number) -> bool {
        match (&self.0, &other.0) {
            (Repr::Int(a), Repr::Int(b)) => a == b,
            (Repr::Float(a), Repr::Float(b)) => a == b,
            (Repr::Decimal(a), Repr::Decimal(b)) => a == b,
            (Repr::Float(f), Repr::Decimal(d)) | (Repr::Decimal(d), Repr::Float(f)) => {
                d.exact_f64() == Some(*f)
            }
            _ => false,
        }
    }
}

impl From<i64> for Number {
    fn from(i: i64) -> Number {
        Number(Repr::Int(i))
    }
}

impl From<i32> for Number {
    fn from(i: i32) -> Number {
        Number(Repr::Int(i.into()))
    }
}

impl From<u64> for Number {
    fn from(u: u64) -> Number {
        match i64::try_from(u) {
            Ok(i) => Number(Repr::Int(i)),
            Err(_) => Number::parse(&u.to_string()).expect("a u64's digits parse"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        Number::parse(s).unwrap().to_string()
    }

    #[test]
    fn parsing_normalizes_to_plain_decimal_text() {
        assert_eq!(text("0"), "0");
        assert_eq!(text("-0.000"), "0");
        assert_eq!(text("1.50"), "1.5");
        assert_eq!(text("+12e-3"), "0.012");
        assert_eq!(text(".5"), "0.5");
        assert_eq!(text("5."), "5");
        assert_eq!(text("1e20"), "100000000000000000000");
        assert_eq!(text("-9223372036854775808"), "-9223372036854775808");
        assert_eq!(
            Number::parse("-9223372036854775808").unwrap().as_i64(),
            Some(i64::MIN)
        );
        assert_eq!(Number::parse("9223372036854775808").unwrap().as_i64(), None);
        for bad in [
            "", "-", ".", "1e", "1e+", "0x10", "1..2", "1,5", "Inf", "1e99999",
        ] {
            assert!(Number::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wire_forms_follow_go_cty() {
        let wire = |n: Number| match n.wire() {
            Wire::Int(i) => format!("int {i}"),
            Wire::Float(f) => format!("float {f}"),
            Wire::Text(t) => format!("text {t}"),
        };
        assert_eq!(wire(Number::parse("300").unwrap()), "int 300");
        assert_eq!(wire(Number::parse("1.5").unwrap()), "float 1.5");
        assert_eq!(wire(Number::parse("0.1").unwrap()), "text 0.1");
        assert_eq!(wire(Number::from_f64(0.1).unwrap()), "float 0.1");
        assert_eq!(wire(Number::from(u64::MAX)), "text 18446744073709551615");
        // 2^70 is exactly a float64, but an integer: go-cty writes integers beyond i64 as text,
        // and a float64's text is its shortest digits (Go's `Text('f', -1)` at 53 bits).
        assert_eq!(
            wire(Number::from_f64(2f64.powi(70)).unwrap()),
            "text 1180591620717411300000"
        );
        assert_eq!(
            wire(Number::parse("1180591620717411303424").unwrap()),
            "text 1180591620717411303424"
        );
        assert_eq!(wire(Number::from_f64(3.0).unwrap()), "int 3");
        assert_eq!(wire(Number::INFINITY), "float inf");
    }

    #[test]
    fn equality_is_by_value() {
        assert_eq!(
            Number::from_f64(0.5).unwrap(),
            Number::parse("0.5").unwrap()
        );
        assert_ne!(
            Number::from_f64(0.1).unwrap(),
            Number::parse("0.1").unwrap()
        );
        assert_eq!(
            Number::from_f64(1e20).unwrap(),
            Number::parse("1e20").unwrap()
        );
        assert_eq!(Number::from(7u64), Number::from(7i64));
    }
}
