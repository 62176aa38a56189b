//! Polynomials over GF(2) as restic's chunker uses them.
//!
//! A [`Polynomial`] packs its coefficients into a `u64` (bit `i` is the coefficient of `x^i`).
//! This module owns the arithmetic needed to pick and check a repository's chunker polynomial:
//! degree, multiplication and remainder modulo another polynomial, gcd, the Ben-Or
//! irreducibility test, random degree-53 irreducible polynomials and the hex form stored in
//! `config`. It does not build the chunker's lookup tables or cut chunks.

/// A polynomial over GF(2); bit `i` is the coefficient of `x^i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Polynomial(pub u64);

/// Degree of the polynomials restic generates for new repositories.
pub const CHUNKER_DEGREE: i32 = 53;

/// How many random candidates [`Polynomial::random_irreducible`] tries before it falls back.
/// About one candidate in 27 is irreducible, so 4096 tries fail with probability below 1e-60.
const MAX_RANDOM_TRIES: usize = 4096;

/// The polynomial restic's chunker tests use; irreducible, degree 53.
const FALLBACK: Polynomial = Polynomial(0x3D_A335_8B4D_C173);

impl Polynomial {
    /// The polynomial `x`.
    const X: Polynomial = Polynomial(2);

    /// The degree, or -1 for the zero polynomial.
    pub fn degree(self) -> i32 {
        63 - self.0.leading_zeros() as i32
    }

    /// Whether the polynomial is irreducible over GF(2).
    ///
    /// Ben-Or's test as restic runs it: for `i` in `1..=deg/2`, `gcd(x^(2^i) - x mod f, f)`
    /// must be 1. Constants (degree < 1) are not irreducible.
    pub fn is_irreducible(self) -> bool {
        let deg = self.degree();
        if deg < 1 {
            return false;
        }
        // x^(2^i) mod f, built by squaring.
        let mut power = Polynomial::X.modulo(self);
        for _ in 1..=deg / 2 {
            power = power.mul_mod(power, self);
            let candidate = Polynomial(power.0 ^ Polynomial::X.modulo(self).0);
            if candidate.gcd(self) != Polynomial(1) {
                return false;
            }
        }
        true
    }

    /// A random irreducible polynomial of degree 53, as restic picks for `init`: 54 random
    /// bits with bits 53 and 0 set, retried until irreducible.
    ///
    /// Never fails: after a bounded number of tries (practically unreachable) it returns
    /// restic's well-known test polynomial.
    ///
    /// # Panics
    /// When the operating system's random number generator fails.
    pub fn random_irreducible() -> Polynomial {
        for _ in 0..MAX_RANDOM_TRIES {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("operating system random number generator failed");
            let bits = u64::from_le_bytes(bytes) & ((1 << 54) - 1);
            let candidate = Polynomial(bits | (1 << 53) | 1);
            if candidate.is_irreducible() {
                return candidate;
            }
        }
        FALLBACK
    }

    /// Lowercase hex without `0x` or leading zeros, as restic writes it into `config`
    /// (`"0"` for zero).
    pub fn to_hex(self) -> String {
        format!("{:x}", self.0)
    }

