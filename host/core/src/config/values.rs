//! Value types of config keys that carry their own rule: the accepted range
//! or form is part of the type, so it is written once and appears in the
//! error text, the key reference and `telemctl config defaults`.

#[cfg(feature = "reference")]
use std::borrow::Cow;
use std::fmt;

#[cfg(feature = "reference")]
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Unexpected};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An integer in `LO..=HI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bounded<const LO: u64, const HI: u64>(u64);

impl<const LO: u64, const HI: u64> Bounded<LO, HI> {
    /// `n`, which must be in range (for defaults written in code).
    pub const fn new(n: u64) -> Self {
        assert!(n >= LO && n <= HI, "default out of its own range");
        Bounded(n)
    }

    /// The value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The smallest value accepted.
    pub const MIN: u64 = LO;
    /// The largest value accepted.
    pub const MAX: u64 = HI;
}

impl<const LO: u64, const HI: u64> PartialEq<u64> for Bounded<LO, HI> {
    fn eq(&self, other: &u64) -> bool {
        self.0 == *other
    }
}

impl<const LO: u64, const HI: u64> fmt::Display for Bounded<LO, HI> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<const LO: u64, const HI: u64> Serialize for Bounded<LO, HI> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de, const LO: u64, const HI: u64> Deserialize<'de> for Bounded<LO, HI> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const LO: u64, const HI: u64>;
        impl<const LO: u64, const HI: u64> de::Visitor<'_> for V<LO, HI> {
            type Value = Bounded<LO, HI>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an integer in {LO}..{HI}")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                u64::try_from(n)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                if (LO..=HI).contains(&n) {
                    Ok(Bounded(n))
                } else {
                    Err(E::invalid_value(Unexpected::Unsigned(n), &self))
                }
            }
        }
        d.deserialize_i64(V::<LO, HI>)
    }
}

#[cfg(feature = "reference")]
impl<const LO: u64, const HI: u64> JsonSchema for Bounded<LO, HI> {
    fn schema_name() -> Cow<'static, str> {
        format!("Integer_{LO}_{HI}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": LO, "maximum": HI})
    }
}

/// A count that may be switched off: -1 (off) or a non-negative integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit(Option<u64>);

impl Limit {
    /// No limit.
    pub const OFF: Limit = Limit(None);

    /// A limit of `n`.
    pub const fn at(n: u64) -> Limit {
        Limit(Some(n))
    }

    /// The limit, `None` when off.
    pub const fn get(self) -> Option<u64> {
        self.0
    }
}

/// `-1` is off, as in the file.
impl PartialEq<i64> for Limit {
    fn eq(&self, other: &i64) -> bool {
        match self.0 {
            None => *other == -1,
            Some(n) => i64::try_from(n).is_ok_and(|n| n == *other),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_i64(-1),
            Some(n) => s.serialize_u64(n),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Limit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "-1 (off) or an integer in 0..{}", i64::MAX)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Limit, E> {
                match n {
                    -1 => Ok(Limit::OFF),
                    n if n >= 0 => Ok(Limit::at(n as u64)),
                    n => Err(E::invalid_value(Unexpected::Signed(n), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Limit, E> {
                Ok(Limit::at(n))
            }
        }
        d.deserialize_i64(V)
    }
}

#[cfg(feature = "reference")]
impl JsonSchema for Limit {
    fn schema_name() -> Cow<'static, str> {
        "Limit".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": -1})
    }
}

/// Permission bits, written as an octal string (`"0666"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(u32);

impl FileMode {
    /// Bits `mode`, at most `0o777`.
    pub const fn new(mode: u32) -> FileMode {
        assert!(mode <= 0o777);
        FileMode(mode)
    }

    /// The bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl PartialEq<u32> for FileMode {
    fn eq(&self, other: &u32) -> bool {
        self.0 == *other
    }
}

