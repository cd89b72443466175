//! API keys with scopes. A key is 32 random bytes (`trk_` and 64 hex digits) that only its
//! client holds; the configuration holds its SHA-256 (a key with 256 bits of entropy needs no
//! slow hash), with the client's name and scopes. A request's bearer key is hashed once and
//! compared with every configured hash in constant time. Keys are never logged.

use crate::config::AuthSettings;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Issuing numbers (the GET and the label-run POST).
    Issue,
    /// Reading a number's record.
    Lookup,
    /// Voiding a number.
    Void,
    /// The customer-insurance routes.
    Policy,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Issue, Scope::Lookup, Scope::Void, Scope::Policy];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Issue => "issue",
            Scope::Lookup => "lookup",
            Scope::Void => "void",
            Scope::Policy => "policy",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// One configured key: `<client>:<scope>[+<scope>…]:sha256:<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub client: String,
    scopes: u8,
    hash: [u8; 32],
}

fn valid_client(c: &str) -> bool {
    (1..=64).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyEntry {
    /// Parses an entry; the message names what is wrong, never a hash.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let mut parts = entry.trim().splitn(4, ':');
        let (Some(client), Some(scopes), Some(alg), Some(hash)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(
                "an entry is not <client>:<scopes>:sha256:<hex> (run `trackd key new`)".into(),
            );
        };
        if !valid_client(client) {
            return Err(format!(
                "client '{client}' must be 1 to 64 of a-z, 0-9, '-' and '_'"
            ));
        }
        let mut bits = 0;
        for s in scopes.split('+') {
            bits |= Scope::parse(s)
                .ok_or_else(|| {
                    format!("client '{client}': '{s}' is not a scope (issue, lookup, void, policy)")
                })?
                .bit();
        }
        if alg != "sha256" {
            return Err(format!("client '{client}': the hash must be sha256"));
        }
        let hash = hex32(hash)
            .ok_or_else(|| format!("client '{client}': the hash must be 64 hexadecimal digits"))?;
        Ok(Self {
            client: client.to_owned(),
            scopes: bits,
            hash,
        })
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// The scopes, as the entry writes them.
    pub fn scopes(&self) -> String {
        Scope::ALL
            .into_iter()
            .filter(|s| self.allows(*s))
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// A new key for `client` with `scopes`: the secret (given to the client once) and the entry
/// to configure.
pub fn new_key(client: &str, scopes: &[Scope]) -> Result<(String, String), String> {
    if !valid_client(client) {
        return Err(format!(
            "client '{client}' must be 1 to 64 of a-z, 0-9, '-' and '_'"
        ));
    }
    if scopes.is_empty() {
        return Err("give at least one scope".into());
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| format!("no randomness for a key: {e}"))?;
    let secret = format!("trk_{}", to_hex(&raw));
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let entry = format!(
        "{client}:{}:sha256:{}",
        scopes.join("+"),
        to_hex(&Sha256::digest(secret.as_bytes()))
    );
    Ok((secret, entry))
}

/// Why a request may not use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No key, or not one configured (401).
    Unauthenticated,
    /// A valid key without the route's scope (403).
    Forbidden { client: String, scope: Scope },
}

/// The configured keys; with none, every route is open.
#[derive(Debug, Default)]
pub struct Keys {
    entries: Vec<KeyEntry>,
}

impl Keys {
    pub fn from_settings(a: &AuthSettings) -> Result<Self, String> {
        let entries = a
            .keys
            .iter()
            .map(|k| KeyEntry::parse(k.expose()))
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks an `Authorization` header for `scope`: the client's name (`None` when the
    /// deployment is open), or why not.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        scope: Scope,
    ) -> Result<Option<&str>, Denied> {
        if self.entries.is_empty() {
            return Ok(None);
        }
        let token = authorization
            .and_then(|h| {
                h.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
                    .and_then(|_| h.get(7..))
            })
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthenticated)?;
        let hash: [u8; 32] = Sha256::digest(token).into();
        // Every entry is compared, so the time does not tell which one matched.
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.hash.ct_eq(&hash)) {
                found = Some(e);
            }
        }
        let e = found.ok_or(Denied::Unauthenticated)?;
        if e.allows(scope) {
            Ok(Some(&e.client))
        } else {
            Err(Denied::Forbidden {
                client: e.client.clone(),
                scope,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys(entries: &[&str]) -> Keys {
        Keys::from_settings(&AuthSettings {
            keys: entries.iter().map(|e| Secret::from(*e)).collect(),
            open: false,
        })
        .unwrap()
    }

    #[test]
    fn keys_are_checked_with_their_scopes() {
        let (secret, entry) = new_key("orders", &[Scope::Issue, Scope::Lookup]).unwrap();
        let (other, other_entry) = new_key("insurer", &[Scope::Policy]).unwrap();
        assert!(secret.starts_with("trk_") && secret.len() == 68);
        assert!(!entry.contains(&secret), "the entry holds only a hash");
        let k = keys(&[&entry, &other_entry]);
        let bearer = |s: &str| format!("Bearer {s}");
        assert_eq!(
            k.check(Some(bearer(&secret).as_bytes()), Scope::Issue),
            Ok(Some("orders"))
        );
        assert_eq!(
            k.check(Some(format!("bearer  {secret} ").as_bytes()), Scope::Lookup),
            Ok(Some("orders"))
        );
        assert_eq!(
            k.check(Some(bearer(&secret).as_bytes()), Scope::Policy),
            Err(Denied::Forbidden {
                client: "orders".into(),
                scope: Scope::Policy
            })
        );
        assert_eq!(
            k.check(Some(bearer(&other).as_bytes()), Scope::Policy),
            Ok(Some("insurer"))
        );
        for bad in [
            None,
            Some("Bearer".to_owned()),
            Some("Bearer ".to_owned()),
            Some(secret.clone()),
            Some(format!("Basic {secret}")),
            Some(bearer(&secret[..secret.len() - 1])),
            Some(bearer(&format!("{secret}0"))),
        ] {
            assert_eq!(
                k.check(bad.as_deref().map(str::as_bytes), Scope::Issue),
                Err(Denied::Unauthenticated),
                "{bad:?}"
            );
        }
        // No keys: open.
        assert_eq!(Keys::default().check(None, Scope::Policy), Ok(None));
    }

    #[test]
    fn entries_are_validated_without_echoing_hashes() {
        let (_, entry) = new_key("a", &[Scope::Void]).unwrap();
        let parsed = KeyEntry::parse(&entry).unwrap();
        assert_eq!(parsed.scopes(), "void");
        for (bad, why) in [
            ("nonsense", "<client>:<scopes>"),
            ("A:issue:sha256:00", "client 'A'"),
            ("a:read:sha256:00", "'read' is not a scope"),
            ("a:issue:md5:00", "sha256"),
            ("a:issue:sha256:zz", "64 hexadecimal"),
        ] {
            let e = KeyEntry::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(new_key("a", &[]).is_err());
        assert!(new_key("A B", &[Scope::Issue]).is_err());
    }
}