    /// Parses 1 to 16 hex digits of either case (no sign, no `0x`), as Go's
    /// `strconv.ParseUint(s, 16, 64)` accepts them.
    pub fn from_hex(s: &str) -> Option<Polynomial> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Polynomial)
    }

    /// The remainder of `self` divided by `m`; `self` itself when `m` is zero.
    pub fn modulo(self, m: Polynomial) -> Polynomial {
        let dm = m.degree();
        if dm < 0 {
            return self;
        }
        let mut r = self.0;
        loop {
            let dr = 63 - r.leading_zeros() as i32;
            if r == 0 || dr < dm {
                return Polynomial(r);
            }
            r ^= m.0 << (dr - dm);
        }
    }

    /// The product of `self` and `other` modulo `m` (`m` non-zero). Shift-and-reduce keeps
    /// every intermediate below `2^(deg m + 1)`, so nothing overflows even for degree 63.
    pub fn mul_mod(self, other: Polynomial, m: Polynomial) -> Polynomial {
        let dm = m.degree();
        if dm < 1 {
            return Polynomial(0);
        }
        let a = self.modulo(m).0;
        let b = other.modulo(m).0;
        let top = 1u64 << dm;
        let mut acc = 0u64;
        for i in (0..=dm).rev() {
            // acc has degree < dm, so shifting it once fits in u64 and needs one reduction.
            acc <<= 1;
            if acc & top != 0 {
                acc ^= m.0;
            }
            if (b >> i) & 1 == 1 {
                acc ^= a;
            }
        }
        Polynomial(acc)
    }

    /// The greatest common divisor (monic by construction over GF(2)).
    pub fn gcd(self, other: Polynomial) -> Polynomial {
        let (mut a, mut b) = (self, other);
        while b.0 != 0 {
            let r = a.modulo(b);
            a = b;
            b = r;
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Carry-less multiplication of small polynomials (product must fit in u64).
    fn mul(a: u64, b: u64) -> u64 {
        let mut acc = 0;
        for i in 0..64 {
            if (b >> i) & 1 == 1 {
                acc ^= a << i;
            }
        }
        acc
    }

    /// Irreducibility by trial division by every polynomial of degree 1..=deg/2.
    fn brute_force_irreducible(f: Polynomial) -> bool {
        let deg = f.degree();
        if deg < 1 {
            return false;
        }
        let limit = 1u64 << (deg / 2 + 1);
        (2..limit).all(|g| f.modulo(Polynomial(g)).0 != 0)
    }

    #[test]
    fn restic_test_polynomial_is_irreducible() {
        let p = Polynomial(0x3DA3358B4DC173);
        assert_eq!(p.degree(), 53);
        assert!(p.is_irreducible());
        assert_eq!(p.to_hex(), "3da3358b4dc173");
        assert_eq!(Polynomial::from_hex("3DA3358B4DC173"), Some(p));
    }

    #[test]
    fn products_are_reducible() {
        // Every product of two non-constant polynomials is reducible.
        let small = [0b11u64, 0b111, 0b1011, 0b10011, 0b1_0001_1011];
        for &a in &small {
            for &b in &small {
                assert!(!Polynomial(mul(a, b)).is_irreducible(), "{a:b}*{b:b}");
            }
        }
        // A degree-53 product of two irreducibles of degree 26 and 27 (found by search).
        let a = (1u64 << 26..)
            .take(1 << 20)
            .find(|&p| p & 1 == 1 && Polynomial(p).is_irreducible())
            .unwrap();
        let b = (1u64 << 27..)
            .take(1 << 20)
            .find(|&p| p & 1 == 1 && Polynomial(p).is_irreducible())
            .unwrap();
        let prod = Polynomial(mul(a, b));
        assert_eq!(prod.degree(), 53);
        assert!(!prod.is_irreducible());
        // Squares are reducible too.
        let p = Polynomial(mul(
            0x3DA3358B4DC173 & 0x7fff_ffff,
            0x3DA3358B4DC173 & 0x7fff_ffff,
        ));
        assert!(!p.is_irreducible());
    }

    #[test]
    fn constants_and_degree() {
        assert_eq!(Polynomial(0).degree(), -1);
        assert_eq!(Polynomial(1).degree(), 0);
        assert_eq!(Polynomial(u64::MAX).degree(), 63);
        assert!(!Polynomial(0).is_irreducible());
        assert!(!Polynomial(1).is_irreducible());
        assert!(Polynomial(2).is_irreducible());
        assert!(Polynomial(3).is_irreducible());
        assert!(Polynomial(0b111).is_irreducible());
        assert!(!Polynomial(0b101).is_irreducible());
    }

    #[test]
    fn degree_63_arithmetic_does_not_overflow() {
        // x^63 + x + 1 style moduli exercise the top bit.
        let m = Polynomial((1 << 63) | 0b11);
        let a = Polynomial(u64::MAX >> 1);
        let _ = a.mul_mod(a, m);
        let _ = m.is_irreducible();
        assert!(Polynomial(u64::MAX).modulo(m).degree() < 63);
    }

    #[test]
    fn random_irreducible_has_degree_53() {
        for _ in 0..5 {
            let p = Polynomial::random_irreducible();
            assert_eq!(p.degree(), CHUNKER_DEGREE);
            assert_eq!(p.0 & 1, 1);
            assert!(p.is_irreducible());
            assert_eq!(p.to_hex().len(), 14);
        }
    }

    #[test]
    fn hex_rejects_junk() {
        for s in ["", "0x12", "+12", "-1", "12 ", "g", "11112222333344445"] {
            assert_eq!(Polynomial::from_hex(s), None, "{s:?}");
        }
        assert_eq!(
            Polynomial::from_hex("ffffffffffffffff"),
            Some(Polynomial(u64::MAX))
        );
        assert_eq!(Polynomial(0).to_hex(), "0");
    }

    proptest! {
        #[test]
        fn ben_or_matches_trial_division(f in 0u64..(1 << 17)) {
            let f = Polynomial(f);
            prop_assert_eq!(f.is_irreducible(), brute_force_irreducible(f));
        }

        #[test]
        fn mul_mod_matches_schoolbook(a in 0u64..(1 << 31), b in 0u64..(1 << 31), m in 2u64..(1 << 40)) {
            let m = Polynomial(m);
            let want = Polynomial(mul(a, b)).modulo(m);
            prop_assert_eq!(Polynomial(a).mul_mod(Polynomial(b), m), want);
        }

        #[test]
        fn hex_round_trip(v in any::<u64>()) {
            prop_assert_eq!(Polynomial::from_hex(&Polynomial(v).to_hex()), Some(Polynomial(v)));
        }
    }
}
