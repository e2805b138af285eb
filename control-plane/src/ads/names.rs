//! Subscriptions shared between streams. Most sidecars subscribe to the same route tables and
//! endpoint sets (all of the mesh's, by default), so each distinct set of names is held once,
//! however many streams ask for it, instead of once per stream.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

/// A subscription: the names of one type a stream asked for.
pub type Names = Arc<BTreeSet<String>>;

/// The sets in use, by a hash of their content.
#[derive(Debug, Default)]
pub struct NameSets {
    sets: Mutex<HashMap<u64, Vec<Weak<BTreeSet<String>>>>>,
}

impl NameSets {
    /// The shared set equal to `names`.
    pub fn intern(&self, names: BTreeSet<String>) -> Names {
        let mut h = DefaultHasher::new();
        names.hash(&mut h);
        let Ok(mut sets) = self.sets.lock() else {
            return Arc::new(names);
        };
        let bucket = sets.entry(h.finish()).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        if let Some(found) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| **s == names)
        {
            return found;
        }
        let set = Arc::new(names);
        bucket.push(Arc::downgrade(&set));
        set
    }
}

/// Whether `asked` (a request's names) is exactly `held`. Proxies send their names sorted, which
/// this checks without building a set; any other order counts as different (and is then
/// compared as a set by the caller).
pub fn same_names(held: &BTreeSet<String>, asked: &[String]) -> bool {
    asked.len() == held.len() && held.iter().zip(asked).all(|(a, b)| a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn equal_sets_are_held_once() {
        let sets = NameSets::default();
        let a = sets.intern(set(&["a", "b"]));
        let b = sets.intern(set(&["b", "a"]));
        let c = sets.intern(set(&["a"]));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        let again = sets.intern(set(&["a", "b"]));
        assert_eq!(
            Arc::strong_count(&again),
            1,
            "a dropped set is not kept alive"
        );
    }

    #[test]
    fn same_names_needs_the_same_names_in_order() {
        let held = set(&["a", "b"]);
        assert!(same_names(&held, &["a".into(), "b".into()]));
        assert!(!same_names(&held, &["a".into(), "a".into()]));
        assert!(!same_names(&held, &["a".into()]));
    }
}
