//! [`Catalog`]: the methods a server (or a set of servers) serves, indexed by name once per
//! HELLO, with one policy for merging the catalogs of several servers.

use std::collections::HashMap;

use crate::wire::{MethodInfo, MethodKind};

/// A method catalog, indexed by name. Built once from a HELLO (or a registry record), then
/// looked up in constant time by every call that needs a method's kind or idempotency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Sorted by name, one entry per name.
    methods: Vec<MethodInfo>,
    index: HashMap<String, usize>,
}

impl Catalog {
    /// A catalog of `methods`. When a name appears twice the first entry counts.
    pub fn new(methods: impl IntoIterator<Item = MethodInfo>) -> Catalog {
        let mut methods: Vec<MethodInfo> = methods.into_iter().collect();
        // A stable sort keeps the first of equal names first, so dedup keeps it.
        methods.sort_by(|a, b| a.name.cmp(&b.name));
        methods.dedup_by(|later, first| later.name == first.name);
        let index = methods
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        Catalog { methods, index }
    }

    /// The entry for `method`, if listed.
    pub fn get(&self, method: &str) -> Option<&MethodInfo> {
        self.index.get(method).map(|&i| &self.methods[i])
    }

    /// Whether `method` is listed.
    pub fn serves(&self, method: &str) -> bool {
        self.index.contains_key(method)
    }

    /// Whether the catalog marks `method` idempotent (`false` when it is not listed).
    pub fn is_idempotent(&self, method: &str) -> bool {
        self.get(method).is_some_and(|m| m.idempotent)
    }

    /// Every entry, sorted by name.
    pub fn methods(&self) -> &[MethodInfo] {
        &self.methods
    }

    /// Number of methods.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// Whether no method is listed.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// The catalog of a set of servers, by the one merge policy every part of Meridian
    /// uses (region client, proxy): a method is listed if any server lists it; it is
    /// idempotent only if *every* server listing it says so (a replayed or retried call must
    /// be safe wherever it lands); and its kind is the servers' common kind, or
    /// [`MethodKind::Bidi`] when they disagree (a stream each way carries every call kind).
    /// The result does not depend on the order of `catalogs`.
    pub fn merge<'a>(catalogs: impl IntoIterator<Item = &'a Catalog>) -> Catalog {
        let mut merged: HashMap<&str, MethodInfo> = HashMap::new();
        for catalog in catalogs {
            for m in &catalog.methods {
                merged
                    .entry(m.name.as_str())
                    .and_modify(|e| merge_entry(e, m))
                    .or_insert_with(|| m.clone());
            }
        }
        Catalog::new(merged.into_values())
    }

    /// What [`merge`](Self::merge) would say of `method` alone, without building the
    /// merged catalog: for lookups on every call.
    pub fn merge_method<'a>(
        catalogs: impl IntoIterator<Item = &'a Catalog>,
        method: &str,
    ) -> Option<MethodInfo> {
        let mut merged: Option<MethodInfo> = None;
        for m in catalogs.into_iter().filter_map(|c| c.get(method)) {
            match &mut merged {
                Some(e) => merge_entry(e, m),
                None => merged = Some(m.clone()),
            }
        }
        merged
    }
}

/// The merge policy for one method listed by two servers: idempotent only if both say so;
/// a kind they disagree on becomes `Bidi`.
fn merge_entry(into: &mut MethodInfo, other: &MethodInfo) {
    into.idempotent &= other.idempotent;
    if into.kind != other.kind {
        into.kind = MethodKind::Bidi;
    }
}

impl From<Vec<MethodInfo>> for Catalog {
    fn from(methods: Vec<MethodInfo>) -> Catalog {
        Catalog::new(methods)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, kind: MethodKind, idempotent: bool) -> MethodInfo {
        MethodInfo {
            name: name.into(),
            kind,
            idempotent,
        }
    }

    #[test]
    fn looks_up_by_name_and_keeps_the_first_of_duplicates() {
        let c = Catalog::new([
            m("b", MethodKind::Unary, true),
            m("a", MethodKind::ServerStreaming, false),
            m("b", MethodKind::Bidi, false),
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.methods()[0].name, "a");
        assert_eq!(c.get("b"), Some(&m("b", MethodKind::Unary, true)));
        assert!(c.is_idempotent("b"));
        assert!(!c.is_idempotent("a"));
        assert!(!c.serves("c"));
        assert!(!c.is_idempotent("c"));
    }

    #[test]
    fn merged_idempotency_needs_every_server_to_agree_in_any_order() {
        let yes = Catalog::new([
            m("pay", MethodKind::Unary, true),
            m("get", MethodKind::Unary, true),
        ]);
        let no = Catalog::new([m("pay", MethodKind::Unary, false)]);
        let stream = Catalog::new([m("get", MethodKind::ServerStreaming, true)]);
        for order in [
            [&yes, &no, &stream],
            [&no, &stream, &yes],
            [&stream, &yes, &no],
        ] {
            let merged = Catalog::merge(order);
            assert!(!merged.is_idempotent("pay"), "one server says no");
            assert!(
                merged.is_idempotent("get"),
                "every server lists it idempotent"
            );
            assert_eq!(merged.get("get").map(|e| e.kind), Some(MethodKind::Bidi));
            assert_eq!(merged.get("pay").map(|e| e.kind), Some(MethodKind::Unary));
            for name in ["pay", "get", "absent"] {
                assert_eq!(
                    Catalog::merge_method(order, name).as_ref(),
                    merged.get(name)
                );
            }
        }
        assert!(Catalog::merge([]).is_empty());
    }
}
