//! The digits go-cty prints for a number that came from a float64: Go's `big.Float.Text('f', -1)`
//! at 53 bits, which is not Rust's shortest form. Go keeps a full 53-bit mantissa for subnormals
//! (so they print with more digits) and rounds an exact tie between two shortest candidates to
//! the even digit (9293.6519775390625 prints as …062, where Rust prints …063).
//!
//! This is the algorithm of Go's `math/big` `roundShortest`, written again over decimal digit
//! strings, including its comparison of digits by index (not by decimal point).

/// `0.digits × 10^point`: Go's `decimal` (digits without trailing zeros).
pub(crate) struct Digits {
    pub digits: Vec<u8>,
    pub point: i64,
}

impl Digits {
    /// `m × 2^shift` exactly.
    fn of(m: u64, shift: i64) -> Digits {
        // Base 10^9 limbs, least significant first.
        let mut limbs: Vec<u64> = vec![
            m % 1_000_000_000,
            m / 1_000_000_000 % 1_000_000_000,
            m / 1_000_000_000_000_000_000,
        ];
        let mul = |limbs: &mut Vec<u64>, k: u64| {
            let mut carry = 0;
            for limb in limbs.iter_mut() {
                let v = *limb * k + carry;
                *limb = v % 1_000_000_000;
                carry = v / 1_000_000_000;
            }
            while carry > 0 {
                limbs.push(carry % 1_000_000_000);
                carry /= 1_000_000_000;
            }
        };
        let mut left = shift.unsigned_abs();
        while left > 0 {
            let step = left.min(13);
            // 2^13 or 5^13, both below 2^32, so limb × k + carry fits u64.
            mul(
                &mut limbs,
                if shift > 0 {
                    1 << step
                } else {
                    5u64.pow(step as u32)
                },
            );
            left -= step;
        }
        while limbs.len() > 1 && limbs.last() == Some(&0) {
            limbs.pop();
        }
        let mut text = limbs.last().unwrap().to_string();
        for limb in limbs.iter().rev().skip(1) {
            text.push_str(&format!("{limb:09}"));
        }
        let point = text.len() as i64 + shift.min(0);
        let digits = text.trim_end_matches('0').as_bytes().to_vec();
        Digits { digits, point }
    }

    fn at(&self, i: usize) -> u8 {
        self.digits.get(i).copied().unwrap_or(b'0')
    }

    // Rounding to n digits leaves a decimal of n digits or fewer as it is, as in Go.
    fn round_down(&mut self, n: usize) {
        if n >= self.digits.len() {
            return;
        }
        self.digits.truncate(n);
        while self.digits.last() == Some(&b'0') {
            self.digits.pop();
        }
    }

    fn round_up(&mut self, n: usize) {
        if n >= self.digits.len() {
            return;
        }
        self.digits.truncate(n);
        while self.digits.last() == Some(&b'9') {
            self.digits.pop();
        }
        match self.digits.last_mut() {
            Some(d) => *d += 1,
            None => {
                self.digits.push(b'1');
                self.point += 1;
            }
        }
    }

    fn round(&mut self, n: usize) {
        if n >= self.digits.len() {
            return;
        }
        let halfway = self.digits[n] == b'5' && n + 1 == self.digits.len();
        let up = if halfway {
            n > 0 && (self.digits[n - 1] - b'0') & 1 != 0
        } else {
            self.digits[n] >= b'5'
        };
        if up {
            self.round_up(n)
        } else {
            self.round_down(n)
        }
    }
}

/// The shortest digits Go prints for a finite, non-zero float64 (sign not included).
pub(crate) fn go_shortest(f: f64) -> Digits {
    let bits = f.abs().to_bits();
    let (frac, biased) = (bits & ((1 << 52) - 1), (bits >> 52) as i64);
    let (m, q) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | 1 << 52, biased - 1075)
    };
    let mut d = Digits::of(m, q);
    // A 54-bit mantissa whose lowest bit is half an ulp at 53 bits of precision.
    let s = 54 - (64 - m.leading_zeros() as i64);
    let (mant, exp) = (m << s, q - s);
    let lower = Digits::of(mant - 1, exp);
    let upper = Digits::of(mant + 1, exp);
    let inclusive = mant & 2 == 0;
    for i in 0..d.digits.len() {
        let (l, m, u) = (lower.at(i), d.digits[i], upper.at(i));
        let ok_down = l != m || inclusive && i + 1 == lower.digits.len();
        let ok_up = m != u && (inclusive || m + 1 < u || i + 1 < upper.digits.len());
        match (ok_down, ok_up) {
            (true, true) => d.round(i + 1),
            (true, false) => d.round_down(i + 1),
            (false, true) => d.round_up(i + 1),
            (false, false) => continue,
        }
        break;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: f64) -> String {
        let d = go_shortest(f);
        format!("0.{}e{}", String::from_utf8(d.digits).unwrap(), d.point)
    }

    #[test]
    fn what_go_prints() {
        // What Go 1.26 prints with `new(big.Float).SetFloat64(f).Text('e', -1)`; the first two
        // differ from Rust's shortest form.
        assert_eq!(text(9293.651977539063), "0.9293651977539062e4");
        assert_eq!(text(1.134477426500829e-308), "0.11344774265008292e-307");
        assert_eq!(text(0.1), "0.1e0");
        assert_eq!(text(1.5), "0.15e1");
        assert_eq!(text(1e21), "0.1e22");
        assert_eq!(text(f64::MAX), "0.17976931348623157e309");
        assert_eq!(text(5e-324), "0.4940656458412465e-323");
        assert_eq!(text(123456.789e-300), "0.123456789e-294");
    }
}
