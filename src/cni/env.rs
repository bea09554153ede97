//! The shim's environment as the server holds it: every variable, in name
//! order, in one buffer.
//!
//! A shim sends its whole process environment, often dozens of variables,
//! with every request, and the server needs a handful of them. A map of
//! owned strings costs two allocations a variable; this costs two in all
//! (the text and the index), and looking a name up is a binary search.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Environment variables, names unique, iterated in name order.
///
/// `Debug` shows the names only: values may be secrets.
#[derive(Clone, Default)]
pub struct Env {
    /// Every name and value, back to back.
    text: String,
    /// Where each variable's name and value are in `text`, sorted by name.
    vars: Vec<Var>,
}

/// One variable: where its name and value are, and the name's first bytes
/// as an integer, which settles most comparisons without touching `text`.
#[derive(Debug, Clone)]
struct Var {
    prefix: u64,
    name: Range<u32>,
    value: Range<u32>,
}

impl Env {
    /// An empty environment.
    pub fn new() -> Env {
        Env::default()
    }

    /// The value of the variable `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        let prefix = sort_prefix(name);
        let index = self
            .vars
            .binary_search_by(|var| {
                var.prefix
                    .cmp(&prefix)
                    .then_with(|| self.slice(&var.name).cmp(name))
            })
            .ok()?;
        Some(self.slice(&self.vars[index].value))
    }

    /// Whether the variable `name` is set.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The variables, as `(name, value)`, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.vars
            .iter()
            .map(|var| (self.slice(&var.name), self.slice(&var.value)))
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.vars.iter().map(|var| self.slice(&var.name))
    }

    /// How many variables are set.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether no variable is set.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The variables as a map of owned strings.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    fn slice(&self, range: &Range<u32>) -> &str {
        &self.text[range.start as usize..range.end as usize]
    }
}

/// Two environments are equal when they hold the same variables, however
/// their text is laid out (that follows the order the names arrived in).
impl PartialEq for Env {
    fn eq(&self, other: &Env) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Env {}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl From<BTreeMap<String, String>> for Env {
    fn from(map: BTreeMap<String, String>) -> Env {
        let mut builder =
            EnvBuilder::with_capacity(map.iter().map(|(n, v)| n.len() + v.len()).sum());
        for (name, value) in &map {
            builder.push(name, value);
        }
        // A map's names are unique and sorted already.
        Env {
            text: builder.text,
            vars: builder.vars,
        }
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Env {
    /// Collects variables; a name given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(pairs: I) -> Env {
        pairs
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect::<BTreeMap<_, _>>()
            .into()
    }
}

impl PartialEq<BTreeMap<String, String>> for Env {
    fn eq(&self, map: &BTreeMap<String, String>) -> bool {
        self.len() == map.len()
            && self
                .iter()
                .zip(map)
                .all(|((n, v), (mn, mv))| n == mn && v == mv)
    }
}

impl Serialize for Env {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (name, value) in self.iter() {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Builds an [`Env`] while the JSON object is read, copying each string
/// straight from the parser into the one buffer.
pub(crate) struct EnvBuilder {
    text: String,
    vars: Vec<Var>,
}

impl EnvBuilder {
    /// A builder whose buffer holds `capacity` bytes without growing: the
    /// body's length bounds what its strings can unescape to.
    pub(crate) fn with_capacity(capacity: usize) -> EnvBuilder {
        EnvBuilder {
            text: String::with_capacity(capacity),
            vars: Vec::with_capacity(64),
        }
    }

    fn append(&mut self, s: &str) -> Range<u32> {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        start..self.text.len() as u32
    }

    fn push(&mut self, name: &str, value: &str) {
        let prefix = sort_prefix(name);
        let name = self.append(name);
        let value = self.append(value);
        self.vars.push(Var {
            prefix,
            name,
            value,
        });
    }

    /// Sorts by name and refuses a name given twice: two readers must never
    /// disagree on which value counts.
    fn finish<E: de::Error>(mut self) -> Result<Env, E> {
        let text = &self.text;
        let name = |r: &Range<u32>| &text[r.start as usize..r.end as usize];
        // Most names differ in their first eight bytes, so the prefixes
        // settle most comparisons. The order is still plain byte order.
        self.vars.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| name(&a.name).cmp(name(&b.name)))
        });
        let same = |a: &Var, b: &Var| a.prefix == b.prefix && name(&a.name) == name(&b.name);
        if let Some(pair) = self.vars.windows(2).find(|w| same(&w[0], &w[1])) {
            return Err(E::custom(format_args!(
                "duplicate env variable {:?}",
                name(&pair[0].name)
            )));
        }
        Ok(Env {
            text: self.text,
            vars: self.vars,
        })
    }
}

/// The first eight bytes of `name`, zero-padded, as a big-endian integer:
/// when two differ, they order as the names do.
fn sort_prefix(name: &str) -> u64 {
    let bytes = name.as_bytes();
    if let Some(first) = bytes.first_chunk::<8>() {
        return u64::from_be_bytes(*first);
    }
    bytes
        .iter()
        .enumerate()
        .fold(0, |prefix, (i, &b)| prefix | u64::from(b) << (56 - 8 * i))
}

/// Reads `env`: an object of strings, or null for none.
pub(crate) struct EnvSeed {
    pub capacity: usize,
}

impl<'de> DeserializeSeed<'de> for EnvSeed {
    type Value = Option<Env>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(EnvVisitor {
            capacity: self.capacity,
        })
    }
}

