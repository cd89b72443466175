//! The order behind a tracking-number request: domain types that can only hold valid values,
//! and the validation of an order's fields as sent ([`OrderFields`], from a query string or a
//! JSON body) with every failing field reported at once.

use super::country::CountryCode;
use crate::support::{form, rfc3339};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// Parcel weight in grams (kilograms with three decimals), `1..=9_999_999`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weight(u32);

impl Weight {
    pub const MAX_GRAMS: u32 = 9_999_999;

    pub fn grams(self) -> u32 {
        self.0
    }

    /// A weight read back from a store, if it is one trackd could have accepted.
    pub fn from_grams(grams: u32) -> Option<Self> {
        (1..=Self::MAX_GRAMS)
            .contains(&grams)
            .then_some(Self(grams))
    }

    /// Parses a plain decimal number of kilograms.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        const INVALID: &str = "A valid number is required.";
        let (negative, body) = match s.as_bytes() {
            [b'-', rest @ ..] => (true, rest),
            b => (false, b),
        };
        let (int, frac) = match body.iter().position(|&c| c == b'.') {
            Some(dot) => (&body[..dot], &body[dot + 1..]),
            None => (body, &[][..]),
        };
        let digits = |p: &[u8]| p.iter().all(u8::is_ascii_digit);
        if int.is_empty() && frac.is_empty() || !digits(int) || !digits(frac) {
            return Err(INVALID);
        }
        let int = &int[int.iter().take_while(|&&c| c == b'0').count()..];
        let is_zero = int.is_empty() && frac.iter().all(|&c| c == b'0');
        if negative || is_zero {
            return Err("Must be greater than 0.");
        }
        if frac.len() > 3 {
            return Err("Ensure that there are no more than 3 decimal places.");
        }
        if int.len() > 4 {
            return Err("Ensure this value is less than or equal to 9999.999.");
        }
        // At most four and three digits: no overflow.
        let value = |p: &[u8]| p.iter().fold(0, |v, &c| v * 10 + u32::from(c - b'0'));
        let milli = value(frac) * [1000, 100, 10, 1][frac.len()];
        Ok(Self(value(int) * 1000 + milli))
    }
}

impl std::fmt::Display for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// A customer's display name: trimmed, 1–255 characters, no control characters. Shared, so
/// that the orders of a customer seen before reuse its validated name ([`Known`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerName(Arc<str>);

