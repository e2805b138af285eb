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

/// Whether a subscription covers the names the proxy's listeners or clusters refer to: until
/// it does, the proxy lacks part of its configuration, whatever it has ACKed. The last answer
/// is kept with the two sets it was for, so that a thousand streams checking the same sets
/// after each change compare pointers rather than names.
#[derive(Debug, Default)]
pub struct Coverage {
    last: Option<Checked>,
}

/// One answer of [`Coverage`] and the sets it was for (held weakly: a pointer that stays
/// allocated cannot be reused by another set).
#[derive(Debug)]
struct Checked {
    referenced: Weak<BTreeSet<String>>,
    names: Weak<BTreeSet<String>>,
    covered: bool,
}

impl Coverage {
    /// Whether a subscription to `names` (`None`: all of the type) covers `referenced`, for a
    /// proxy that `holds_all` the listeners or clusters. A proxy that subscribes to some of
    /// them by name is not checked: what they name is not worked out per proxy.
    pub fn complete(
        &mut self,
        referenced: &Arc<BTreeSet<String>>,
        names: Option<&Names>,
        holds_all: bool,
    ) -> bool {
        match names {
            Some(names) if holds_all => self.covers(referenced, names),
            _ => true,
        }
    }

    /// Whether `names` holds every name in `referenced`.
    fn covers(&mut self, referenced: &Arc<BTreeSet<String>>, names: &Names) -> bool {
        if let Some(last) = &self.last {
            if last.referenced.as_ptr() == Arc::as_ptr(referenced)
                && last.names.as_ptr() == Arc::as_ptr(names)
            {
                return last.covered;
            }
        }
        let covered = referenced.iter().all(|name| names.contains(name));
        self.last = Some(Checked {
            referenced: Arc::downgrade(referenced),
            names: Arc::downgrade(names),
            covered,
        });
        covered
    }
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
    fn coverage_needs_every_referenced_name_and_follows_either_set_changing() {
        let mut coverage = Coverage::default();
        let referenced = Arc::new(set(&["a", "b"]));
        let partial = Arc::new(set(&["a", "c"]));
        let all = Arc::new(set(&["a", "b", "c"]));
        assert!(!coverage.covers(&referenced, &partial));
        assert!(!coverage.covers(&referenced, &partial), "the kept answer");
        assert!(coverage.covers(&referenced, &all), "the names changed");
        let more = Arc::new(set(&["a", "b", "d"]));
        assert!(!coverage.covers(&more, &all), "what is referenced changed");
        assert!(coverage.covers(&Arc::new(BTreeSet::new()), &partial));

        assert!(!coverage.complete(&referenced, Some(&partial), true));
        assert!(coverage.complete(&referenced, None, true), "a wildcard");
        assert!(
            coverage.complete(&referenced, Some(&partial), false),
            "listeners or clusters held by name are not checked"
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