const MODE_EXPECTED: &str = "an octal file mode in 0000..0777, e.g. \"0666\"";

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(MODE_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<FileMode, E> {
                u32::from_str_radix(s.trim().trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|n| *n <= 0o777)
                    .map(FileMode)
                    .ok_or_else(|| E::invalid_value(Unexpected::Str(s), &self))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<FileMode, E> {
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= 0o777)
                    .map(FileMode)
                    .ok_or_else(|| E::invalid_value(Unexpected::Signed(n), &self))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(feature = "reference")]
impl JsonSchema for FileMode {
    fn schema_name() -> Cow<'static, str> {
        "FileMode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^0?[0-7]{1,3}$"})
    }
}

/// A string that must pass `check`, which names what is expected.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $expected:expr, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// `s`, checked (for defaults written in code).
            pub fn new(s: &str) -> Self {
                assert!(($check)(s), "default fails its own rule");
                $name(s.to_owned())
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expected)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$name, E> {
                        if ($check)(s) {
                            Ok($name(s.to_owned()))
                        } else {
                            Err(E::invalid_value(Unexpected::Str(s), &self))
                        }
                    }
                }
                d.deserialize_str(V)
            }
        }

        #[cfg(feature = "reference")]
        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({"type": "string"})
            }
        }
    };
}

checked_string!(
    /// The collector's URL: `http://`, `https://`, or `file://` for a local
    /// JSON-lines file.
    CollectorUrl,
    "an http://, https:// or file:// URL",
    |s: &str| ["http://", "https://", "file://"]
        .iter()
        .any(|p| s.starts_with(p))
);

/// Whether a URL's host is this machine (`localhost`, `127.0.0.0/8`,
/// `[::1]`).
fn is_loopback_url(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // `http://127.0.0.1@evil.example`: what precedes `@` is a user name.
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

checked_string!(
    /// A debuginfod server: `https://`, or `http://` to this machine only
    /// (debug files decide what a crash report says).
    DebuginfodUrl,
    "an https:// URL, or http:// to localhost, 127.0.0.0/8 or [::1]",
    |s: &str| match (s.strip_prefix("https://"), s.strip_prefix("http://")) {
        (Some(rest), _) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            !authority.is_empty() && !authority.contains('@')
        }
        (_, Some(rest)) => is_loopback_url(rest),
        _ => false,
    }
);

checked_string!(
    /// Where the self-metrics are served: nowhere (empty), a unix socket
    /// (an absolute path), or a loopback address and port; never another
    /// machine's reach (the metrics name probes and what they send).
    MetricsListen,
    "empty, an absolute path (a unix socket), or a loopback address and port (127.0.0.1:9464, [::1]:9464)",
    |s: &str| s.is_empty()
        || s.starts_with('/')
        || s.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
);

checked_string!(
    /// An HTTP header line, `Name: value`.
    HeaderLine,
    "a header line `Name: value`",
    |s: &str| matches!(s.split_once(':'), Some((name, _)) if !name.trim().is_empty() && !name.contains(' '))
);

checked_string!(
    /// A user name.
    UserName,
    "a user name",
    |s: &str| !s.is_empty() && !s.contains([':', '/', '\n'])
);

checked_string!(
    /// A SHA-256 digest: 64 hexadecimal digits (what `sha256sum` prints).
    Sha256Hex,
    "64 hexadecimal digits (sha256sum's output)",
    |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
);

/// `proxy`: an optional string, empty meaning none.
pub mod optional_string {
    use serde::{Deserialize, Deserializer, Serializer};

    /// `None` as `""`.
    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_deref().unwrap_or(""))
    }

    /// `""` as `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let s = String::deserialize(d)?;
        Ok((!s.is_empty()).then_some(s))
    }
}

/// `cainfo`: a path, or the empty string for the system roots (as in the
/// legacy file).
pub mod optional_path {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serializer};

    /// `None` as `""`.
    pub fn serialize<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            &p.as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
        )
    }

    /// `""` as `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        let s = String::deserialize(d)?;
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    }
}