struct EnvVisitor {
    capacity: usize,
}

impl<'de> Visitor<'de> for EnvVisitor {
    type Value = Option<Env>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of strings")
    }

    fn visit_unit<E>(self) -> Result<Option<Env>, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Env>, A::Error> {
        let mut builder = EnvBuilder::with_capacity(self.capacity);
        while let Some(name) = map.next_key_seed(AppendStr(&mut builder))? {
            let value = map.next_value_seed(AppendStr(&mut builder))?;
            let prefix = sort_prefix(&builder.text[name.start as usize..name.end as usize]);
            builder.vars.push(Var {
                prefix,
                name,
                value,
            });
        }
        builder.finish().map(Some)
    }
}

/// Appends one JSON string to the builder's buffer, where it came from.
struct AppendStr<'b>(&'b mut EnvBuilder);

impl<'de> DeserializeSeed<'de> for AppendStr<'_> {
    type Value = Range<u32>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for AppendStr<'_> {
    type Value = Range<u32>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Range<u32>, E> {
        if self.0.text.len() + s.len() > u32::MAX as usize {
            return Err(E::custom("env too large"));
        }
        Ok(self.0.append(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_and_iterates_in_name_order() {
        let env: Env = [("B", "2"), ("A", "1"), ("C", "")].into_iter().collect();
        assert_eq!(env.get("A"), Some("1"));
        assert_eq!(env.get("C"), Some(""));
        assert_eq!(env.get("D"), None);
        assert_eq!(
            env.iter().collect::<Vec<_>>(),
            [("A", "1"), ("B", "2"), ("C", "")]
        );
        assert_eq!(env.len(), 3);
    }

    #[test]
    fn parsed_names_sort_in_byte_order_whatever_the_prefixes() {
        let names = [
            "CNI_CONTAINERID",
            "CNI_COMMAND",
            "A",
            "A\u{0}",
            "A\u{1}",
            "",
            "CNI_CONTAINERIE",
            "\u{e9}t\u{e9}",
        ];
        let json: serde_json::Map<String, serde_json::Value> =
            names.iter().map(|n| (n.to_string(), "v".into())).collect();
        let body = serde_json::json!({ "env": json }).to_string();
        let env = crate::cni::CniRequest::from_json(body.as_bytes())
            .unwrap()
            .env;

        let mut want = names.to_vec();
        want.sort();
        assert_eq!(env.names().collect::<Vec<_>>(), want);
        assert!(names.iter().all(|n| env.get(n) == Some("v")), "{env:?}");
    }

    #[test]
    fn debug_shows_names_not_values() {
        let env: Env = [("TOKEN", "s3cret")].into_iter().collect();
        let shown = format!("{env:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn fuzz_equal_whatever_order_the_names_came_in() {
        let body = br#"{"env": {"D": "abc123", "CS": "t"}, "config": null}"#;
        let parsed = crate::cni::CniRequest::from_json(body).unwrap();
        let env: Env = [("CS", "t"), ("D", "abc123")].into_iter().collect();
        assert_eq!(parsed.env, env);
    }

    #[test]
    fn equals_the_map_it_came_from() {
        let map: BTreeMap<String, String> = [
            ("X".to_owned(), "1".to_owned()),
            ("Y".to_owned(), "2".to_owned()),
        ]
        .into();
        let env = Env::from(map.clone());
        assert_eq!(env, map);
        assert_eq!(env.to_map(), map);
    }
}
