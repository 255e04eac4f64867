//! A generic YAML tree that keeps mapping order, for editing configuration files
//! we do not own (prometheus.yml) without losing or reordering the user's keys.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One YAML node. Mappings are ordered lists of pairs (insertion order is kept).
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(Yaml, Yaml)>),
}

impl Yaml {
    /// Looks up a string key in a mapping.
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(m) => m
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Mutable lookup of a string key in a mapping.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Yaml> {
        match self {
            Yaml::Map(m) => m
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` in a mapping, keeping its position when it exists, else appending.
    /// Does nothing on non-mappings.
    pub fn set(&mut self, key: &str, value: Yaml) {
        if let Yaml::Map(m) = self {
            if let Some((_, v)) = m.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
                *v = value;
            } else {
                m.push((Yaml::Str(key.to_string()), value));
            }
        }
    }

    /// Removes `key` from a mapping.
    pub fn remove(&mut self, key: &str) -> Option<Yaml> {
        if let Yaml::Map(m) = self {
            let i = m.iter().position(|(k, _)| k.as_str() == Some(key))?;
            return Some(m.remove(i).1);
        }
        None
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn str(s: impl Into<String>) -> Yaml {
        Yaml::Str(s.into())
    }
}

impl Serialize for Yaml {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Yaml::Null => s.serialize_unit(),
            Yaml::Bool(b) => s.serialize_bool(*b),
            Yaml::Int(i) => s.serialize_i64(*i),
            Yaml::UInt(u) => s.serialize_u64(*u),
            Yaml::Float(f) => s.serialize_f64(*f),
            Yaml::Str(v) => s.serialize_str(v),
            Yaml::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Yaml::Map(pairs) => {
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

struct YamlVisitor;

impl<'de> Visitor<'de> for YamlVisitor {
    type Value = Yaml;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Yaml, E> {
        Ok(Yaml::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Yaml, E> {
        Ok(Yaml::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Yaml, E> {
        Ok(Yaml::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Yaml, E> {
        Ok(Yaml::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Yaml, E> {
        Ok(Yaml::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        Yaml::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Yaml, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = a.next_element()? {
            v.push(x);
        }
        Ok(Yaml::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Yaml, A::Error> {
        let mut v = Vec::new();
        while let Some((k, x)) = a.next_entry()? {
            v.push((k, x));
        }
        Ok(Yaml::Map(v))
    }
}

impl<'de> Deserialize<'de> for Yaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Yaml, D::Error> {
        d.deserialize_any(YamlVisitor)
    }
}

/// Parses one YAML document into a tree (an empty document is `Null`).
pub fn parse(text: &str) -> Result<Yaml, serde_saphyr::Error> {
    if text.trim().is_empty() {
        return Ok(Yaml::Null);
    }
    serde_saphyr::from_str(text)
}

/// Renders a tree as YAML text.
pub fn render(doc: &Yaml) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_order_and_types() {
        let text = "global:\n  scrape_interval: 15s\n  external_labels:\n    z: \"1\"\n    a: 'true'\nscrape_configs:\n- job_name: x\n  honor_labels: true\n  sample_limit: 10\n  static_configs:\n  - targets: ['a:1']\n  relabel_configs:\n  - regex: (.*):\\d+\n    replacement: $1\n";
        let doc = parse(text).unwrap();
        let keys: Vec<_> = match &doc {
            Yaml::Map(m) => m
                .iter()
                .map(|(k, _)| k.as_str().unwrap().to_string())
                .collect(),
            _ => panic!("not a map"),
        };
        assert_eq!(keys, ["global", "scrape_configs"]);
        let labels = doc.get("global").unwrap().get("external_labels").unwrap();
        assert_eq!(labels.get("z"), Some(&Yaml::str("1")));
        assert_eq!(labels.get("a"), Some(&Yaml::str("true")));
        let out = render(&doc).unwrap();
        let again = parse(&out).unwrap();
        assert_eq!(doc, again, "rendered:\n{out}");
        let job = match doc.get("scrape_configs").unwrap() {
            Yaml::Seq(s) => s[0].clone(),
            _ => panic!(),
        };
        assert_eq!(job.get("honor_labels"), Some(&Yaml::Bool(true)));
        assert!(matches!(
            job.get("sample_limit"),
            Some(Yaml::UInt(10)) | Some(Yaml::Int(10))
        ));
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse("  \n").unwrap(), Yaml::Null);
    }
}
