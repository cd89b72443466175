//! ISO 3166-1 alpha-2 country codes: the officially assigned list, and a `CountryCode` that can only hold one.

use std::fmt;

/// The 249 officially assigned ISO 3166-1 alpha-2 codes (user-assigned codes such as `XK`
/// and reserved ones such as `UK` or `EU` are not countries here).
pub const ASSIGNED: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// A 26×26 membership table built at compile time, so a lookup is one index.
const TABLE: [bool; 676] = {
    let mut t = [false; 676];
    let mut i = 0;
    while i < ASSIGNED.len() {
        let b = ASSIGNED[i].as_bytes();
        t[(b[0] - b'A') as usize * 26 + (b[1] - b'A') as usize] = true;
        i += 1;
    }
    t
};

/// An assigned ISO 3166-1 alpha-2 code, always upper-case.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Parses a code in any letter case; `None` unless it is an assigned code.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 2 || !b[0].is_ascii_alphabetic() || !b[1].is_ascii_alphabetic() {
            return None;
        }
        Self::from_upper([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()])
    }

    /// Accepts exactly two upper-case ASCII letters forming an assigned code.
    pub fn from_upper(b: [u8; 2]) -> Option<Self> {
        if !b[0].is_ascii_uppercase() || !b[1].is_ascii_uppercase() {
            return None;
        }
        TABLE[(b[0] - b'A') as usize * 26 + (b[1] - b'A') as usize].then_some(Self(b))
    }

    pub fn as_bytes(&self) -> [u8; 2] {
        self.0
    }

    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII upper-case letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_unique_and_complete() {
        assert_eq!(ASSIGNED.len(), 249);
        assert!(
            ASSIGNED.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        assert_eq!(TABLE.iter().filter(|&&x| x).count(), 249);
    }

    #[test]
    fn accepts_assigned_codes_in_any_case() {
        for code in ["MY", "my", "mY", "ID", "US", "GB", "AX", "BQ", "SS", "ZW"] {
            let c = CountryCode::parse(code).expect(code);
            assert_eq!(c.as_str(), code.to_ascii_uppercase());
        }
    }

    #[test]
    fn rejects_unassigned_reserved_and_malformed() {
        for code in [
            "XX", "UK", "EU", "XK", "AA", "ZZ", "", "M", "MYS", "M1", "1M", "É1", "ÀB", " MY",
        ] {
            assert!(
                CountryCode::parse(code).is_none(),
                "{code:?} must be rejected"
            );
        }
    }
}