impl CustomerName {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        Self::from_cow(Cow::Borrowed(s))
    }

    /// [`CustomerName::parse`] of a decoded or borrowed value.
    pub fn from_cow(s: Cow<'_, str>) -> Result<Self, &'static str> {
        let t = s.trim();
        if t.is_empty() {
            return Err("This field may not be blank.");
        }
        // At most 255 characters: 255 bytes always are, and more than 4 × 255 never are.
        if t.len() > 255 && (t.len() > 4 * 255 || t.chars().count() > 255) {
            return Err("Ensure this field has no more than 255 characters.");
        }
        let control = if t.is_ascii() {
            t.bytes().any(|c| c.is_ascii_control())
        } else {
            t.chars().any(char::is_control)
        };
        if control {
            return Err("Must not contain control characters.");
        }
        Ok(Self(Arc::from(t)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A kebab-case slug: `^[a-z0-9]+(-[a-z0-9]+)*$`, at most 255 characters. Shared, as a
/// [`CustomerName`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerSlug(Arc<str>);

impl CustomerSlug {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        Self::from_cow(Cow::Borrowed(s))
    }

    /// [`CustomerSlug::parse`] of a decoded or borrowed value.
    pub fn from_cow(s: Cow<'_, str>) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("This field may not be blank.");
        }
        if s.len() > 255 {
            return Err("Ensure this field has no more than 255 characters.");
        }
        // Words of lower-case letters and digits, joined by single hyphens: no hyphen first,
        // last, or after another.
        let mut after_hyphen = true;
        let words_ok = s.bytes().all(|c| {
            let hyphen = c == b'-';
            let ok = if hyphen {
                !after_hyphen
            } else {
                c.is_ascii_lowercase() || c.is_ascii_digit()
            };
            after_hyphen = hyphen;
            ok
        }) && !after_hyphen;
        if !words_ok {
            return Err(
                "Enter a valid kebab-case slug: lower-case letters and digits, words separated by single hyphens (e.g. 'redbox-logistics').",
            );
        }
        Ok(Self(Arc::from(s.as_ref())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Customers whose orders this thread validated lately, by customer id: a parcel system sends
/// many orders per customer, and an order whose name and slug are sent exactly as a known
/// customer's were (the same bytes, encoded the same way) reuses them, validated and shared,
/// instead of decoding, checking and copying them again.
struct Known {
    slots: [Option<Seen>; KNOWN_SLOTS],
}

/// Customers kept per thread (direct-mapped by id: a new customer replaces the one in its
/// slot).
const KNOWN_SLOTS: usize = 64;

/// One known customer: its id, its name and slug as they were sent, and as validated.
struct Seen {
    id: Uuid,
    name_sent: Sent,
    slug_sent: Sent,
    name: CustomerName,
    slug: CustomerSlug,
}

/// A field as sent, kept inline (no allocation for a customer seen once): whether it was
/// percent-encoded, and its bytes.
#[derive(Clone, Copy)]
struct Sent {
    encoded: bool,
    len: u8,
    bytes: [u8; SENT_MAX],
}

/// Longest name or slug (as sent) that is remembered.
const SENT_MAX: usize = 48;

impl Sent {
    fn of(raw: &Raw<'_>) -> Option<Self> {
        let (encoded, s) = match raw {
            Raw::Value(v) => (false, v.as_ref()),
            Raw::Encoded(s) => (true, *s),
            Raw::Missing | Raw::Invalid(_) => return None,
        };
        let mut bytes = [0; SENT_MAX];
        bytes.get_mut(..s.len())?.copy_from_slice(s.as_bytes());
        Some(Self {
            encoded,
            len: s.len() as u8,
            bytes,
        })
    }

    fn is(&self, raw: &Raw<'_>) -> bool {
        let (encoded, s) = match raw {
            Raw::Value(v) => (false, v.as_ref()),
            Raw::Encoded(s) => (true, *s),
            Raw::Missing | Raw::Invalid(_) => return false,
        };
        encoded == self.encoded && s.as_bytes() == &self.bytes[..usize::from(self.len)]
    }
}

thread_local! {
    static KNOWN: RefCell<Known> = const {
        RefCell::new(Known {
            slots: [const { None }; KNOWN_SLOTS],
        })
    };
}

impl Known {
    fn slot(id: &Uuid) -> usize {
        let (hi, lo) = id.as_u64_pair();
        ((hi ^ lo) as usize) % KNOWN_SLOTS
    }

    /// The validated name and slug of customer `id`, if these are sent as they were before.
    fn find(id: &Uuid, name: &Raw<'_>, slug: &Raw<'_>) -> Option<(CustomerName, CustomerSlug)> {
        KNOWN.with_borrow(|k| {
            let seen = k.slots[Self::slot(id)].as_ref()?;
            (seen.id == *id && seen.name_sent.is(name) && seen.slug_sent.is(slug))
                .then(|| (seen.name.clone(), seen.slug.clone()))
        })
    }

    /// Keeps a customer whose name and slug, sent as `raw`, validated as `valid`.
    fn remember(id: Uuid, raw: (&Raw<'_>, &Raw<'_>), valid: (&CustomerName, &CustomerSlug)) {
        let (Some(name_sent), Some(slug_sent)) = (Sent::of(raw.0), Sent::of(raw.1)) else {
            return;
        };
        KNOWN.with_borrow_mut(|k| {
            k.slots[Self::slot(&id)] = Some(Seen {
                id,
                name_sent,
                slug_sent,
                name: valid.0.clone(),
                slug: valid.1.clone(),
            });
        });
    }
}

/// Parses a customer id: a UUID, hyphenated or as 32 hex digits (no braces or URN form).
pub fn parse_customer_id(s: &str) -> Result<Uuid, &'static str> {
    const MSG: &str = "Must be a valid UUID (hyphenated or 32 hexadecimal digits).";
    if s.len() != 36 && s.len() != 32 {
        return Err(MSG);
    }
    Uuid::try_parse(s).map_err(|_| MSG)
}

/// A validated tracking-number request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub origin: CountryCode,
    pub destination: CountryCode,
    pub weight: Weight,
    pub created_at: Option<OffsetDateTime>,
    pub customer_id: Uuid,
    pub customer_name: CustomerName,
    pub customer_slug: CustomerSlug,
}

/// Every failing field with its messages, in the order of the contract's table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(Vec<(&'static str, Vec<String>)>);

impl FieldErrors {
    pub fn add(&mut self, field: &'static str, msg: impl Into<String>) {
        match self.0.iter_mut().find(|(f, _)| *f == field) {
            Some((_, msgs)) => msgs.push(msg.into()),
            None => self.0.push((field, vec![msg.into()])),
        }
    }

    /// Sets a field's messages, replacing any it had.
    pub fn replace(&mut self, field: &'static str, msgs: Vec<String>) {
        match self.0.iter_mut().find(|(f, _)| *f == field) {
            Some((_, m)) => *m = msgs,
            None => self.0.push((field, msgs)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|(f, _)| *f)
    }

    pub fn messages(&self, field: &str) -> Option<&[String]> {
        self.0
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| m.as_slice())
    }
}

impl Serialize for FieldErrors {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (field, msgs) in &self.0 {
            map.serialize_entry(field, msgs)?;
        }
        map.end()
    }
}

/// Shortens user input quoted back in an error message.
fn quote(s: &str) -> String {
    const MAX: usize = 32;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

/// One field of an order as the client sent it, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Raw<'a> {
    #[default]
    Missing,
    Value(Cow<'a, str>),
    /// Present, percent-encoded as sent: decoded when validated, on the stack.
    Encoded(&'a str),
    /// Present but unusable as text; the message says why.
    Invalid(&'static str),
}

/// The message for a value whose decoded bytes are not UTF-8.
const NOT_UTF8: &str = "Must be valid UTF-8 text.";

/// The message for a parameter given more than once.
pub const REPEATED: &str = "This parameter was given more than once.";

/// The fields of an order as sent (a query string's parameters, or a JSON body's members),
/// before validation: `Order::try_from` validates them all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFields<'a> {
    pub origin_country_id: Raw<'a>,
    pub destination_country_id: Raw<'a>,
    pub weight: Raw<'a>,
    pub created_at: Raw<'a>,
    pub customer_id: Raw<'a>,
    pub customer_name: Raw<'a>,
    pub customer_slug: Raw<'a>,
}

impl<'a> OrderFields<'a> {
    /// The field names, in the contract's order.
    pub const NAMES: [&'static str; 7] = [
        "origin_country_id",
        "destination_country_id",
        "weight",
        "created_at",
        "customer_id",
        "customer_name",
        "customer_slug",
    ];

    /// The fields among decoded `name=value` pairs (a query string's, by
    /// [`crate::support::form::pairs`]); other names are ignored, a field given twice or not
    /// in UTF-8 is invalid.
    pub fn from_pairs<I>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (Cow<'a, str>, Result<Cow<'a, str>, form::InvalidUtf8>)>,
    {
        let mut fields = Self::default();
        for (name, value) in pairs {
            if let Some(slot) = fields.field_mut(&name) {
                *slot = match (&*slot, value) {
                    (Raw::Missing, Ok(v)) => Raw::Value(v),
                    (Raw::Missing, Err(form::InvalidUtf8)) => Raw::Invalid(NOT_UTF8),
                    _ => Raw::Invalid(REPEATED),
                };
            }
        }
        fields
    }

    /// The fields of a query string, in one pass over its bytes ([`form::Components`]): they
    /// validate as `from_pairs(form::pairs(raw))` do, and the values of known fields only are
    /// decoded, when validated.
    pub fn from_query(raw: Option<&'a str>) -> Self {
        let mut fields = Self::default();
        for c in form::Components::new(raw.unwrap_or("")) {
            let slot = if c.key_encoded {
                match form::decode(c.key) {
                    Ok(k) => fields.field_mut(&k),
                    Err(form::InvalidUtf8) => None,
                }
            } else {
                fields.field_mut(c.key)
            };
            if let Some(slot) = slot {
                *slot = match slot {
                    Raw::Missing if c.value_encoded => Raw::Encoded(c.value),
                    Raw::Missing => Raw::Value(Cow::Borrowed(c.value)),
                    _ => Raw::Invalid(REPEATED),
                };
            }
        }
        fields
    }

    /// The field called `name`, if it is one of [`OrderFields::NAMES`].
    pub fn field_mut(&mut self, name: &str) -> Option<&mut Raw<'a>> {
        Some(match name {
            "origin_country_id" => &mut self.origin_country_id,
            "destination_country_id" => &mut self.destination_country_id,
            "weight" => &mut self.weight,
            "created_at" => &mut self.created_at,
            "customer_id" => &mut self.customer_id,
            "customer_name" => &mut self.customer_name,
            "customer_slug" => &mut self.customer_slug,
            _ => return None,
        })
    }
}

impl TryFrom<OrderFields<'_>> for Order {
    type Error = FieldErrors;

    /// Validates every field, reporting each failing one (in the contract's order).
    fn try_from(f: OrderFields<'_>) -> Result<Self, FieldErrors> {
        let mut errors = FieldErrors::default();

        // Each field: the single raw value (or why there is none), then its parse.
        fn field<T>(
            errors: &mut FieldErrors,
            name: &'static str,
            raw: &Raw<'_>,
            required: bool,
            parse: impl for<'x> FnOnce(Cow<'x, str>) -> Result<T, String>,
        ) -> Option<T> {
            // A value is short (an instant, a name): decoded on the stack; what keeps it
            // copies it once.
            let mut buf = [0u8; 128];
            match raw {
                Raw::Value(v) => parse(Cow::Borrowed(v))
                    .map_err(|m| errors.add(name, m))
                    .ok(),
                Raw::Encoded(s) => match form::decode_in(s, &mut buf)
                    .map(|d| d.map(Cow::Borrowed))
                    .unwrap_or_else(|| form::decode(s))
                {
                    Ok(v) => parse(v).map_err(|m| errors.add(name, m)).ok(),
                    Err(form::InvalidUtf8) => {
                        errors.add(name, NOT_UTF8);
                        None
                    }
                },
                Raw::Missing if !required => None,
                Raw::Missing => {
                    errors.add(name, "This field is required.");
                    None
                }
                Raw::Invalid(why) => {
                    errors.add(name, *why);
                    None
                }
            }
        }

        let country = |s: Cow<'_, str>| {
            CountryCode::parse(&s).ok_or_else(|| {
                format!("'{}' is not an ISO 3166-1 alpha-2 country code.", quote(&s))
            })
        };
        let origin = field(
            &mut errors,
            "origin_country_id",
            &f.origin_country_id,
            true,
            country,
        );
        let destination = field(
            &mut errors,
            "destination_country_id",
            &f.destination_country_id,
            true,
            country,
        );
        let weight = field(&mut errors, "weight", &f.weight, true, |s| {
            Weight::parse(&s).map_err(String::from)
        });
        let created_at = field(&mut errors, "created_at", &f.created_at, false, |s| {
            rfc3339::parse(&s).map_err(String::from)
        });
        let customer_id = field(&mut errors, "customer_id", &f.customer_id, true, |s| {
            parse_customer_id(&s).map_err(String::from)
        });
        let known = customer_id
            .as_ref()
            .and_then(|id| Known::find(id, &f.customer_name, &f.customer_slug));
        let (customer_name, customer_slug) = match known {
            Some((name, slug)) => (Some(name), Some(slug)),
            None => {
                let name = field(&mut errors, "customer_name", &f.customer_name, true, |s| {
                    CustomerName::from_cow(s).map_err(String::from)
                });
                let slug = field(&mut errors, "customer_slug", &f.customer_slug, true, |s| {
                    CustomerSlug::from_cow(s).map_err(String::from)
                });
                if let (Some(id), Some(name), Some(slug)) = (customer_id, &name, &slug) {
                    Known::remember(id, (&f.customer_name, &f.customer_slug), (name, slug));
                }
                (name, slug)
            }
        };

        match (
            origin,
            destination,
            weight,
            customer_id,
            customer_name,
            customer_slug,
        ) {
            (
                Some(origin),
                Some(destination),
                Some(weight),
                Some(customer_id),
                Some(customer_name),
                Some(customer_slug),
            ) if errors.is_empty() => Ok(Order {
                origin,
                destination,
                weight,
                created_at,
                customer_id,
                customer_name,
                customer_slug,
            }),
            _ => Err(errors),
        }
    }
}

impl Order {
    /// The normalised parameters, as one string: two requests for the same order (the
    /// retry of an `Idempotency-Key`) have the same fingerprint, any difference another.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.origin.as_str(),
            self.destination.as_str(),
            self.weight.grams(),
            self.created_at
                .map(rfc3339::format_micros)
                .unwrap_or_default(),
            self.customer_id,
            self.customer_name.as_str(),
            self.customer_slug.as_str(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "origin_country_id=my&destination_country_id=ID&weight=1.234\
        &created_at=2018-11-20T19:29:32%2B08:00&customer_id=DE619854B59B425E9DB4943979E1BD49\
        &customer_name=+RedBox%20Logistics+&customer_slug=redbox-logistics&unknown=1";

    fn order(q: &str) -> Result<Order, FieldErrors> {
        Order::try_from(OrderFields::from_pairs(form::pairs(Some(q))))
    }

    fn replace(param: &str, value: Option<&str>) -> String {
        let mut parts: Vec<String> = GOOD
            .split('&')
            .filter(|p| !p.starts_with(&format!("{param}=")))
            .map(String::from)
            .collect();
        if let Some(v) = value {
            parts.push(format!("{param}={v}"));
        }
        parts.join("&")
    }

    fn only_error(q: &str, field: &str) -> String {
        let e = order(q).unwrap_err();
        assert_eq!(e.fields().collect::<Vec<_>>(), vec![field], "query {q}");
        e.messages(field).unwrap().join(" ")
    }

    #[test]
    fn accepts_a_good_order_and_normalises() {
        let o = order(GOOD).unwrap();
        assert_eq!(o.origin.as_str(), "MY");
        assert_eq!(o.destination.as_str(), "ID");
        assert_eq!(o.weight.grams(), 1234);
        assert_eq!(
            o.customer_id.hyphenated().to_string(),
            "de619854-b59b-425e-9db4-943979e1bd49"
        );
        assert_eq!(o.customer_name.as_str(), "RedBox Logistics");
        assert_eq!(o.customer_slug.as_str(), "redbox-logistics");
        assert_eq!(o.created_at.unwrap().offset().whole_hours(), 8);
        assert!(
            order(&replace("created_at", None))
                .unwrap()
                .created_at
                .is_none()
        );
    }

    fn forget_known_customers() {
        KNOWN.with_borrow_mut(|k| k.slots = [const { None }; KNOWN_SLOTS]);
    }

    fn fields<'a>(id: &'a str, name: Raw<'a>, slug: Raw<'a>) -> OrderFields<'a> {
        OrderFields {
            origin_country_id: Raw::Value("MY".into()),
            destination_country_id: Raw::Value("ID".into()),
            weight: Raw::Value("1.5".into()),
            customer_id: Raw::Value(id.into()),
            customer_name: name,
            customer_slug: slug,
            ..OrderFields::default()
        }
    }

    #[test]
    fn a_known_customer_is_reused_only_when_sent_exactly_as_before() {
        forget_known_customers();
        let id = "de619854-b59b-425e-9db4-943979e1bd49";
        let slug = || Raw::Value("redbox-logistics".into());
        let first =
            Order::try_from(fields(id, Raw::Encoded("RedBox%20Logistics"), slug())).unwrap();
        let again =
            Order::try_from(fields(id, Raw::Encoded("RedBox%20Logistics"), slug())).unwrap();
        assert_eq!(again, first);
        assert!(
            Arc::ptr_eq(&again.customer_name.0, &first.customer_name.0),
            "the second order reuses the first one's validated name"
        );
        // The same bytes sent unencoded (a JSON body's literal percent) are another name.
        let literal = Order::try_from(fields(id, Raw::Value("RedBox%20Logistics".into()), slug()));
        assert_eq!(
            literal.unwrap().customer_name.as_str(),
            "RedBox%20Logistics"
        );
        // Sent with spaces around it: trimmed as ever, not taken for the known one's bytes.
        let spaced = Order::try_from(fields(id, Raw::Value(" RedBox ".into()), slug())).unwrap();
        assert_eq!(spaced.customer_name.as_str(), "RedBox");
        // A known id does not excuse a bad name or slug.
        let bad = Order::try_from(fields(id, Raw::Value("Red\u{7}Box".into()), slug()));
        assert_eq!(
            bad.unwrap_err().fields().collect::<Vec<_>>(),
            ["customer_name"]
        );
        let bad = Order::try_from(fields(
            id,
            Raw::Value("RedBox".into()),
            Raw::Value("Red".into()),
        ));
        assert_eq!(
            bad.unwrap_err().fields().collect::<Vec<_>>(),
            ["customer_slug"]
        );
        // Another customer in the same slot replaces the first; the first validates again.
        let other = (0..u128::MAX)
            .map(Uuid::from_u128)
            .find(|u| Known::slot(u) == Known::slot(&first.customer_id) && *u != first.customer_id)
            .unwrap()
            .to_string();
        Order::try_from(fields(&other, Raw::Value("Other".into()), slug())).unwrap();
        let back = Order::try_from(fields(id, Raw::Encoded("RedBox%20Logistics"), slug())).unwrap();
        assert_eq!(back, first);
        assert!(!Arc::ptr_eq(&back.customer_name.0, &first.customer_name.0));
    }

    #[test]
    fn orders_validate_alike_with_and_without_known_customers() {
        forget_known_customers();
        let ids = [
            "de619854-b59b-425e-9db4-943979e1bd49",
            "DE619854B59B425E9DB4943979E1BD49",
            "00000000-0000-0000-0000-000000000040",
        ];
        let names: [fn() -> Raw<'static>; 7] = [
            || Raw::Encoded("RedBox%20Logistics"),
            || Raw::Encoded("RedBox+Logistics"),
            || Raw::Value("RedBox+Logistics".into()),
            || Raw::Value("RedBox Logistics".into()),
            || Raw::Value(" RedBox Logistics".into()),
            || Raw::Encoded("%FF"),
            || Raw::Value("".into()),
        ];
        let slugs: [fn() -> Raw<'static>; 4] = [
            || Raw::Value("redbox-logistics".into()),
            || Raw::Value("redbox".into()),
            || Raw::Value("Redbox".into()),
            || Raw::Missing,
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (i, n, s) = (
                x as usize % 3,
                (x >> 8) as usize % 7,
                (x >> 16) as usize % 4,
            );
            let with_known = Order::try_from(fields(ids[i], names[n](), slugs[s]()));
            let saved = KNOWN.with_borrow_mut(|k| {
                std::mem::replace(&mut k.slots, [const { None }; KNOWN_SLOTS])
            });
            let fresh = Order::try_from(fields(ids[i], names[n](), slugs[s]()));
            KNOWN.with_borrow_mut(|k| k.slots = saved);
            assert_eq!(with_known, fresh, "id {i}, name {n}, slug {s}");
        }
    }

    #[test]
    fn weight_rules() {
        for (s, g) in [
            ("1", 1000),
            ("0.001", 1),
            (".5", 500),
            ("9999.999", 9_999_999),
            ("0009.5", 9500),
            ("3.", 3000),
        ] {
            assert_eq!(Weight::parse(s).map(Weight::grams), Ok(g), "{s}");
        }
        for (s, msg) in [
            ("0", "greater than 0"),
            ("0.000", "greater than 0"),
            ("-1", "greater than 0"),
            ("1.2345", "3 decimal places"),
            ("10000", "less than or equal to 9999.999"),
            ("99999999999999999999999", "less than or equal"),
            ("1e3", "valid number"),
            ("NaN", "valid number"),
            ("inf", "valid number"),
            ("", "valid number"),
            (".", "valid number"),
            ("1.2.3", "valid number"),
            ("+1", "valid number"),
            (" 1", "valid number"),
            ("1,5", "valid number"),
        ] {
            let e = Weight::parse(s).unwrap_err();
            assert!(e.contains(msg), "{s:?}: {e}");
        }
        assert_eq!(Weight::parse("1.5").unwrap().to_string(), "1.500");
        for (grams, kg) in [
            (1234, "1.234"),
            (1, "0.001"),
            (9_999_999, "9999.999"),
            (20_000, "20.000"),
        ] {
            assert_eq!(Weight::from_grams(grams).unwrap().to_string(), kg);
        }
        assert_eq!(Weight::from_grams(0), None);
        assert_eq!(Weight::from_grams(10_000_000), None);
    }

    #[test]
    fn country_rules() {
        let m = only_error(
            &replace("origin_country_id", Some("XX")),
            "origin_country_id",
        );
        assert_eq!(m, "'XX' is not an ISO 3166-1 alpha-2 country code.");
        only_error(
            &replace("destination_country_id", Some("MYS")),
            "destination_country_id",
        );
        only_error(
            &replace("destination_country_id", Some("M1")),
            "destination_country_id",
        );
        let long = "A".repeat(100);
        let m = only_error(
            &replace("origin_country_id", Some(&long)),
            "origin_country_id",
        );
        assert!(m.len() < 100, "quoted input is shortened: {m}");
    }

    #[test]
    fn uuid_rules() {
        assert!(
            order(&replace(
                "customer_id",
                Some("de619854-b59b-425e-9db4-943979e1bd49")
            ))
            .is_ok()
        );
        for bad in [
            "",
            "xyz",
            "{de619854-b59b-425e-9db4-943979e1bd49}",
            "de619854-b59b-425e-9db4-943979e1bd4g",
            "urn:uuid:de619854-b59b-425e-9db4-943979e1bd49",
        ] {
            only_error(&replace("customer_id", Some(bad)), "customer_id");
        }
    }

    #[test]
    fn name_rules() {
        assert!(
            only_error(&replace("customer_name", Some("+++")), "customer_name").contains("blank")
        );
        assert!(
            only_error(
                &replace("customer_name", Some(&"é".repeat(256))),
                "customer_name"
            )
            .contains("255")
        );
        assert!(order(&replace("customer_name", Some(&"é".repeat(255)))).is_ok());
        assert!(
            only_error(&replace("customer_name", Some("a%00b")), "customer_name")
                .contains("control")
        );
        assert!(
            only_error(&replace("customer_name", Some("a%FFb")), "customer_name").contains("UTF-8")
        );
        assert!(order(&replace("customer_name", Some("Ünïcødé 株式会社"))).is_ok());
    }

    #[test]
    fn slug_rules() {
        for good in ["a", "redbox-logistics", "x-1-2", "abc123"] {
            assert!(
                order(&replace("customer_slug", Some(good))).is_ok(),
                "{good}"
            );
        }
        for bad in ["veera_veera", "Redbox", "-a", "a-", "a--b", "a b", "é"] {
            only_error(&replace("customer_slug", Some(bad)), "customer_slug");
        }
        assert!(only_error(&replace("customer_slug", Some("")), "customer_slug").contains("blank"));
        assert!(
            only_error(
                &replace("customer_slug", Some(&"a".repeat(256))),
                "customer_slug"
            )
            .contains("255")
        );
    }

    #[test]
    fn created_at_rules() {
        for bad in [
            "2018-11-20T19:29:32%2B08:0",
            "2018-11-20",
            "yesterday",
            "",
            "2018-13-20T19:29:32Z",
        ] {
            only_error(&replace("created_at", Some(bad)), "created_at");
        }
        assert!(order(&replace("created_at", Some("2018-11-20T11:29:32.123456Z"))).is_ok());
    }

    #[test]
    fn reports_every_failing_field_at_once_in_contract_order() {
        let e = order("weight=0&origin_country_id=XX&customer_slug=A&weight=2").unwrap_err();
        assert_eq!(
            e.fields().collect::<Vec<_>>(),
            [
                "origin_country_id",
                "destination_country_id",
                "weight",
                "customer_id",
                "customer_name",
                "customer_slug"
            ]
        );
        assert_eq!(
            e.messages("weight").unwrap(),
            ["This parameter was given more than once."]
        );
        assert_eq!(
            e.messages("destination_country_id").unwrap(),
            ["This field is required."]
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json["origin_country_id"][0],
            "'XX' is not an ISO 3166-1 alpha-2 country code."
        );
    }
}
